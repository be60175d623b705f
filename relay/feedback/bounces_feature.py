"""Hooks bounces into a running Relay: bounce+ID@<mailto_domain> on the SMTP listener (any client,
docs/SPEC.md §15) and GET /api/bounces on the admin listener."""

from __future__ import annotations

from typing import Sequence

from aiohttp import web

from relay import replies
from relay.engine.copies import BOUNCE_PREFIX
from relay.engine.transaction import Transaction
from relay.errors import StoreUnavailable
from relay.engine.feature import Feature
from relay.feedback.bounces import BounceService, bounce_as_dict
from relay.http.api_keys import scoped_account
from relay.http.common import json_error, json_response, services_of
from relay.log import get_logger
from relay.services import Services
from relay.store.bounces import KINDS
from relay.unsubscribe.tokens import TokenCodec

BOUNCE_KIND = "bounce"
MAX_LIST = 10_000


class BouncesFeature(Feature):
    name = BOUNCE_KIND

    def __init__(self, services: Services, codec: TokenCodec) -> None:
        self.codec = codec
        self.domain = services.config.unsubscribe.mailto_domain.lower()
        self.service = BounceService(services)
        self.log = get_logger()

    def delivery_of(self, address: str) -> int | None:
        local, _, domain = address.rpartition("@")
        if domain != self.domain or not local.startswith(BOUNCE_PREFIX):
            return None
        return self.codec.verify_bounce(local[len(BOUNCE_PREFIX):])

    def own_address(self, address: str) -> bool:
        return self.delivery_of(address) is not None

    async def handle_mail(self, txn: Transaction, addresses: Sequence[str], raw: bytes) -> str:
        """A DSN: recorded whatever it says (an unreadable one for review); never a 5xx to its sender."""
        try:
            bounces = [await self.service.ingest(raw, delivery_id=self.delivery_of(a)) for a in addresses]
        except StoreUnavailable as exc:
            self.log.error("store_unavailable", stage="bounce", error=str(exc))
            return replies.STORE_UNAVAILABLE
        first = bounces[0]
        return replies.bounce_recorded(first.id, first.kind)

    def add_admin_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/bounces", list_bounces)


async def list_bounces(request: web.Request) -> web.Response:
    kind = request.query.get("kind") or None
    if kind is not None and kind not in KINDS:
        json_error(422, "invalid", f"kind: expected one of {', '.join(KINDS)}")
    try:
        limit = min(int(request.query.get("limit", "1000")), MAX_LIST)
    except ValueError:
        json_error(422, "invalid", "limit: expected an integer")
    items = await services_of(request).store.bounces.list(
        account=scoped_account(request, request.query.get("account") or None), kind=kind, limit=max(1, limit)
    )
    return json_response({"items": [bounce_as_dict(b) for b in items]})
