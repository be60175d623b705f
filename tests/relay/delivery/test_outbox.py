"""The outbox worker: due copies delivered, back-off doubling to a cap, give-up after the limit,
upstream 5xx recorded as failed, partial 4xx re-queued for the rest only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import structlog.testing

from relay.config import OutboxConfig, StoreConfig, UpstreamConfig
from relay.delivery.outbox import AWAY_AFTER, OutboxWorker, backoff_seconds
from relay.delivery.upstream import Upstream, UpstreamResult
from relay.errors import StoreUnavailable, UpstreamRejected, UpstreamUnavailable
from relay.metrics import Metrics
from relay.services import Clock
from relay.store import open_store_for
from relay.store.base import Store
from relay.store.records import OutboxItem
from tests.conftest import RecordingHandler, RecordingUpstream

CONFIG = OutboxConfig(retry_initial_seconds=60, retry_max_seconds=600, give_up_after_hours=2, poll_seconds=0.1)


@dataclass
class FakeUpstream:
    """Answers from a script: an UpstreamResult, or an exception to raise."""

    answers: list[Any] = field(default_factory=list)
    sent: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    config: UpstreamConfig = field(default_factory=lambda: UpstreamConfig(timeout=5))

    async def send(self, mail_from: str, recipients: tuple[str, ...], content: bytes, fence: Any = None) -> UpstreamResult:
        if fence is not None:  # as relay.delivery.upstream does: confirmed before DATA, checked before the message
            await fence.confirm()
            fence.check()
        self.sent.append((mail_from, tuple(recipients)))
        answer = self.answers.pop(0) if self.answers else UpstreamResult(tuple(recipients), {}, "250 ok")
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clocked:
    def __init__(self, start: float) -> None:
        self.t = start

    def clock(self) -> Clock:
        return Clock(now=lambda: datetime.fromtimestamp(self.t, timezone.utc))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store_for(StoreConfig(url=f"sqlite:///{tmp_path}/relay.db"))
    await s.open()
    yield s
    await s.close()


def worker(store: Store, upstream: FakeUpstream, time: Clocked) -> OutboxWorker:
    return OutboxWorker(store.outbox, upstream, CONFIG, Metrics(), time.clock())  # type: ignore[arg-type]


def copy(rcpts: tuple[str, ...] = ("a@x.nl",)) -> OutboxItem:
    return OutboxItem("r1", "shop", "orders", "o@shop.example", rcpts, b"message\r\n")


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_seconds(CONFIG, n) for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]


async def test_due_copy_is_delivered_and_removed(store: Store) -> None:
    time, up = Clocked(10_000), FakeUpstream()
    await store.outbox.enqueue([copy()], now=time.t)
    assert await worker(store, up, time).run_once() == 1
    assert up.sent == [("o@shop.example", ("a@x.nl",))]
    assert await store.outbox.depth() == 0


async def test_unavailable_upstream_backs_off_then_delivers(store: Store) -> None:
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamUnavailable("down"), UpstreamUnavailable("down")])
    w = worker(store, up, time)
    await store.outbox.enqueue([copy()], now=time.t)
    assert await w.run_once() == 1  # attempt 1 fails: next in 60 s
    time.t += 59
    assert await w.run_once() == 0
    time.t += 1
    assert await w.run_once() == 1  # attempt 2 fails: next in 120 s
    time.t += 119
    assert await w.run_once() == 0
    time.t += 1
    assert await w.run_once() == 1
    assert len(up.sent) == 3 and await store.outbox.depth() == 0


async def test_gives_up_after_the_limit(store: Store) -> None:
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamUnavailable("down")] * 50)
    w = worker(store, up, time)
    await store.outbox.enqueue([copy()], now=time.t)
    for _ in range(30):
        await w.run_once()
        time.t += 600
    assert await store.outbox.depth() == 0  # recorded as failed, not retried forever
    assert len(up.sent) <= 2 * 3600 / 600 + 2


async def test_upstream_5xx_is_recorded_as_failed(store: Store) -> None:
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamRejected("no", 550, "550 5.1.1 no such user")])
    await store.outbox.enqueue([copy()], now=time.t)
    await worker(store, up, time).run_once()
    assert await store.outbox.depth() == 0 and len(up.sent) == 1


async def test_partial_4xx_requeues_only_the_rest(store: Store) -> None:
    time = Clocked(10_000)
    partial = UpstreamResult(("a@x.nl",), {"b@x.nl": (450, "busy"), "c@x.nl": (550, "gone")}, "250 ok")
    up = FakeUpstream([partial])
    w = worker(store, up, time)
    await store.outbox.enqueue([copy(("a@x.nl", "b@x.nl", "c@x.nl"))], now=time.t)
    await w.run_once()
    assert await store.outbox.depth() == 1
    time.t += 60
    await w.run_once()
    assert up.sent[-1] == ("o@shop.example", ("b@x.nl",))
    assert await store.outbox.depth() == 0


async def test_a_second_worker_does_not_take_leased_copies(store: Store) -> None:
    time = Clocked(10_000)
    await store.outbox.enqueue([copy()], now=time.t)
    claimed = await store.outbox.claim_due(now=time.t, owner="other-process", lease_seconds=60, limit=10)
    assert len(claimed) == 1
    up = FakeUpstream()
    assert await worker(store, up, time).run_once() == 0 and up.sent == []


# --- after an outage (issue 20): probes, the catch-up, copies side by side ----------------------


async def test_after_the_upstream_was_away_a_probe_finds_it_back_and_every_copy_goes_without_its_back_off(store: Store) -> None:
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamUnavailable("down")] * (AWAY_AFTER + 2) + [UpstreamUnavailable("still down")])
    w = worker(store, up, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(AWAY_AFTER + 2)], now=time.t)
    assert await w.run_once() == AWAY_AFTER + 2  # every one deferred: next attempts in 60 s
    assert w.upstream_away
    time.t += CONFIG.probe_seconds
    with structlog.testing.capture_logs() as logs:
        assert await w.run_once() == 1  # one copy early, to see whether the upstream is back: not yet
        assert up.sent[-1] == ("o@shop.example", ("r0@x.nl",))
        assert await w.run_once() == 0  # the next probe waits probe_seconds
        time.t += CONFIG.probe_seconds
        assert await w.run_once() == 1  # another copy this time: it is taken
        assert up.sent[-1] == ("o@shop.example", ("r1@x.nl",))
        assert not w.upstream_away
        # Every other copy at once (the first probe's too), 10 s after their last attempt rather than 60.
        assert await w.run_once() == AWAY_AFTER + 1
    assert await store.outbox.depth() == 0
    assert len(up.sent) == 2 * (AWAY_AFTER + 2) + 1
    assert [e["event"] for e in logs if e["event"].startswith("outbox_upstream") or e["event"] == "outbox_caught_up"] == [
        "outbox_upstream_back"
    ]


async def test_while_the_upstream_is_away_new_copies_wait_for_the_probe_instead_of_each_being_tried(store: Store) -> None:
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamUnavailable("down")] * (AWAY_AFTER + 1))
    w = worker(store, up, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(AWAY_AFTER)], now=time.t)
    assert await w.run_once() == AWAY_AFTER and w.upstream_away
    await store.outbox.enqueue([copy((f"new{i}@x.nl",)) for i in range(5)], now=time.t)  # due at once
    time.t += 1
    assert await w.run_once() == 0 and len(up.sent) == AWAY_AFTER  # not tried: they would be deferred too
    time.t += CONFIG.probe_seconds
    assert await w.run_once() == 1 and len(up.sent) == AWAY_AFTER + 1  # the probe, one copy


async def test_while_the_upstream_is_away_the_outbox_is_counted_every_few_seconds_not_at_each_queued_message(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each message queued during an outage wakes the worker, which finds nothing to send: a count of
    # every queued row at each wake was most of the store's work on PostgreSQL (100,000 queued).
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamUnavailable("down")] * (AWAY_AFTER + 2))
    w = worker(store, up, time)
    counts: list[float] = []
    depth = store.outbox.depth

    async def counted() -> int:
        counts.append(time.t)
        return await depth()

    monkeypatch.setattr(store.outbox, "depth", counted)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(AWAY_AFTER)], now=time.t)
    assert await w.run_once() == AWAY_AFTER and w.upstream_away  # counted after its claim
    assert counts == [10_000]
    for _ in range(40):  # 40 wakes over 4 s, each after a queued message
        await store.outbox.enqueue([copy()], now=time.t)
        time.t += 0.1
        assert await w.run_once() == 0
    assert counts == [10_000]
    time.t += 1.1  # the probe (5 s after the upstream went away) finds it still away, and counts
    assert await w.run_once() == 1 and len(up.sent) == AWAY_AFTER + 1
    assert await w.run_once() == 0  # counted already
    assert counts == [10_000, time.t]
    gauge = w.metrics.outbox_messages._value.get()  # type: ignore[attr-defined]
    assert gauge == AWAY_AFTER + 40 == await store.outbox.depth()


async def test_a_few_deferred_copies_keep_their_back_off(store: Store) -> None:
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamUnavailable("mailbox busy")] * (AWAY_AFTER - 1))
    w = worker(store, up, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(AWAY_AFTER - 1)], now=time.t)
    assert await w.run_once() == AWAY_AFTER - 1
    time.t += 59
    assert await w.run_once() == 0 and len(up.sent) == AWAY_AFTER - 1  # no probe: the upstream answers
    time.t += 1
    assert await w.run_once() == AWAY_AFTER - 1


@dataclass
class GatedUpstream(FakeUpstream):
    """Holds every send until `gate` opens; `all_in` is set once `pool_size` sends wait at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    async def send(self, mail_from: str, recipients: tuple[str, ...], content: bytes, fence: Any = None) -> UpstreamResult:
        self.waiting += 1
        if self.waiting == self.config.pool_size:
            self.all_in.set()
        await self.gate.wait()
        self.waiting -= 1
        return await super().send(mail_from, recipients, content, fence)


