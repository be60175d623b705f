"""The event feed (docs/SPEC.md §17): `GET /api/events?account=ID&after=CURSOR&limit=N` → {"events", "next"}.

The cursor is the last event's per-account number: asking again with `next` gives what came after,
never an event twice and never one skipped (the store numbers events in commit order).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiohttp import web

from relay.config import AccountConfig
from relay.errors import NotFound, StoreUnavailable
from relay.engine.feature import Feature, Task
from relay.http.api_keys import key_account, scoped_account
from relay.http.common import json_error, json_response, services_of
from relay.log import get_logger
from relay.services import Services
from relay.store.events_store import MAX_PAGE

_PURGE_SECONDS = 3600.0


def parse_cursor(text: str | None) -> int:
    """'' or None is the start of the feed; anything but a non-negative integer is a UsageError-worthy 422."""
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError("after: expected the `next` cursor of an earlier page (a non-negative integer)")
    return int(text)


def parse_limit(text: str | None, default: int = 100) -> int:
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) <= MAX_PAGE:
        raise ValueError(f"limit: expected an integer from 1 to {MAX_PAGE}")
    return int(text)


def feed_account(services: Services, account_id: str | None) -> AccountConfig:
    account = services.config.account(account_id or "")
    if account is None:
        raise NotFound(f"unknown account {account_id!r}")
    return account


async def list_events(request: web.Request) -> web.Response:
    services = services_of(request)
    try:
        requested = request.query.get("account") or None
        if requested is None and key_account(request) is None:
            json_error(422, "invalid", "account: required (the feed is per account)")
        account = feed_account(services, scoped_account(request, requested))
        after = parse_cursor(request.query.get("after"))
        limit = parse_limit(request.query.get("limit"))
    except ValueError as exc:
        json_error(422, "invalid", str(exc))
    except NotFound as exc:
        json_error(404, "not_found", str(exc))
    try:
        events = await services.store.events.after(account.id, after, limit)
    except StoreUnavailable as exc:
        json_error(503, "store_unavailable", str(exc))
    body: dict[str, Any] = {"events": [e.as_dict() for e in events], "next": str(events[-1].seq if events else after)}
    return json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/events", list_events)


async def purge_loop(services: Services) -> None:
    """Drop events older than `[events] retention_days`, hourly (where background tasks run)."""
    log = get_logger()
    while True:
        cutoff = services.clock.now() - timedelta(days=services.config.events.retention_days)
        try:
            purged = await services.store.events.purge_older_than(cutoff)
            if purged:
                log.info("events_purged", count=purged)
        except StoreUnavailable as exc:
            log.warning("events_not_purged", error=str(exc))
        await asyncio.sleep(_PURGE_SECONDS)


class EventsFeature(Feature):
    name = "events"

    def __init__(self, services: Services) -> None:
        self.services = services

    def background_tasks(self) -> list[Task]:
        return [purge_loop(self.services)]
