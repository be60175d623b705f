"""One-click unsubscribe (docs/SPEC.md §6): per-recipient list headers and URL, the public /u/TOKEN
pages, the unsubscribe+TOKEN@ mail address, and withdrawing consent at the level it was given."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

from aiohttp import web

from policies.facts import MessageFacts, RecipientFacts, Suppression
from policies.rules.consent import covering_consent
from relay.config import Config
from relay.log import get_logger, recipient_label
from relay.services import Services
from relay.unsubscribe_tokens import MAILTO_PREFIX, TokenClaims, TokenCodec

UNSUBSCRIBED = "suppression.unsubscribed"


@dataclass(frozen=True)
class Subscription:
    """Where a recipient's consent for this copy lives: what an unsubscribe withdraws."""

    scope: str
    topic: str


def subscription_for(facts: MessageFacts, rcpt: RecipientFacts) -> Subscription:
    record = covering_consent(facts, rcpt)
    if record is not None:
        return Subscription(record.scope, record.topic)
    assert facts.stream is not None
    return Subscription(facts.account.id, facts.stream.topic)


def list_headers(config: Config, topic: str, account: str, url: str, mailto_token: str) -> list[tuple[str, str]]:
    """The list headers of one marketing copy; List-Id names the stream's topic (one per subscription)."""
    domain = config.unsubscribe.mailto_domain
    headers = [
        ("List-Unsubscribe", f"<{url}>, <mailto:{MAILTO_PREFIX}{mailto_token}@{domain}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("List-Id", f"<{_label(topic)}.{_label(account)}.{domain}>"),
    ]
    if config.unsubscribe.csa_complaints:
        headers.append(("X-CSA-Complaints", config.unsubscribe.csa_complaints))
    return headers


def _label(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in text.lower()).strip("-")
    return cleaned or "all"


async def unsubscribe(services: Services, claims: TokenClaims, *, method: str) -> int:
    """Suppress the recipient at the consent's scope and topic and revoke that consent. Permanent."""
    now = services.clock.now()
    store = services.store.consent
    added = await store.add_suppression(
        Suppression(claims.recipient, claims.scope, claims.topic, UNSUBSCRIBED, method, now),
        note=f"unsubscribed via {method}",
    )
    revoked = await store.revoke(
        claims.scope, claims.recipient, None if claims.topic == "*" else claims.topic, via=method, at=now
    )
    services.metrics.unsubscribes.labels(method).inc()
    get_logger().info(
        "unsubscribed", scope=claims.scope, topic=claims.topic, recipient=recipient_label(claims.recipient),
        method=method, new=added, consents_revoked=revoked,
    )
    return revoked


# --- public pages -----------------------------------------------------------------------------

_TEXTS = {
    "en": {
        "title": "Unsubscribe",
        "ask": "Do you want to stop receiving these e-mails at {email}?",
        "button": "Unsubscribe",
        "done_title": "You are unsubscribed",
        "done": "{email} will not receive these e-mails any more.",
        "bad": "This unsubscribe link is not valid. Please use the link from the most recent e-mail.",
    },
    "nl": {
        "title": "Afmelden",
        "ask": "Wilt u deze e-mails niet meer ontvangen op {email}?",
        "button": "Afmelden",
        "done_title": "U bent afgemeld",
        "done": "{email} ontvangt deze e-mails niet meer.",
        "bad": "Deze afmeldlink is niet geldig. Gebruik de link uit de meest recente e-mail.",
    },
}


def _language(request: web.Request) -> str:
    header = request.headers.get("Accept-Language", "")
    best, best_q = "en", -1.0
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        lang = tag.strip().lower()[:2]
        if lang in _TEXTS and q > best_q:
            best, best_q = lang, q
    return best


def _page(lang: str, title: str, body: str, status: int = 200) -> web.Response:
    document = f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{html.escape(title)}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#1a1a1a}}
button{{font:inherit;padding:.6rem 1.4rem;border:0;border-radius:.3rem;background:#1a56db;color:#fff;cursor:pointer}}
button:focus{{outline:3px solid #f59e0b;outline-offset:2px}}</style></head>
<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"""
    return web.Response(text=document, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})


class PublicUnsubscribe:
    def __init__(self, services: Services, codec: TokenCodec) -> None:
        self.services = services
        self.codec = codec

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/u/{token}", self.show)
        app.router.add_post("/u/{token}", self.post)

    async def show(self, request: web.Request) -> web.Response:
        lang = _language(request)
        t = _TEXTS[lang]
        claims = self.codec.verify(request.match_info["token"])
        if claims is None:
            return _page(lang, t["title"], f"<p>{html.escape(t['bad'])}</p>", status=404)
        email = html.escape(claims.recipient)
        form = (
            f'<p>{t["ask"].format(email=email)}</p>'
            f'<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<input type="hidden" name="via" value="page"><button type="submit">{html.escape(t["button"])}</button></form>'
        )
        return _page(lang, t["title"], form)

    async def post(self, request: web.Request) -> web.Response:
        lang = _language(request)
        t = _TEXTS[lang]
        claims = self.codec.verify(request.match_info["token"])
        if claims is None:
            return web.Response(status=404, text="unknown unsubscribe token\n")
        form = await request.post()
        if form.get("List-Unsubscribe") != "One-Click":
            return web.Response(status=400, text="expected List-Unsubscribe=One-Click\n")
        method = "page" if form.get("via") == "page" else "one_click"
        await unsubscribe(self.services, claims, method=method)
        if method == "page":
            return _page(lang, t["done_title"], f"<p>{html.escape(t['done'].format(email=claims.recipient))}</p>")
        return web.Response(text="unsubscribed\n")


class UnsubscribeFeature:
    """Hooks the unsubscribe machinery into a Relay: copies, public routes, the mailto address."""

    def __init__(self, relay: Any, codec: TokenCodec) -> None:
        # `relay` is a running Relay, or the stand-in a CLI release builds (services, config, pipeline, recorder).
        self.relay = relay
        self.services = relay.services
        self.config = relay.config
        self.codec = codec
        self.public = PublicUnsubscribe(self.services, codec)
        relay.pipeline.own_address_matchers.append(self.match_address)
        relay.pipeline.own_mail["unsubscribe"] = self.handle_mail

    def add_public_routes(self, app: web.Application) -> None:
        self.public.add_routes(app)

    def match_address(self, address: str) -> str | None:
        local, _, domain = address.rpartition("@")
        if domain != self.config.unsubscribe.mailto_domain.lower() or not local.startswith(MAILTO_PREFIX):
            return None
        return "unsubscribe" if self.codec.verify_mailto(local[len(MAILTO_PREFIX):]) is not None else None

    async def handle_mail(self, txn: object, addresses: Sequence[str], raw: bytes) -> str:
        done = 0
        for address in addresses:
            delivery_id = self.codec.verify_mailto(address.rpartition("@")[0][len(MAILTO_PREFIX):])
            if delivery_id is None:
                continue
            delivery = await self.services.store.decisions.delivery(delivery_id)
            if delivery is None:
                await self.relay.recorder.flush()  # the copy may have left moments ago
                delivery = await self.services.store.decisions.delivery(delivery_id)
            if delivery is None:
                continue
            # The delivery row keeps the scope and topic of the consent the copy relied on: a '*'
            # consent is withdrawn as '*', as the copy's one-click URL does.
            claims = TokenClaims(delivery.scope or delivery.account, delivery.topic or "*", delivery.email, 0)
            await unsubscribe(self.services, claims, method="mailto")
            done += 1
        if not done:
            return "550 5.1.1 Unknown unsubscribe address"
        return "250 2.0.0 Unsubscribed"
