"""The outbox worker: retries queued copies with exponential back-off until delivered or given up.

It sends as many copies at once as the upstream pool has connections. While the upstream is away
(deferred attempts in a row) it tries only one copy every `probe_seconds`, early if need be, and
once the upstream answers again it sends every queued copy without waiting out its back-off
(issue 20: a drain at the upstream's rate, not at the back-off's).

No copy is sent twice by two holders: a copy is claimed under a short lease, renewed by a
heartbeat while its holder works, fenced by its claim (marked as begun, committed before the send)
and checked against its deadline just before the message goes out. Claims are small batches that fit in one lease. A
send whose outcome is unknown (sent, then no answer) is logged and counted as uncertain, so a later
delivery of it reads "maybe twice", never a silent duplicate.

The store is paid per claim, not per copy (issue 20): the claim itself fences its copies (the same
write leases them and marks their sends as begun), and a lane goes on to its next copy while the
last one's delivery is being committed. A holder that dies after its claim leaves every copy of it
marked as begun, so each comes back counted as uncertain, as a copy cut off in the middle of its
send does; a copy that was fenced and not sent (a graceful stop) is given back unmarked.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from typing import Awaitable, Callable, Sequence

from relay.config import OutboxConfig
from relay.delivery.upstream import Upstream, UpstreamResult
from relay.errors import LeaseLost, StoreUnavailable, UpstreamRejected, UpstreamUnavailable, UpstreamUncertain
from relay.log import get_logger, recipient_labels
from relay.metrics import Metrics
from relay.services import Clock
from relay.store.base import OutboxStore
from relay.store.records import OutboxItem

_MAX_BATCH = 10  # copies a lane may hold before it starts them
# Deferred attempts in a row after which the upstream is taken as away: fewer are the copies'
# own (a busy mailbox), and they keep their back-off.
AWAY_AFTER = 10
_DEPTH_EVERY = 5.0  # seconds between two counts of the outbox while it drains (a count reads every row)


def backoff_seconds(config: OutboxConfig, attempts: int) -> float:
    return min(config.retry_max_seconds, config.retry_initial_seconds * (2 ** max(0, attempts - 1)))


def batch_size(lease_seconds: float, upstream_timeout: float, lanes: int = 1, pace: float | None = None) -> int:
    """As many copies as fit in one lease for each lane if each took the whole upstream timeout: a
    copy claimed and not yet started waits at most one lease for another process when this one dies.
    While the upstream answers every copy (`pace`: seconds a copy took each lane in the last claim),
    as many as a lane sends in a third of a lease at that pace, up to the same cap: the claim, its
    fence and its last commit are paid for more copies."""
    per_lane = math.floor(lease_seconds / max(upstream_timeout, 0.001))
    if pace is not None:
        per_lane = max(per_lane, math.floor(lease_seconds / 3 / max(pace, 0.001)))
    return max(1, lanes) * max(1, min(_MAX_BATCH, per_lane))


class _CopyFence:
    """One copy's proof of ownership, handed to Upstream.send (relay.delivery.upstream.Fence). Its
    claim was its fence (the claim's write marked its send begun, committed before the send), so it
    is confirmed from the start: only its lease's deadline is checked before the message goes out."""

    confirmed = True

    def __init__(self, worker: OutboxWorker, item: OutboxItem, deadline: float) -> None:
        self.worker = worker
        self.item = item
        self.deadline = deadline  # the claim's lease deadline

    async def confirm(self) -> None:
        """Nothing to write before DATA: the claim fenced the copy."""

    def check(self) -> None:
        # The claim's deadline or the heartbeat's last renewal: past it another process may claim the copy.
        deadline = max(self.deadline, self.worker.held.get(self.item.id, 0.0))
        if self.worker.clock.timestamp() >= deadline:
            raise LeaseLost("the lease ran out before the message was sent")


class _Settler:
    """The deliveries that meet while a commit is under way go into the next one together: one
    commit (one fsync on SQLite) for the copies of several lanes and claims. A delivery is awaited
    later (`deliver`), so that its lane sends its next copy meanwhile."""

    def __init__(self, worker: OutboxWorker) -> None:
        self.worker = worker
        self._delivered: list[tuple[int, asyncio.Future[float]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def deliver(self, item_id: int) -> asyncio.Future[float]:
        """The copy's delivery, to be committed with the next write: resolved once it is."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._delivered.append((item_id, done))
        self._start()
        return done

    def _start(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="outbox-settle")

    async def _flush(self) -> None:
        w = self.worker
        while self._delivered:
            delivered, self._delivered = self._delivered, []
            now = w.clock.timestamp()
            try:
                await w.store.settle(
                    w.owner, delivered=[i for i, _ in delivered], fence=[], now=now, lease_until=now + w.config.lease_seconds
                )
            except BaseException as exc:
                failure = exc if isinstance(exc, Exception) else StoreUnavailable("outbox write cancelled")
                for _, done in delivered:
                    if not done.done():
                        done.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, done in delivered:
                if not done.done():
                    done.set_result(0.0)


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
        # One lane per pooled upstream connection: the copies of a claim are sent side by side.
        self.lanes = max(1, upstream.config.pool_size)
        self.batch = batch_size(config.lease_seconds, upstream.config.timeout, self.lanes)
        # Copies of a claim that go even while the upstream is away (the rest is given back then).
        self._base_batch = self.batch
        self.deferred_in_a_row = 0
        self._deferrals = 0  # deferred attempts in all (a claim with one is not a pace to size the next by)
        self._probed_at = -math.inf
        self._probe_after = 0  # the id after which the next probe looks (each probe tries another copy)
        self._catch_up_after: int | None = None  # after the upstream came back: the early claims' cursor
        self._depth_at = -math.inf
        self._uncounted = False  # copies were sent since the last count
        self.settler = _Settler(self)
        self.held: dict[int, float] = {}  # copy id -> lease deadline, for the copies of the current claim
        self._give_back: set[int] = set()  # copies of the current claim not sent, whose own write failed
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

    @property
    def upstream_away(self) -> bool:
        return self.deferred_in_a_row >= AWAY_AFTER

    async def _claim(self, now: float) -> list[OutboxItem]:
        lease = self.config.lease_seconds
        if self.upstream_away:
            # One copy every probe_seconds, early if need be: retrying every due copy would only
            # be deferred too, and the back-off would leave the upstream idle long after it came back.
            if now - self._probed_at < self.config.probe_seconds:
                return []
            self._probed_at = now
            for after in (self._probe_after, 0):
                items = await self.store.claim_early(
                    now=now, owner=self.owner, lease_seconds=lease, limit=1, after_id=after, fenced=True
                )
                if items:
                    self._probe_after = items[0].id
                    return items
            return []
        items = await self.store.claim_due(now=now, owner=self.owner, lease_seconds=lease, limit=self.batch, fenced=True)
        if items:
            return items
        if self._catch_up_after is not None:
            items = await self.store.claim_early(
                now=now, owner=self.owner, lease_seconds=lease, limit=self.batch, after_id=self._catch_up_after, fenced=True
            )
            if items:
                self._catch_up_after = max(item.id for item in items)
                return items
            self._catch_up_after = None
            self.log.info("outbox_caught_up")
        return []

    async def run_once(self) -> int:
        now = self.clock.timestamp()
        items = await self._claim(now)
        if not items:
            # At once after a claim whose copies were not counted (the gauge reads the end of a drain without delay),
            # else at most every _DEPTH_EVERY: while the upstream is away each queued message wakes
            # the worker, and a count reads every queued row (100,000 of them, dozens of times a
            # second, on the store the live path needs; on PostgreSQL that count was most of the store's work).
            await self._count(now, force=self._uncounted)
            self._uncounted = False
            return 0
        # The claim was the fence of its copies (claimed `fenced`): each is ours until this deadline.
        deadline = now + self.config.lease_seconds
        self.held = dict.fromkeys((item.id for item in items), deadline)
        heartbeat = asyncio.create_task(self._heartbeat(), name="outbox-heartbeat")
        todo = list(reversed(items))
        unsent = {item.id for item in items}
        started, deferrals = time.perf_counter(), self._deferrals

        async def lane() -> None:
            pending: list[tuple[OutboxItem, UpstreamResult, asyncio.Future[float]]] = []
            try:
                while todo and not self._stopping:
                    if self.upstream_away and len(items) - len(todo) >= self._base_batch:
                        break  # away again: the copies beyond a small claim are given back, not deferred
                    item = todo.pop()
                    unsent.discard(item.id)
                    if item.id not in self.held:
                        continue  # the heartbeat found it taken: its lease ran out while we waited
                    delivered = await self._attempt(item, deadline)
                    if delivered is not None:
                        pending.append((item, delivered, self.settler.deliver(item.id)))
                    self.held.pop(item.id, None)
            finally:
                # The deliveries of this lane, committed while it sent its next copies.
                await self._delivered(pending)

        try:
            # Each lane finishes its copy in flight even when another failed (a store error): the
            # first error is raised once all have stopped, and what no lane started is given back.
            outcomes = await asyncio.gather(*(lane() for _ in range(min(self.lanes, len(items)))), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            unsent |= self._give_back
            self._give_back = set()
            if unsent:
                await self._release(list(unsent))
            self.held = {}
        if self._deferrals == deferrals and not self.upstream_away:
            # Every copy answered: the next claim is sized by this one's pace.
            per_lane = math.ceil(len(items) / min(self.lanes, len(items)))
            pace = (time.perf_counter() - started) / per_lane
            self.batch = batch_size(self.config.lease_seconds, self.upstream.config.timeout, self.lanes, pace)
        else:
            self.batch = self._base_batch
        self._uncounted = not await self._count(now)
        return len(items)

    async def _delivered(self, pending: Sequence[tuple[OutboxItem, UpstreamResult, asyncio.Future[float]]]) -> None:
        """Once each delivery is committed: the hooks and the log line. The first store error is
        raised once every commit has ended (an uncommitted delivery comes back as uncertain)."""
        failure: BaseException | None = None
        for item, result, done in pending:
            try:
                await done
            except BaseException as exc:
                failure = failure or exc
                continue
            for hook in self.on_delivered:
                await hook(item)
            self.log.info(
                "outbox_delivered", relay_id=item.relay_id, account=item.account, recipients=recipient_labels(result.accepted),
                attempts=item.attempts + 1,
                **({"maybe_twice": True, "uncertain_attempts": item.uncertain} if item.uncertain else {}),
            )
        if failure is not None:
            raise failure

    async def _count(self, now: float, *, force: bool = False) -> bool:
        """The outbox's depth into its gauge, unless it was counted less than _DEPTH_EVERY ago; whether it was."""
        if not force and now - self._depth_at < _DEPTH_EVERY:
            return False
        self._depth_at = now
        self.metrics.outbox_messages.set(await self.store.depth())
        return True

    def _deferred(self) -> None:
        self._deferrals += 1
        self.deferred_in_a_row += 1
        if self.deferred_in_a_row == AWAY_AFTER:
            self._catch_up_after = None  # away again: the copies wait for their back-off, or a probe
            self._probed_at = self.clock.timestamp()  # the first probe in probe_seconds
            self.log.warning("outbox_upstream_away", deferred_in_a_row=AWAY_AFTER)

    def _answered(self) -> None:
        if self.upstream_away:
            self._catch_up_after = 0
            self.log.info("outbox_upstream_back", after_deferred=self.deferred_in_a_row)
        self.deferred_in_a_row = 0

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

    async def _attempt(self, item: OutboxItem, deadline: float) -> UpstreamResult | None:
        """One send of a copy whose claim was its fence (`deadline`: the claim's lease deadline).
        The result of a full delivery, for the caller to commit with others; None otherwise."""
        now = self.clock.timestamp()
        if item.interrupted_send:
            self.metrics.outbox_uncertain.inc()
            self.log.warning(
                "outbox_maybe_delivered", relay_id=item.relay_id, account=item.account,
                recipients=recipient_labels(item.rcpt_tos), reason="its previous holder stopped during a send",
            )
        fence = _CopyFence(self, item, deadline)
        try:
            result = await self.upstream.send(item.mail_from, item.rcpt_tos, item.content, fence=fence)
        except LeaseLost as exc:
            self.metrics.outbox_attempts.labels("lease_lost").inc()
            self.metrics.outbox_lease_lost.inc()
            self.log.warning("outbox_not_sent", relay_id=item.relay_id, account=item.account, reason=str(exc))
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
            self._deferred()
            await self._later(item, str(exc), now, uncertain=False)
            return
        except UpstreamRejected as exc:
            self.metrics.outbox_attempts.labels("refused").inc()
            self._answered()
            await self._not_sent(item, self.store.give_up(item.id, self.owner, error=exc.reply or str(exc)))
            self.log.warning(
                "outbox_refused", relay_id=item.relay_id, account=item.account, recipients=recipient_labels(item.rcpt_tos),
                reply=exc.reply,
            )
            return
        self.metrics.outbox_attempts.labels("delivered").inc()
        self._answered()
        later = result.temporarily_refused
        if not later:
            return result  # committed by the caller, with other copies'
        # One statement: the copy keeps only the recipients still to do (a crash here loses none).
        await self.store.retry_later(
            item.id, self.owner, next_attempt_at=now + backoff_seconds(self.config, item.attempts + 1),
            error=result.reply, rcpt_tos=later,
        )
        await self._delivered([(item, result, _done())])
        return None

    async def _later(self, item: OutboxItem, error: str, now: float, *, uncertain: bool) -> None:
        age_hours = (now - item.created_at) / 3600.0
        if age_hours >= self.config.give_up_after_hours:
            write = self.store.give_up(item.id, self.owner, error=f"gave up after {age_hours:.0f} h: {error}")
            await (write if uncertain else self._not_sent(item, write))
            self.log.error("outbox_gave_up", relay_id=item.relay_id, account=item.account, error=error)
            return
        next_at = now + backoff_seconds(self.config, item.attempts + 1)
        write = self.store.retry_later(item.id, self.owner, next_attempt_at=next_at, error=error, uncertain=uncertain)
        await (write if uncertain else self._not_sent(item, write))

    async def _not_sent(self, item: OutboxItem, write: Awaitable[None]) -> None:
        """The write for a copy that surely did not go out. When it fails, the copy is given back with
        the claim's unsent copies, its fence undone: the claim's fence must not make it look begun."""
        try:
            await write
        except StoreUnavailable:
            self._give_back.add(item.id)
            raise


def _done() -> asyncio.Future[float]:
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    done.set_result(0.0)
    return done
