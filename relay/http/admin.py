"""The admin HTTP listener: /metrics, /healthz, /readyz, and the bearer-protected /api/… of features.
Which routes it serves is handed in (relay/routes.py mounts them): the packages whose pages and API it
serves import relay/http for its auth and JSON helpers, and relay/http imports none of them."""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from relay.engine.pipeline import Pipeline
from relay.errors import StoreUnavailable
from relay.http.admin_auth import CHECKER, GUARD, AuthGuard, TokenChecker
from relay.http.api_keys import ACCOUNT_KEYS, KEY, AccountKeys, check_route
from relay.http.common import ADMIN, PIPELINE, SERVICES, json_error, json_response
from relay.services import Services

AddRoutes = Callable[[web.Application], None]
# The API's description is public: it names no secret, and a client reads it before it has a token.
OPEN_PATHS = frozenset({"/api/openapi.json"})

Readiness = Callable[[], Awaitable[dict[str, Any]]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness", object)  # type: ignore[arg-type]


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@web.middleware
async def api_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    path = request.path
    needs_token = (path.startswith("/api/") and path not in OPEN_PATHS) or (
        path == "/metrics" and request.app[SERVICES].config.http.metrics_require_token
    )
    if needs_token:
        guard = request.app[GUARD]
        guard.refuse_if_locked(request)
        token = bearer(request)
        label = await request.app[CHECKER].label_for(token) if token else None
        key = await request.app[ACCOUNT_KEYS].key_for(token) if token and label is None else None
        if key is not None:
            check_route(request, key)
            request[KEY], label = key, key.actor
        if label is None:
            if token:
                await guard.failed(request, "bearer")
                guard.refuse_if_locked(request)  # this failure was the one too many
            json_error(401, "unauthorized", "a valid admin bearer token or account API key is required")
        request[ADMIN] = label
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        json_error(503, "store_unavailable", str(exc))


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or not request.path.startswith("/api/"):
            raise
        code = exc.reason.lower().replace(" ", "_")
        return json_response({"error": code, "detail": exc.text or exc.reason}, status=exc.status)


async def metrics_view(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    registry = services.metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # [smtp] workers > 1: every worker writes its values to this directory; add them up here.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    status = await request.app[READINESS]()
    ready = all(part.get("ok") for part in status.values())
    return json_response({"ready": ready, **status}, status=200 if ready else 503)


def admin_app(
    services: Services, readiness: Readiness, routes: Sequence[AddRoutes], pipeline: Pipeline | None = None
) -> web.Application:
    """`routes`: added in this order after /metrics, /healthz and /readyz. `pipeline`: the relay's, which
    quarantine releases deliver through (none: they answer 503)."""
    app = web.Application(middlewares=[json_errors, api_auth], client_max_size=64 * 1024 * 1024)
    app[SERVICES] = services
    if pipeline is not None:
        app[PIPELINE] = pipeline
    app[READINESS] = readiness
    app[CHECKER] = TokenChecker(services)
    app[GUARD] = AuthGuard(services)
    app[ACCOUNT_KEYS] = AccountKeys(services.config)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for add_routes in routes:
        add_routes(app)
    return app