async def test_the_copies_of_a_claim_go_side_by_side_one_per_pooled_connection(store: Store) -> None:
    time = Clocked(10_000)
    up = GatedUpstream(config=UpstreamConfig(timeout=5, pool_size=4))
    w = worker(store, up, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(6)], now=time.t)
    run = asyncio.create_task(w.run_once())
    await asyncio.wait_for(up.all_in.wait(), 10)  # four sends at once (one at a time never gets there)
    assert up.waiting == 4 and up.sent == []
    up.gate.set()
    assert await run == 6
    assert sorted(r for _, (r,) in up.sent) == sorted(f"r{i}@x.nl" for i in range(6))
    assert await store.outbox.depth() == 0


async def test_a_claim_is_its_copies_fence_and_the_lanes_deliveries_share_one_commit(store: Store) -> None:
    time = Clocked(10_000)
    up = GatedUpstream(config=UpstreamConfig(timeout=5, pool_size=4))
    w = worker(store, up, time)
    settled: list[tuple[list[int], list[int]]] = []
    settle = store.outbox.settle

    async def counting(owner: str, *, delivered: Any, fence: Any, now: float, lease_until: float) -> set[int]:
        settled.append((list(delivered), list(fence)))
        return await settle(owner, delivered=delivered, fence=fence, now=now, lease_until=lease_until)

    store.outbox.settle = counting  # type: ignore[method-assign]
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(4)], now=time.t)
    run = asyncio.create_task(w.run_once())
    await asyncio.wait_for(up.all_in.wait(), 10)
    up.gate.set()
    assert await run == 4 and len(up.sent) == 4 and await store.outbox.depth() == 0
    # The claim fenced its four copies (a fence of its own would be one more write, rewriting each
    # copy again); the four deliveries share one commit: no write of the worker's beyond the claim but that one.
    assert [(len(d), len(f)) for d, f in settled] == [(4, 0)]


