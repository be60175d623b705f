"""The outbox worker: retries queued copies with exponential back-off until delivered or given up."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Awaitable, Callable

from relay.config import OutboxConfig
from relay.errors import StoreUnavailable, UpstreamRejected, UpstreamUnavailable
from relay.log import get_logger, recipient_labels
from relay.metrics import Metrics
from relay.services import Clock
from relay.store.base import OutboxStore
from relay.store.records import OutboxItem
from relay.upstream import Upstream

_BATCH = 50


def backoff_seconds(config: OutboxConfig, attempts: int) -> float:
    return min(config.retry_max_seconds, config.retry_initial_seconds * (2 ** max(0, attempts - 1)))


class OutboxWorker:
    def __init__(
        self, store: OutboxStore, upstream: Upstream, config: OutboxConfig, metrics: Metrics, clock: Clock
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.config = config
        self.metrics = metrics
        self.clock = clock
        # Unique per process and start, so a lease of a killed process is never mistaken for ours.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self.log = get_logger()
        # Told of each copy the upstream accepted (a confirmation mail's signup notes its delivery).
        self.on_delivered: list[Callable[[OutboxItem], Awaitable[None]]] = []

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                worked = await self.run_once()
            except StoreUnavailable as exc:
                self.log.warning("outbox_store_unavailable", error=str(exc))
                worked = 0
            if worked:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        now = self.clock.timestamp()
        lease = max(60.0, self.upstream.config.timeout * 3)
        items = await self.store.claim_due(now=now, owner=self.owner, lease_seconds=lease, limit=_BATCH)
        for item in items:
            await self._attempt(item)
        self.metrics.outbox_messages.set(await self.store.depth())
        return len(items)

    async def _attempt(self, item: OutboxItem) -> None:
        now = self.clock.timestamp()
        try:
            result = await self.upstream.send(item.mail_from, item.rcpt_tos, item.content)
        except UpstreamUnavailable as exc:
            await self._later(item, str(exc), now)
            return
        except UpstreamRejected as exc:
            self.metrics.outbox_attempts.labels("refused").inc()
            await self.store.give_up(item.id, self.owner, error=exc.reply or str(exc))
            self.log.warning(
                "outbox_refused", relay_id=item.relay_id, account=item.account, recipients=recipient_labels(item.rcpt_tos),
                reply=exc.reply,
            )
            return
        self.metrics.outbox_attempts.labels("delivered").inc()
        later = result.temporarily_refused
        await self.store.delivered(item.id, self.owner)
        if later:
            await self.store.enqueue(
                [
                    OutboxItem(
                        item.relay_id, item.account, item.stream, item.mail_from, later, item.content,
                        attempts=item.attempts + 1, next_attempt_at=now + backoff_seconds(self.config, item.attempts + 1),
                        created_at=item.created_at,
                    )
                ],
                now=now,
            )
        for hook in self.on_delivered:
            await hook(item)
        self.log.info(
            "outbox_delivered", relay_id=item.relay_id, account=item.account, recipients=recipient_labels(result.accepted),
            attempts=item.attempts + 1,
        )

    async def _later(self, item: OutboxItem, error: str, now: float) -> None:
        self.metrics.outbox_attempts.labels("deferred").inc()
        age_hours = (now - item.created_at) / 3600.0
        if age_hours >= self.config.give_up_after_hours:
            await self.store.give_up(item.id, self.owner, error=f"gave up after {age_hours:.0f} h: {error}")
            self.log.error("outbox_gave_up", relay_id=item.relay_id, account=item.account, error=error)
            return
        next_at = now + backoff_seconds(self.config, item.attempts + 1)
        await self.store.retry_later(item.id, self.owner, next_attempt_at=next_at, error=error)
