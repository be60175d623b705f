"""Signed webhooks (docs/SPEC.md §17): each account event POSTed as JSON to the account's endpoints with the
Standard Webhooks headers, at least once, with exponential backoff and jitter: a few POSTs to one endpoint at
once (`[events] webhook_concurrency`), started in the account's order, one recipient's events never overlapping.

A background task of every relay process; it shares nothing with the mail path but the store, so a
slow or dead endpoint never slows mail. Progress lives in the store (relay/store/webhooks_store.py):
it survives restarts, and a lease keeps two instances from sending to one endpoint at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from relay.config import AccountConfig, WebhookConfig
from relay.errors import StoreUnavailable
from relay.events.webhook_http import EndpointClient, HttpError
from relay.engine.feature import Feature, Task
from relay.log import get_logger
from relay.services import Services
from relay.store.records import Event
from relay.store.webhooks_store import WebhookState

_PAGE = 100
USER_AGENT = "consent-relay-webhooks/1"


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,BASE64(HMAC-SHA256(key, "id.timestamp.body"))`, the key being the base64 after `whsec_`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode("ascii") + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_request(secret: str, msg_id: str, payload: dict[str, Any], now: float) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    timestamp = int(now)
    return body, {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


@dataclass(frozen=True)
class Attempt:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 503", "timeout", "connection refused"…


async def post(client: EndpointClient, hook: WebhookConfig, msg_id: str, payload: dict[str, Any], now: float, timeout: float) -> Attempt:
    body, headers = signed_request(hook.secret, msg_id, payload, now)
    try:
        async with asyncio.timeout(timeout):
            status = await client.post(body, headers)
            return Attempt(200 <= status < 300, f"HTTP {status}")
    except TimeoutError:
        return Attempt(False, f"no answer within {timeout:g} s")
    except (OSError, ssl.SSLError, HttpError, asyncio.IncompleteReadError) as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}"[:300])


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Exponential from `initial`, capped at `maximum`, with jitter: endpoints coming back are not stampeded."""
    return min(maximum, initial * 2 ** min(attempts, 40)) * random.uniform(0.5, 1.0)


class _Window:
    """What became of one page of an endpoint's events. `done` is the seq up to which every event was
    answered 2xx (or is not for this endpoint): the cursor moves there and no further, whatever later
    POSTs already got, so a retry starts again at the first event not answered."""

    def __init__(self, cursor: int, events: Sequence[Event]) -> None:
        self.done = cursor
        self.pending = [e.seq for e in events]  # in seq order; removed as they succeed
        self.succeeded: set[int] = set()
        self.failure = ""
        self.lost = False  # another instance took the endpoint over (its lease ran out)

    def settle(self, seq: int, attempt: Attempt | None) -> None:
        if attempt is not None and not attempt.ok:
            self.failure = self.failure or attempt.detail
            return
        self.succeeded.add(seq)
        while self.pending and self.pending[0] in self.succeeded:
            self.done = self.pending.pop(0)
            self.succeeded.discard(self.done)


