"""One-click unsubscribe (docs/SPEC.md §6): the public /u/TOKEN pages (relay/web/recipient.py, handed in),
the unsubscribe+TOKEN@ mail address, and withdrawing consent at the level it was given. The copies'
list headers and URL are relay/unsubscribe/links.py's."""

from __future__ import annotations

from typing import Protocol, Sequence

from aiohttp import web

from policies.facts import Suppression
from relay import replies
from relay.engine.decisions import DecisionRecorder
from relay.engine.transaction import Transaction
from relay.engine.feature import Feature
from relay.log import get_logger, recipient_label
from relay.services import Services
from relay.unsubscribe.tokens import MAILTO_PREFIX, TokenClaims, TokenCodec

UNSUBSCRIBED = "suppression.unsubscribed"


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
    if added:  # a repeated click (or a scanner replaying the POST) is one unsubscribe, counted once
        services.metrics.unsubscribes.labels(method).inc()
    get_logger().info(
        "unsubscribed", scope=claims.scope, topic=claims.topic, recipient=recipient_label(claims.recipient),
        method=method, new=added, consents_revoked=revoked,
    )
    return revoked


class PublicPages(Protocol):
    """The recipient's /u/TOKEN pages (relay.web.recipient.RecipientPages, built by relay.assembly with
    `unsubscribe` below): web imports this package, never the other way."""

    def add_routes(self, app: web.Application) -> None: ...


class UnsubscribeFeature(Feature):
    """The unsubscribe machinery's public pages and its mailto address (the copies' list headers
    are relay.unsubscribe.links')."""

    name = "unsubscribe"

    def __init__(self, services: Services, codec: TokenCodec, recorder: DecisionRecorder, pages: PublicPages) -> None:
        self.services = services
        self.config = services.config
        self.codec = codec
        self.recorder = recorder
        self.public = pages

    def add_public_routes(self, app: web.Application) -> None:
        self.public.add_routes(app)

    def own_address(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        if domain != self.config.unsubscribe.mailto_domain.lower() or not local.startswith(MAILTO_PREFIX):
            return False
        return self.codec.verify_mailto(local[len(MAILTO_PREFIX):]) is not None

    async def handle_mail(self, txn: Transaction, addresses: Sequence[str], raw: bytes) -> str:
        done = 0
        for address in addresses:
            delivery_id = self.codec.verify_mailto(address.rpartition("@")[0][len(MAILTO_PREFIX):])
            if delivery_id is None:
                continue
            delivery = await self.services.store.decisions.delivery(delivery_id)
            if delivery is None:
                await self.recorder.flush()  # the copy may have left moments ago
                delivery = await self.services.store.decisions.delivery(delivery_id)
            if delivery is None:
                continue
            # The delivery row keeps the scope and topic of the consent the copy relied on: a '*'
            # consent is withdrawn as '*', as the copy's one-click URL does.
            claims = TokenClaims(delivery.scope or delivery.account, delivery.topic or "*", delivery.email, 0)
            await unsubscribe(self.services, claims, method="mailto")
            done += 1
        if not done:
            return replies.UNKNOWN_UNSUBSCRIBE_ADDRESS
        return replies.UNSUBSCRIBED