# --- a real upstream that loses the connection after the message was sent ------------------------


@dataclass
class HangUpAfterData(RecordingHandler):
    """Takes the message (the sink counts it), then drops the connection before answering."""

    hang_ups: int = 1

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if self.hang_ups:
            self.hang_ups -= 1
            server.transport.abort()
        return reply


async def test_connection_lost_after_the_message_is_counted_and_the_redelivery_says_maybe_twice(store: Store) -> None:
    sink = RecordingUpstream()
    sink.handler = HangUpAfterData()
    sink.start()
    try:
        time, metrics = Clocked(10_000), Metrics()
        upstream = Upstream(UpstreamConfig(host="127.0.0.1", port=sink.port, starttls="off", timeout=5))
        w = OutboxWorker(store.outbox, upstream, CONFIG, metrics, time.clock())
        await store.outbox.enqueue([copy()], now=time.t)
        with structlog.testing.capture_logs() as logs:
            assert await w.run_once() == 1
            assert len(sink.messages) == 1 and await store.outbox.depth() == 1  # sent, but not known to be
            assert metrics.registry.get_sample_value("consent_relay_outbox_uncertain_total") == 1
            time.t += 60
            assert await w.run_once() == 1
        await upstream.close()
    finally:
        sink.stop()
    assert len(sink.messages) == 2 and await store.outbox.depth() == 0
    (maybe,) = [e for e in logs if e["event"] == "outbox_maybe_delivered"]
    assert "after the message was sent" in maybe["reason"]
    (delivered,) = [e for e in logs if e["event"] == "outbox_delivered"]
    assert delivered["maybe_twice"] is True and delivered["uncertain_attempts"] == 1
    assert metrics.registry.get_sample_value("consent_relay_outbox_attempts_total", {"outcome": "uncertain"}) == 1


