"""Signed webhooks (docs/SPEC.md §17): each account event POSTed as JSON to the account's endpoints with the
Standard Webhooks headers, in order, at least once, with exponential backoff and jitter.

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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import aiohttp

from relay.config import AccountConfig, WebhookConfig
from relay.errors import StoreUnavailable
from relay.feature import Feature, Task
from relay.log import get_logger
from relay.services import Services
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


async def post(session: aiohttp.ClientSession, hook: WebhookConfig, msg_id: str, payload: dict[str, Any], now: float, timeout: float) -> Attempt:
    body, headers = signed_request(hook.secret, msg_id, payload, now)
    try:
        async with asyncio.timeout(timeout):
            async with session.post(hook.url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                return Attempt(200 <= response.status < 300, f"HTTP {response.status}")
    except TimeoutError:
        return Attempt(False, f"no answer within {timeout:g} s")
    except aiohttp.ClientError as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}"[:300])


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Exponential from `initial`, capped at `maximum`, with jitter: endpoints coming back are not stampeded."""
    return min(maximum, initial * 2 ** min(attempts, 40)) * random.uniform(0.5, 1.0)


class WebhookSender:
    """Sends every account's events to its webhooks; one per relay process."""

    def __init__(self, services: Services, owner: str | None = None) -> None:
        self.services = services
        self.config = services.config.events
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.endpoints = [(a, h) for a in services.config.accounts for h in a.webhooks]
        self.lease_seconds = max(60.0, self.config.webhook_timeout * 3)
        self.log = get_logger()

    async def run(self) -> None:
        if not self.endpoints:
            return
        async with aiohttp.ClientSession(headers={"user-agent": USER_AGENT}) as session:
            while True:
                try:
                    await self.ensure_endpoints()
                    break
                except StoreUnavailable as exc:
                    self.log.warning("webhooks_not_started", error=str(exc))
                    await asyncio.sleep(self.config.webhook_poll_seconds)
            while True:
                await self.send_once(session)
                await asyncio.sleep(self.config.webhook_poll_seconds)

    async def ensure_endpoints(self) -> None:
        for account, hook in self.endpoints:
            await self.services.store.webhooks.ensure(account.id, hook.endpoint, hook.url)

    async def send_once(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._drain(session, a, h) for a, h in self.endpoints))
        await self._refresh_gauges()

    async def _drain(self, session: aiohttp.ClientSession, account: AccountConfig, hook: WebhookConfig) -> None:
        store = self.services.store
        try:
            state = await store.webhooks.claim(
                account.id, hook.endpoint, self.owner, now=self._now(), lease_seconds=self.lease_seconds
            )
            if state is None:
                return  # disabled, backing off, or another instance holds it
            cursor = state.cursor
            renew_at = self._now() + self.lease_seconds / 3
            while True:
                events = await store.events.after(account.id, cursor, _PAGE)
                if not events:
                    break
                for event in events:
                    if event.type in hook.events:
                        attempt = await post(
                            session, hook, event.id, event.as_dict(), self._now(), self.config.webhook_timeout
                        )
                        if not attempt.ok:
                            await store.webhooks.advance(account.id, hook.endpoint, self.owner, cursor)
                            await self._failed(account, hook, state, attempt.detail)
                            return
                        self.services.metrics.webhook_deliveries.labels(account.id, "ok").inc()
                    cursor = event.seq
                    if self._now() >= renew_at:  # slow answers: renew before the lease can run out
                        if not await self._keep_lease(account, hook, cursor):
                            return
                        renew_at = self._now() + self.lease_seconds / 3
                # Progress is written page by page (one write per page, not per POST, off the store the
                # mail path uses): after a crash at most this page goes out again, under the same ids.
                if not await self._keep_lease(account, hook, cursor):
                    return
                renew_at = self._now() + self.lease_seconds / 3
            await store.webhooks.release(account.id, hook.endpoint, self.owner)
        except StoreUnavailable as exc:
            self.log.warning("webhooks_store_unavailable", account=account.id, error=str(exc))

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
    async with aiohttp.ClientSession() as session:
        for hook in account.webhooks:
            msg_id = f"ping_{account.id}_{secrets.token_hex(8)}"
            payload = {"id": msg_id, "type": "ping", "at": now.isoformat(), "account": account.id, "detail": {"url": hook.url}}
            results.append((hook, await post(session, hook, msg_id, payload, now.timestamp(), timeout)))
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