class WebhookSender:
    """Sends every account's events to its webhooks; one per relay process."""

    def __init__(self, services: Services, owner: str | None = None) -> None:
        self.services = services
        self.config = services.config.events
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.endpoints = [(a, h) for a in services.config.accounts for h in a.webhooks]
        self.lease_seconds = max(60.0, self.config.webhook_timeout * 3)
        self.clients = {(a.id, h.endpoint): EndpointClient(h.url) for a, h in self.endpoints}
        self.log = get_logger()

    async def run(self) -> None:
        if not self.endpoints:
            return
        try:
            while True:
                try:
                    await self.ensure_endpoints()
                    break
                except StoreUnavailable as exc:
                    self.log.warning("webhooks_not_started", error=str(exc))
                    await asyncio.sleep(self.config.webhook_poll_seconds)
            while True:
                await self.send_once()
                await asyncio.sleep(self.config.webhook_poll_seconds)
        finally:
            self.close()

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    async def ensure_endpoints(self) -> None:
        for account, hook in self.endpoints:
            await self.services.store.webhooks.ensure(account.id, hook.endpoint, hook.url)

    async def send_once(self) -> None:
        await asyncio.gather(*(self._drain(a, h) for a, h in self.endpoints))
        await self._refresh_gauges()

    async def _drain(self, account: AccountConfig, hook: WebhookConfig) -> None:
        store = self.services.store
        try:
            state = await store.webhooks.claim(
                account.id, hook.endpoint, self.owner, now=self._now(), lease_seconds=self.lease_seconds
            )
            if state is None:
                return  # disabled, backing off, or another instance holds it
            cursor = state.cursor
            while True:
                events = await store.events.after(account.id, cursor, _PAGE)
                if not events:
                    break
                window = await self._send_page(account, hook, cursor, events)
                # Progress is written page by page (one write per page, not per POST, off the store the
                # mail path uses): after a crash at most this page goes out again, under the same ids.
                cursor = window.done
                if window.lost:
                    return
                if window.failure:
                    await store.webhooks.advance(account.id, hook.endpoint, self.owner, cursor)
                    await self._failed(account, hook, state, window.failure)
                    return
                if not await self._keep_lease(account, hook, cursor):
                    return
            await store.webhooks.release(account.id, hook.endpoint, self.owner)
        except StoreUnavailable as exc:
            self.log.warning("webhooks_store_unavailable", account=account.id, error=str(exc))

    async def _send_page(self, account: AccountConfig, hook: WebhookConfig, cursor: int, events: Sequence[Event]) -> _Window:
        """POSTs the page's events, at most `[events] webhook_concurrency` at once, started in seq order.

        An event about a recipient waits until every earlier one about the same recipient was answered,
        and an event about no recipient (account_state) until every earlier event was: their order is
        kept. The first failure stops new POSTs; those in flight finish."""
        window = _Window(cursor, events)
        slots = asyncio.Semaphore(max(1, self.config.webhook_concurrency))
        client = self.clients[(account.id, hook.endpoint)]
        in_flight: dict[str, asyncio.Task[None]] = {}  # by recipient ("" for the account as a whole)
        renew_at = self._now() + self.lease_seconds / 3

        async def send(event: Event) -> None:
            try:
                attempt = await post(client, hook, event.id, event.as_dict(), self._now(), self.config.webhook_timeout)
            finally:
                slots.release()
            if attempt.ok:
                self.services.metrics.webhook_deliveries.labels(account.id, "ok").inc()
            window.settle(event.seq, attempt)

        async with asyncio.TaskGroup() as group:
            for event in events:
                if event.type not in hook.events:
                    window.settle(event.seq, None)
                    continue
                key = event.recipient
                before = list(in_flight.values()) if not key else [t for t in (in_flight.get(key), in_flight.get("")) if t]
                if before:
                    await asyncio.wait(before)
                await slots.acquire()
                if window.failure:
                    slots.release()
                    break
                if self._now() >= renew_at:  # slow answers: renew before the lease can run out
                    if not await self._keep_lease(account, hook, window.done):
                        slots.release()
                        window.lost = True
                        break
                    renew_at = self._now() + self.lease_seconds / 3
                task = in_flight[key] = group.create_task(send(event))
                task.add_done_callback(lambda t, key=key: in_flight.pop(key) if in_flight.get(key) is t else None)
        return window

    async def _keep_lease(self, account: AccountConfig, hook: WebhookConfig, cursor: int) -> bool:
        """Write the progress and renew the lease; False when another instance took the endpoint over."""
        store = self.services.store
        await store.webhooks.advance(account.id, hook.endpoint, self.owner, cursor)
        renewed = await store.webhooks.claim(
            account.id, hook.endpoint, self.owner, now=self._now(), lease_seconds=self.lease_seconds
        )
        return renewed is not None

    async def _failed(self, account: AccountConfig, hook: WebhookConfig, state: WebhookState, detail: str) -> None:
        now = self._now()
        delay = backoff_seconds(state.attempts, self.config.webhook_retry_initial_seconds, self.config.webhook_retry_max_seconds)
        after = await self.services.store.webhooks.failed(
            account.id, hook.endpoint, self.owner, now=now, next_attempt_at=now + delay, error=detail,
            disable_after=self.config.webhook_give_up_hours * 3600,
        )
        self.services.metrics.webhook_deliveries.labels(account.id, "failed").inc()
        if after is not None and after.disabled_at is not None:
            self.log.warning("webhook_disabled", account=account.id, url=hook.url, error=detail,
                             failing_hours=self.config.webhook_give_up_hours)
        else:
            self.log.info("webhook_failed", account=account.id, url=hook.url, error=detail, retry_in=round(delay, 1))

    async def _refresh_gauges(self) -> None:
        store, now = self.services.store, self.services.clock.now()
        oldest: dict[str, float] = {}
        try:
            for state in await store.webhooks.states():
                if state.disabled_at is not None:
                    continue
                pending = await store.events.after(state.account, state.cursor, 1)
                if pending:
                    age = max(0.0, (now - pending[0].at).total_seconds())
                    oldest[state.account] = max(oldest.get(state.account, 0.0), age)
        except StoreUnavailable:
            return
        for account, _ in self.endpoints:
            self.services.metrics.webhook_oldest_pending.labels(account.id).set(oldest.get(account.id, 0.0))

    def _now(self) -> float:
        return self.services.clock.now().timestamp()


async def send_ping(services: Services, account: AccountConfig, timeout: float) -> list[tuple[WebhookConfig, Attempt]]:
    """`consent-relay webhook test`: one signed `ping` to each endpoint of the account, now."""
    now = services.clock.now()
    results = []
    for hook in account.webhooks:
        client = EndpointClient(hook.url)
        msg_id = f"ping_{account.id}_{secrets.token_hex(8)}"
        payload = {"id": msg_id, "type": "ping", "at": now.isoformat(), "account": account.id, "detail": {"url": hook.url}}
        try:
            results.append((hook, await post(client, hook, msg_id, payload, now.timestamp(), timeout)))
        finally:
            client.close()
    return results


def disabled_notes(states: list[WebhookState], account: AccountConfig) -> list[str]:
    """For the account's admin page: each endpoint that was disabled after failing too long."""
    urls = {h.endpoint: h.url for h in account.webhooks}
    return [
        f"webhook {urls[s.endpoint]} disabled after failing since "
        f"{_iso(s.failing_since)}: {s.last_error or 'no answer'}"
        for s in states
        if s.account == account.id and s.disabled_at is not None and s.endpoint in urls
    ]


def _iso(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp or 0, timezone.utc).isoformat(timespec="seconds")


class WebhooksFeature(Feature):
    name = "webhooks"

    def __init__(self, services: Services) -> None:
        self.sender = WebhookSender(services)

    def background_tasks(self) -> list[Task]:
        return [self.sender.run()]

