"""The outbox worker: retries queued copies with exponential back-off until delivered or given up.

No copy is sent twice by two holders: a copy is claimed under a short lease, renewed by a
heartbeat while its holder works, confirmed in the store (fenced) just before DATA and checked
against its deadline just before the message goes out. Claims are small batches that fit in one
lease. A send whose outcome is unknown (sent, then no answer) is logged and counted as uncertain,
so a later delivery of it reads "maybe twice", never a silent duplicate.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import uuid
from typing import Awaitable, Callable, Sequence

from relay.config import OutboxConfig
from relay.delivery.upstream import Upstream
from relay.errors import LeaseLost, StoreUnavailable, UpstreamRejected, UpstreamUnavailable, UpstreamUncertain
from relay.log import get_logger, recipient_labels
from relay.metrics import Metrics
from relay.services import Clock
from relay.store.base import OutboxStore
from relay.store.records import OutboxItem

_MAX_BATCH = 10


def backoff_seconds(config: OutboxConfig, attempts: int) -> float:
    return min(config.retry_max_seconds, config.retry_initial_seconds * (2 ** max(0, attempts - 1)))


def batch_size(lease_seconds: float, upstream_timeout: float) -> int:
    """As many copies as fit in one lease if each took the whole upstream timeout: a copy claimed
    and not yet started waits at most one lease for another process when this one dies."""
    return max(1, min(_MAX_BATCH, math.floor(lease_seconds / max(upstream_timeout, 0.001))))


class _CopyFence:
    """One copy's proof of ownership, handed to Upstream.send (relay.delivery.upstream.Fence)."""

    def __init__(self, worker: OutboxWorker, item: OutboxItem) -> None:
        self.worker = worker
        self.item = item
        self.deadline = 0.0
        self.confirmed = False

    async def confirm(self) -> None:
        w = self.worker
        now = w.clock.timestamp()
        until = now + w.config.lease_seconds
        try:
            held = await w.store.fence(self.item.id, w.owner, now=now, lease_until=until)
        except StoreUnavailable as exc:
            raise LeaseLost(f"cannot confirm the lease: {exc}") from exc
        if not held:
            raise LeaseLost("the lease passed to another process")
        self.deadline = until
        self.confirmed = True

    def check(self) -> None:
        # The deadline of the last confirmation or renewal: past it another process may claim the copy.
        deadline = max(self.deadline, self.worker.held.get(self.item.id, 0.0))
        if self.worker.clock.timestamp() >= deadline:
            raise LeaseLost("the lease ran out before the message was sent")


