"""HTTP of the hosted double opt-in (docs/SPEC.md §18): POST /api/signups on the admin listener, and the
recipient's GET/POST /c/TOKEN on the public one (a GET shows a button; only the POST confirms)."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, NoReturn

from aiohttp import web

from relay.consent.imports import ConsentRefused
from relay.consent.signups import (
    LANGUAGES,
    AccountBlocked,
    RateLimited,
    SignupInvalid,
    SignupService,
    parse_signup,
)
from relay.errors import NotFound, StoreUnavailable
from relay.engine.feature import Feature
from relay.http.api_keys import KEY, scoped_account
from relay.http.common import admin_label, form_body, json_body, json_error, json_response
from relay.store.signups import Signup
from relay.templating import render

_PAGE = {
    "nl": {
        "title": "Aanmelding bevestigen",
        "ask": "Bevestig dat {email} e-mail wil ontvangen van {name}:",
        "frequency": "Hoe vaak: {frequency}",
        "button": "Ja, ik meld me aan",
        "note": "Pas na deze klik ontvang je e-mail. Je kunt je altijd weer afmelden via de link in elke e-mail.",
        "done_title": "Aanmelding bevestigd",
        "done": "Bedankt. {email} is aangemeld voor e-mail van {name}.",
        "bad_title": "Link niet geldig",
        "bad": "Deze bevestigingslink is niet (meer) geldig. Meld je opnieuw aan via het formulier.",
        "busy_title": "Even geduld",
        "busy": "Dit lukt nu niet. Probeer het over een paar minuten opnieuw.",
    },
    "en": {
        "title": "Confirm your subscription",
        "ask": "Please confirm that {email} wants to receive e-mail from {name}:",
        "frequency": "How often: {frequency}",
        "button": "Yes, subscribe me",
        "note": "Only after this click will you receive e-mail. You can unsubscribe at any time with the link in every e-mail.",
        "done_title": "Subscription confirmed",
        "done": "Thank you. {email} is subscribed to e-mail from {name}.",
        "bad_title": "Link not valid",
        "bad": "This confirmation link is not valid (any more). Please sign up again with the form.",
        "busy_title": "Please try again",
        "busy": "This is not possible right now. Please try again in a few minutes.",
    },
    "de": {
        "title": "Anmeldung bestätigen",
        "ask": "Bitte bestätigen Sie, dass {email} E-Mails von {name} erhalten möchte:",
        "frequency": "Wie oft: {frequency}",
        "button": "Ja, ich melde mich an",
        "note": "Erst nach diesem Klick erhalten Sie E-Mails. Sie können sich jederzeit über den Link in jeder E-Mail abmelden.",
        "done_title": "Anmeldung bestätigt",
        "done": "Vielen Dank. {email} ist für E-Mails von {name} angemeldet.",
        "bad_title": "Link ungültig",
        "bad": "Dieser Bestätigungslink ist nicht (mehr) gültig. Bitte melden Sie sich erneut über das Formular an.",
        "busy_title": "Bitte später erneut versuchen",
        "busy": "Das ist gerade nicht möglich. Bitte versuchen Sie es in ein paar Minuten erneut.",
    },
}
# The token is in the URL: no referrer leaves the page, nothing loads from elsewhere, nothing is cached.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def acting_for(request: web.Request, body: dict[str, Any]) -> tuple[str, str]:
    """(account id, actor) of a signup request: the one place its authorisation is decided. An admin
    token (checked by the admin app's middleware) names the account in the body; an account API key
    (docs/SPEC.md §17) acts for its own account, and a body naming another one is 404."""
    account = body.get("account")
    if account is not None and not isinstance(account, str):
        validation_error("account", "account must be a string")
    key = request.get(KEY)
    if key is not None:
        own = scoped_account(request, account or None)  # another account's name: 404, as an unknown one
        assert own is not None
        return own, key.actor
    if not account:
        validation_error("account", "account is required with an admin token")
    return account, admin_label(request)


def validation_error(field: str, detail: str) -> NoReturn:
    raise web.HTTPUnprocessableEntity(
        text=json.dumps({"error": "validation", "detail": detail, "field": field}), content_type="application/json"
    )


def _page(
    lang: str, title: str, status: int = 200, *, text: str = "", ask: str = "", statement: str = "",
    frequency: str = "", button: str = "", note: str = "",
) -> web.Response:
    """templates/confirm.html: one sentence (`text`), or the question (`ask`) with its button."""
    document = render(
        "confirm.html", lang=lang, title=title, text=text, ask=ask, statement=statement, frequency=frequency,
        button=button, note=note,
    )
    return web.Response(text=document, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS)


def _browser_language(request: web.Request) -> str:
    for part in request.headers.get("Accept-Language", "").split(","):
        lang = part.split(";")[0].strip().lower()[:2]
        if lang in LANGUAGES:
            return lang
    return "en"


class SignupsHttp:
    def __init__(self, service: SignupService) -> None:
        self.service = service
        self.config = service.config

    # --- admin API ------------------------------------------------------------------------------

    def add_admin_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/signups", self.post_signup)

    async def post_signup(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        account_id, actor = acting_for(request, body)
        account = self.config.account(account_id)
        if account is None:
            json_error(404, "not_found", f"unknown account {account_id!r}")
        try:
            req = parse_signup(body, account)
            outcome = await self.service.request(account.id, req, actor=actor)
        except SignupInvalid as exc:
            validation_error(exc.field, exc.detail)
        except ConsentRefused as exc:
            raise web.HTTPUnprocessableEntity(
                text=json.dumps({"error": "refused", "rule": exc.rule, "detail": exc.detail}),
                content_type="application/json",
            ) from None
        except NotFound as exc:
            json_error(404, "not_found", str(exc))
        except AccountBlocked as exc:
            json_error(409, f"account_{exc.state}", str(exc))
        except RateLimited:
            raise web.HTTPTooManyRequests(
                text=json.dumps({"error": "rate_limited", "detail": "too many signups from this client address"}),
                content_type="application/json",
                headers={"Retry-After": str(int(3600 / self.config.signups.client_rate_per_hour) + 1)},
            ) from None
        return json_response(outcome.as_dict(), status=202)

    # --- public pages ---------------------------------------------------------------------------

    def add_public_routes(self, app: web.Application) -> None:
        app.router.add_get("/c/{token}", self._answering(self.show))
        app.router.add_post("/c/{token}", self._answering(self.post))

    def _answering(self, handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A page, never a traceback: a store that cannot answer is 503, a consent the profile now refuses 422."""

        async def run(request: web.Request) -> web.Response:
            lang = _browser_language(request)
            t = _PAGE[lang]
            try:
                return await handler(request)
            except StoreUnavailable:
                return _page(lang, t["busy_title"], 503, text=t["busy"])
            except ConsentRefused:
                return _page(lang, t["bad_title"], 422, text=t["bad"])

        return run

    def _names(self, signup: Signup) -> dict[str, str]:
        account = self.config.account(signup.account)
        return {"email": signup.email, "name": (account.name or account.id) if account else signup.account,
                "frequency": signup.frequency}

    def _not_found(self, request: web.Request) -> web.Response:
        lang = _browser_language(request)
        t = _PAGE[lang]
        return _page(lang, t["bad_title"], 404, text=t["bad"])

    def _done(self, signup: Signup) -> web.Response:
        t = _PAGE[signup.language]
        return _page(signup.language, t["done_title"], text=t["done"].format(**self._names(signup)))

    async def show(self, request: web.Request) -> web.Response:
        signup = await self.service.pending(request.match_info["token"])
        if signup is None:
            return self._not_found(request)
        if signup.confirmed_at is not None:
            return self._done(signup)
        t = _PAGE[signup.language]
        names = self._names(signup)
        return _page(
            signup.language, t["title"], ask=t["ask"].format(**names), statement=signup.statement,
            frequency=t["frequency"].format(**names) if signup.frequency else "", button=t["button"], note=t["note"],
        )

    async def post(self, request: web.Request) -> web.Response:
        form = await form_body(request)
        token = request.match_info["token"]
        if form.get("confirm") != "yes":
            signup = await self.service.pending(token)
            return self._not_found(request) if signup is None else web.Response(status=400, text="expected confirm=yes\n")
        signup = await self.service.confirm(token, request.remote or "")
        if signup is None:
            return self._not_found(request)
        return self._done(signup)


class SignupsFeature(Feature):
    """The double opt-in's API route and public pages (relay.assembly tells its service of the
    outbox's deliveries)."""

    name = "signups"

    def __init__(self, service: SignupService) -> None:
        self.service = service
        self.http = SignupsHttp(service)

    def add_admin_routes(self, app: web.Application) -> None:
        self.http.add_admin_routes(app)

    def add_public_routes(self, app: web.Application) -> None:
        self.http.add_public_routes(app)