# --- the store paid per claim, not per copy (issue 20, session 16) -------------------------------

_WRITES = ("claim_due", "claim_early", "settle", "fence", "delivered", "release", "renew", "retry_later", "give_up")


def count_writes(store: Store) -> list[str]:
    """Every write of the outbox store, by name, as they are made."""
    writes: list[str] = []
    for name in _WRITES:
        method = getattr(store.outbox, name)

        async def counted(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            writes.append(_name)
            return await _method(*args, **kwargs)

        setattr(store.outbox, name, counted)
    return writes


@dataclass
class NetworkUpstream(FakeUpstream):
    """Yields to the loop at each step, as a real connection's reads do, and notes at its first send
    whether any copy the store has leased was not yet marked as begun."""

    store: Store | None = None
    unfenced_at_first_send: int | None = None

    async def send(self, mail_from: str, recipients: tuple[str, ...], content: bytes, fence: Any = None) -> UpstreamResult:
        if self.unfenced_at_first_send is None and self.store is not None:
            row = await self.store.outbox.db.fetchone(  # type: ignore[attr-defined]
                "SELECT count(*) FROM outbox WHERE lease_owner != '' AND sending_since = 0"
            )
            self.unfenced_at_first_send = int(row[0])
        await asyncio.sleep(0)
        if fence is not None:
            await fence.confirm()
        await asyncio.sleep(0)
        if fence is not None:
            fence.check()
        await asyncio.sleep(0)
        return await super().send(mail_from, recipients, content, None)


async def test_a_drain_pays_the_store_per_claim_not_per_copy(store: Store) -> None:
    time = Clocked(10_000)
    up = NetworkUpstream(config=UpstreamConfig(timeout=5, pool_size=8), store=store)
    w = worker(store, up, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(400)], now=time.t)
    writes = count_writes(store)
    claims = []
    while n := await w.run_once():
        claims.append(n)
    assert sorted(r for _, (r,) in up.sent) == sorted(f"r{i}@x.nl" for i in range(400))
    assert await store.outbox.depth() == 0
    # The claim's fence was one write, committed before its first copy went out.
    assert up.unfenced_at_first_send == 0
    # Once the upstream answers quickly, a claim takes up to 10 copies a lane (3 each at the 5 s timeout).
    assert claims[0] == 8 * 3 and max(claims) == 8 * 10
    # A claim, its fence and the deliveries' commits, for 24 to 80 copies: two commits per copy
    # shared by the lanes would be at least 0.25 a copy (and the old worker made 0.29).
    assert len(writes) / 400 <= 0.1, (len(writes), writes.count("settle"), len(claims))


async def test_a_holder_that_dies_after_its_claims_fence_leaves_every_copy_of_it_uncertain(store: Store) -> None:
    time = Clocked(10_000)
    stuck = GatedUpstream(config=UpstreamConfig(timeout=5, pool_size=2))  # its gate never opens
    dying = worker(store, stuck, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(4)], now=time.t)
    run = asyncio.create_task(dying.run_once())
    try:
        await asyncio.wait_for(stuck.all_in.wait(), 10)  # fenced, and both lanes at their first send
        # The holder dies here (kill -9: it writes nothing more). Its leases run out.
        time.t += CONFIG.lease_seconds + 1
        up, metrics = FakeUpstream(), Metrics()
        heir = OutboxWorker(store.outbox, up, CONFIG, metrics, time.clock())  # type: ignore[arg-type]
        with structlog.testing.capture_logs() as logs:
            assert await heir.run_once() == 4
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    # Each copy of the fenced claim may have gone out: each is sent again, said "maybe", never silently twice.
    assert sorted(r for _, (r,) in up.sent) == [f"r{i}@x.nl" for i in range(4)] and await store.outbox.depth() == 0
    assert len([e for e in logs if e["event"] == "outbox_maybe_delivered"]) == 4
    assert metrics.registry.get_sample_value("consent_relay_outbox_uncertain_total") == 4
    delivered = [e for e in logs if e["event"] == "outbox_delivered"]
    assert len(delivered) == 4 and all(e["maybe_twice"] and e["uncertain_attempts"] == 1 for e in delivered)