class OutboxBell:
    """Rung when a copy was queued, so the worker sends it now rather than at its next poll. Made
    before the worker: the parts that queue copies (pipeline, signups, notices) are built first."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def ring(self) -> None:
        self.event.set()


# Told of each copy the upstream accepted (a confirmation mail's signup notes its delivery).
DeliveredHook = Callable[[OutboxItem], Awaitable[None]]


class OutboxWorker:
    def __init__(
        self,
        store: OutboxStore,
        upstream: Upstream,
        config: OutboxConfig,
        metrics: Metrics,
        clock: Clock,
        *,
        bell: OutboxBell | None = None,
        on_delivered: Sequence[DeliveredHook] = (),
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.config = config
        self.metrics = metrics
        self.clock = clock
        # Unique per process and start, so a lease of a killed process is never mistaken for ours.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch = batch_size(config.lease_seconds, upstream.config.timeout)
        self.held: dict[int, float] = {}  # copy id -> lease deadline, for the copies of the current claim
        self._wake = (bell or OutboxBell()).event
        self._stopping = False
        self._running: asyncio.Task[None] | None = None
        self.log = get_logger()
        self.on_delivered = tuple(on_delivered)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self._running = asyncio.current_task()
        while not self._stopping:
            try:
                worked = await self.run_once()
            except StoreUnavailable as exc:
                self.log.warning("outbox_store_unavailable", error=str(exc))
                worked = 0
            if worked or self._stopping:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
            except TimeoutError:
                pass

    async def stop(self, timeout: float) -> None:
        """Finish the copy being sent (at most `timeout`), give back the other claimed copies."""
        self._stopping = True
        self._wake.set()
        task = self._running
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception:  # the loop's own failure was logged where it happened
            pass

    async def run_once(self) -> int:
        now = self.clock.timestamp()
        items = await self.store.claim_due(now=now, owner=self.owner, lease_seconds=self.config.lease_seconds, limit=self.batch)
        if not items:
            self.metrics.outbox_messages.set(await self.store.depth())
            return 0
        self.held = {item.id: now + self.config.lease_seconds for item in items}
        heartbeat = asyncio.create_task(self._heartbeat(), name="outbox-heartbeat")
        unsent = [item.id for item in items]
        try:
            for item in items:
                if self._stopping:
                    break
                unsent.remove(item.id)
                if item.id not in self.held:
                    continue  # the heartbeat found it taken: its lease ran out while we waited
                await self._attempt(item)
                self.held.pop(item.id, None)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            if unsent:
                await self._release(unsent)
            self.held = {}
        self.metrics.outbox_messages.set(await self.store.depth())
        return len(items)

    async def _heartbeat(self) -> None:
        interval = self.config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if not self.held:
                continue
            until = self.clock.timestamp() + self.config.lease_seconds
            try:
                kept = await self.store.renew(list(self.held), self.owner, lease_until=until)
            except StoreUnavailable as exc:
                # Not renewed: the fence check before each send refuses once the deadline passes.
                self.log.warning("outbox_lease_not_renewed", error=str(exc))
                continue
            for item_id in list(self.held):
                if item_id in kept:
                    self.held[item_id] = until
                else:
                    del self.held[item_id]
                    self.log.warning("outbox_lease_lost", outbox_id=item_id)

    async def _release(self, item_ids: list[int]) -> None:
        try:
            await asyncio.shield(self.store.release(item_ids, self.owner))
        except (StoreUnavailable, asyncio.CancelledError):
            pass  # they come back when the lease runs out
        else:
            self.log.info("outbox_released", copies=len(item_ids))

    async def _attempt(self, item: OutboxItem) -> None:
        now = self.clock.timestamp()
        if item.interrupted_send:
            self.metrics.outbox_uncertain.inc()
            self.log.warning(
                "outbox_maybe_delivered", relay_id=item.relay_id, account=item.account,
                recipients=recipient_labels(item.rcpt_tos), reason="its previous holder stopped during a send",
            )
        fence = _CopyFence(self, item)
        try:
            result = await self.upstream.send(item.mail_from, item.rcpt_tos, item.content, fence=fence)
        except LeaseLost as exc:
            self.metrics.outbox_attempts.labels("lease_lost").inc()
            self.metrics.outbox_lease_lost.inc()
            self.log.warning("outbox_not_sent", relay_id=item.relay_id, account=item.account, reason=str(exc))
            if fence.confirmed:
                # Ours until the deadline, not sent: give it back, marked as not in flight.
                await self._later(item, str(exc), now, uncertain=False)
            return
        except UpstreamUncertain as exc:
            self.metrics.outbox_attempts.labels("uncertain").inc()
            self.metrics.outbox_uncertain.inc()
            self.log.warning(
                "outbox_maybe_delivered", relay_id=item.relay_id, account=item.account,
                recipients=recipient_labels(item.rcpt_tos), reason=str(exc),
            )
            await self._later(item, str(exc), now, uncertain=True)
            return
        except UpstreamUnavailable as exc:
            self.metrics.outbox_attempts.labels("deferred").inc()
            await self._later(item, str(exc), now, uncertain=False)
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
        if later:
            # One statement: the copy keeps only the recipients still to do (a crash here loses none).
            await self.store.retry_later(
                item.id, self.owner, next_attempt_at=now + backoff_seconds(self.config, item.attempts + 1),
                error=result.reply, rcpt_tos=later,
            )
        else:
            await self.store.delivered(item.id, self.owner)
        for hook in self.on_delivered:
            await hook(item)
        self.log.info(
            "outbox_delivered", relay_id=item.relay_id, account=item.account, recipients=recipient_labels(result.accepted),
            attempts=item.attempts + 1, **({"maybe_twice": True, "uncertain_attempts": item.uncertain} if item.uncertain else {}),
        )

    async def _later(self, item: OutboxItem, error: str, now: float, *, uncertain: bool) -> None:
        age_hours = (now - item.created_at) / 3600.0
        if age_hours >= self.config.give_up_after_hours:
            await self.store.give_up(item.id, self.owner, error=f"gave up after {age_hours:.0f} h: {error}")
            self.log.error("outbox_gave_up", relay_id=item.relay_id, account=item.account, error=error)
            return
        next_at = now + backoff_seconds(self.config, item.attempts + 1)
        await self.store.retry_later(item.id, self.owner, next_attempt_at=next_at, error=error, uncertain=uncertain)
