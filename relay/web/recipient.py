"""The recipient's public pages (docs/SPEC.md §6): /u/TOKEN says who writes, what stops and at which level,
its button POSTs the one-click unsubscribe; /u/TOKEN/preferences lets the recipient stop each topic
held at the level of the signup, or all. A GET never changes anything. Jinja2 templates, autoescaped."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import datetime
from typing import Any, Awaitable, Protocol
from urllib.parse import quote, urlsplit

from aiohttp import web
from markupsafe import Markup, escape

from policies.facts import TRANSACTIONAL
from relay.config import Config
from relay.http.common import form_body
from relay.services import Services
from relay.store.records import AuditEntry
from relay.unsubscribe.subscriptions import EVERY_TOPIC, Describer, Entry, Reach, Sender, mask_address
from relay.unsubscribe.tokens import TokenClaims, TokenCodec
from relay.web.contrast import accessible_accent
from relay.web.recipient_texts import LANGUAGE_NAMES, TEXTS, negotiate
from relay.templating import environment

PREFERENCES_METHOD = "preferences"
AUDIT_ACTION = "unsubscribe.preferences"
AUDIT_ACTOR = "recipient"
STOP_ALL = "all"


class Withdraw(Protocol):
    """relay.unsubscribe.feature.unsubscribe: suppress and revoke at the claims' scope and topic."""

    def __call__(self, services: Services, claims: TokenClaims, *, method: str) -> Awaitable[int]: ...


def _fill(text: str, **values: Any) -> Markup:
    """A catalogue sentence with its placeholders filled: the sentence and plain values escaped,
    markup built by the templates (already Markup) kept."""
    return Markup(escape(text)).format(**values)


_ENV = environment("web/templates/recipient")
_ENV.filters["fill"] = _fill


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclasses.dataclass(frozen=True)
class _Visit:
    """One request's verified token, language and the words for its sender."""

    claims: TokenClaims
    lang: str
    sender: Sender
    reach: Reach
    titles: tuple[str, ...]  # the topics in words that the mail's consent covers (a '*' covers several)