async def test_a_graceful_stop_gives_back_the_fenced_copies_it_did_not_send_as_not_begun(store: Store) -> None:
    time = Clocked(10_000)
    up = GatedUpstream(config=UpstreamConfig(timeout=5, pool_size=1))
    w = worker(store, up, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(3)], now=time.t)
    running = asyncio.create_task(w.run())
    await asyncio.wait_for(up.all_in.wait(), 10)  # the claim fenced, its first copy at the upstream
    stopping = asyncio.create_task(w.stop(5))
    await asyncio.sleep(0)
    up.gate.set()
    await stopping
    await running
    assert up.sent == [("o@shop.example", ("r0@x.nl",))] and await store.outbox.depth() == 2
    heir_up, metrics = FakeUpstream(), Metrics()
    heir = OutboxWorker(store.outbox, heir_up, CONFIG, metrics, time.clock())  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        assert await heir.run_once() == 2  # given back at once, not after the lease
    assert [r for _, (r,) in heir_up.sent] == ["r1@x.nl", "r2@x.nl"]
    assert not [e for e in logs if e["event"] == "outbox_maybe_delivered" or e.get("maybe_twice")]
    assert metrics.registry.get_sample_value("consent_relay_outbox_uncertain_total") == 0


async def test_when_the_upstream_goes_away_during_a_large_claim_the_rest_is_given_back_not_deferred(store: Store) -> None:
    time = Clocked(10_000)
    up = FakeUpstream(config=UpstreamConfig(timeout=5, pool_size=2))  # 3 copies a lane at the 5 s timeout
    w = worker(store, up, time)
    await store.outbox.enqueue([copy((f"r{i}@x.nl",)) for i in range(40)], now=time.t)
    assert await w.run_once() == 6  # delivered at once: the next claim takes 10 copies a lane
    up.answers = [UpstreamUnavailable("down")] * 40
    with structlog.testing.capture_logs() as logs:
        assert await w.run_once() == 20
    assert w.upstream_away and len(up.sent) == 6 + AWAY_AFTER  # away after 10: the other 10 were not tried
    assert [e["copies"] for e in logs if e["event"] == "outbox_released"] == [20 - AWAY_AFTER]
    # Given back at once and not marked as begun: another holder may take them, none of them uncertain.
    again = await store.outbox.claim_due(now=time.t, owner="other", lease_seconds=15, limit=100)
    assert len(again) == 40 - 6 - AWAY_AFTER and not any(c.interrupted_send for c in again)
    assert sum(c.attempts for c in again) == 0  # the 10 deferred ones wait for their back-off
    assert w.batch == 6  # and the next claim is a small one again


async def test_a_copy_not_sent_whose_write_failed_is_given_back_as_not_begun(store: Store) -> None:
    # The claim's fence marked it begun; it was deferred at RCPT, and the store refused the write
    # that says so. Its claim gives it back with its fence undone: no "maybe delivered" later.
    time = Clocked(10_000)
    up = FakeUpstream([UpstreamUnavailable("450 mailbox busy")])
    w = worker(store, up, time)
    await store.outbox.enqueue([copy()], now=time.t)
    retry_later = store.outbox.retry_later

    async def failing(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("store write lock timed out")

    store.outbox.retry_later = failing  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await w.run_once()
    store.outbox.retry_later = retry_later  # type: ignore[method-assign]
    time.t += CONFIG.lease_seconds  # whether given back at once or after its lease
    (again,) = await store.outbox.claim_due(now=time.t, owner="other", lease_seconds=15, limit=10)
    assert not again.interrupted_send and again.uncertain == 0
