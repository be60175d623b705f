"""Where the admin listener's routes are mounted, in the order they are added: the bearer-protected API
(consent, quarantine, complaints, events), the web UI, the OpenAPI document. relay/http is the listener
(auth, JSON errors, request bodies) and mounts nothing itself: relay/web and relay/feedback import it for
those helpers, so it cannot import them back. A feature's own routes come from Feature.add_admin_routes
and add_public_routes (relay.app)."""

from __future__ import annotations

from aiohttp import web

from relay.engine.pipeline import Pipeline
from relay.feedback import complaints_http
from relay.http import consent as http_consent
from relay.http import events as http_events
from relay.http import openapi
from relay.http import quarantine as http_quarantine
from relay.http.admin import AddRoutes, Readiness, admin_app
from relay.services import Services
from relay.web import ui

ADMIN_ROUTES: tuple[AddRoutes, ...] = (
    http_consent.add_routes, http_quarantine.add_routes, complaints_http.add_routes, http_events.add_routes,
    ui.add_routes, openapi.add_routes,
)


def build_admin_app(services: Services, readiness: Readiness, pipeline: Pipeline | None = None) -> web.Application:
    """The admin listener's app with every route above; `pipeline`: the relay's, which quarantine releases
    deliver through (none: they answer 503)."""
    return admin_app(services, readiness, ADMIN_ROUTES, pipeline)