class RecipientPages:
    def __init__(self, services: Services, codec: TokenCodec, withdraw: Withdraw) -> None:
        self.services = services
        self.codec = codec
        self.withdraw = withdraw
        self.describe = Describer(services.config)

    @property
    def config(self) -> Config:
        return self.services.config

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/u/{token}", self.show)
        app.router.add_post("/u/{token}", self.post)
        app.router.add_get("/u/{token}/preferences", self.preferences)
        app.router.add_post("/u/{token}/preferences", self.change_preferences)

    # --- the unsubscribe page and the one-click POST (RFC 8058) ------------------------------

    async def show(self, request: web.Request) -> web.Response:
        visit = await self._visit(request)
        if visit is None:
            return self._invalid(request)
        return self._render(
            visit, "unsubscribe.html", TEXTS[visit.lang]["unsubscribe_title"],
            action=self._here(visit), preferences_url=self._preferences_url(request, visit),
        )

    async def post(self, request: web.Request) -> web.Response:
        claims = await self._claims(request)
        if claims is None:
            return web.Response(status=404, text="unknown unsubscribe token\n")
        form = await form_body(request)
        if form.get("List-Unsubscribe") != "One-Click":
            return web.Response(status=400, text="expected List-Unsubscribe=One-Click\n")
        method = "page" if form.get("via") == "page" else "one_click"
        await self.withdraw(self.services, claims, method=method)
        if method != "page":
            return web.Response(text="unsubscribed\n")  # RFC 8058: a mailbox provider's POST wants no page
        visit = await self._visit(request, claims)
        assert visit is not None
        # The confirmation loads nothing from anywhere else: no logo, no third party after the POST.
        return self._render(
            visit, "done.html", TEXTS[visit.lang]["done_title"], logo=None,
            when=self.services.clock.now(), preferences_url=self._preferences_url(request, visit),
        )

    # --- preferences at the level of the signup ----------------------------------------------

    async def preferences(self, request: web.Request) -> web.Response:
        visit = await self._visit(request)
        if visit is None:
            return self._invalid(request)
        return await self._preferences_page(request, visit)

    async def change_preferences(self, request: web.Request) -> web.Response:
        visit = await self._visit(request)
        if visit is None:
            return self._invalid(request)
        choice = (await form_body(request)).get("stop")
        entries = await self._entries(visit)
        active = [e for e in entries if not e.stopped]
        if choice == STOP_ALL:
            # Everything at once, each scope at its own level: one '*' withdrawal per scope still sending
            # (the mail's own topic is always a line, so its scope is among them while it sends).
            scopes = dict.fromkeys(e.reach.scope.id for e in active)
            targets = [self.describe.reach(scope, EVERY_TOPIC, visit.sender.account) for scope in scopes]
        else:
            targets = [e.reach for e in active if e.reach.key == choice]
            if not targets and not any(e.reach.key == choice for e in entries):
                return await self._preferences_page(request, visit, error=True, status=400)
        now = self.services.clock.now()
        for reach in targets:
            await self._stop(visit, reach, now)
        return await self._preferences_page(request, visit, changed=targets, when=now)

    async def _stop(self, visit: _Visit, reach: Reach, now: datetime) -> None:
        claims = dataclasses.replace(visit.claims, scope=reach.scope.id, topic=reach.topic)
        revoked = await self.withdraw(self.services, claims, method=PREFERENCES_METHOD)
        await self.services.store.audit.add(
            AuditEntry(
                AUDIT_ACTOR, AUDIT_ACTION, reach.scope.id,
                detail={"email": claims.recipient, "scope": reach.scope.id, "topic": reach.topic, "consents_revoked": revoked},
                at=now,
            )
        )

    async def _entries(self, visit: _Visit) -> list[Entry]:
        claims = visit.claims
        scopes = self.describe.scopes_in_view(claims.scope, visit.sender)
        store = self.services.store.consent
        consents = (await store.find_consents(scopes, [claims.recipient])).get(claims.recipient, [])
        suppressions = (await store.find_suppressions(scopes, [claims.recipient])).get(claims.recipient, [])
        return self.describe.entries(claims.scope, claims.topic, visit.sender, consents, suppressions)

    async def _preferences_page(
        self, request: web.Request, visit: _Visit, *, changed: list[Reach] | None = None,
        when: datetime | None = None, error: bool = False, status: int = 200,
    ) -> web.Response:
        extra = {} if request.method == "GET" else {"logo": None}  # after a POST, nothing from elsewhere
        return self._render(
            visit, "preferences.html", TEXTS[visit.lang]["preferences_title"], status=status, **extra,
            entries=await self._entries(visit), changed=changed or [], when=when, error=error,
            action=self._here(visit), unsubscribe_url=f"../{quote(request.match_info['token'])}?lang={visit.lang}",
        )

    # --- shared ----------------------------------------------------------------------------

    async def _claims(self, request: web.Request) -> TokenClaims | None:
        """The one place the pages read a token (relay/unsubscribe/tokens.py decides its format)."""
        return self.codec.verify(request.match_info["token"])

    async def _visit(self, request: web.Request, claims: TokenClaims | None = None) -> _Visit | None:
        claims = claims or await self._claims(request)
        if claims is None:
            return None
        lang = negotiate(request.headers.get("Accept-Language", ""), request.query.get("lang"))
        sender = self.describe.sender(claims.scope, claims.topic)
        reach = self.describe.reach(claims.scope, claims.topic, sender.account)
        if reach.every_topic:
            topics = self.describe.marketing_topics(sender.account.id if sender.account else claims.scope)
            titles = tuple(self.describe.title(t, sender.account) for t in topics)
        else:
            titles = (reach.title,)
        return _Visit(claims, lang, sender, reach, titles)

    @staticmethod
    def _here(visit: _Visit) -> str:
        return f"?lang={visit.lang}"  # the page's own path: the choice of language survives the POST

    @staticmethod
    def _preferences_url(request: web.Request, visit: _Visit) -> str:
        return f"{quote(request.match_info['token'])}/preferences?lang={visit.lang}"

    def _service_note(self, visit: _Visit) -> bool:
        accounts = [visit.sender.account] if visit.sender.account else self.describe.accounts_of(visit.claims.scope)
        return any(s.kind == TRANSACTIONAL for a in accounts for s in a.streams)

    def _render(self, visit: _Visit, template: str, title: str, *, status: int = 200, **values: Any) -> web.Response:
        account = visit.sender.account
        values.setdefault("logo", account.logo_url if account else None)
        return _page(
            template, visit.lang, title, status=status, sender=visit.sender, reach=visit.reach, titles=visit.titles,
            masked=mask_address(visit.claims.recipient), service_note=self._service_note(visit),
            accent=accessible_accent(account.accent_color if account else None), **values,
        )

    def _invalid(self, request: web.Request) -> web.Response:
        lang = negotiate(request.headers.get("Accept-Language", ""), request.query.get("lang"))
        return _page(
            "invalid.html", lang, TEXTS[lang]["not_found_title"], status=404,
            sender=Sender("", None), logo=None, accent=accessible_accent(None),
        )


def _page(template: str, lang: str, title: str, *, status: int, logo: str | None, **values: Any) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    html = _ENV.get_template(template).render(
        lang=lang, t=TEXTS[lang], title=title, nonce=nonce, logo=logo,
        languages=list(LANGUAGE_NAMES.items()), **values,
    )
    # No script at all, styles only with this response's nonce, images only from the sender's logo host.
    images = _origin(logo) if logo else "'none'"
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src {images}; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return web.Response(
        text=html, status=status, content_type="text/html",
        headers={
            "Cache-Control": "no-store", "Content-Security-Policy": csp, "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )

