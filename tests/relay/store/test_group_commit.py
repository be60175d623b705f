"""Group commit: single-statement writes of concurrent callers share one transaction (SQLite: and one
hand-off to the writer's thread, `SqliteDatabase._grouped`; PostgreSQL: the rows of concurrent
`insert_at_once` calls in one statement), while each caller still waits for its own rows to be
committed and gets its own error."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiosqlite.core
import pytest

from relay.errors import StoreUnavailable
from relay.store.base import Store
from relay.store.records import DecisionRecord, DeliveryRecord
from relay.store.sqlite import SqliteStore
from tests.relay.store.backends import any_store  # noqa: F401  (a fixture)

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "relay.db", timeout=0.5)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class Counted:
    """Hand-offs to the writer's thread and the COMMITs it ran, from now on."""

    def __init__(self) -> None:
        self.handoffs = 0
        self.commits = 0

    @classmethod
    async def start(cls, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> Counted:
        self = cls()
        writer = store.db._writer
        assert writer is not None
        await writer.set_trace_callback(self._trace)
        original = aiosqlite.core.Connection._execute

        async def counted(conn: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            if conn is writer:
                self.handoffs += 1
            return await original(conn, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
        return self

    def _trace(self, sql: str) -> None:
        self.commits += sql == "COMMIT"


def message(n: int) -> tuple[list[DecisionRecord], list[DeliveryRecord]]:
    relay_id = f"r{n}"
    return (
        [DecisionRecord(relay_id, "delivered", NOW, f"<{relay_id}@x>", "shop", "news", "o@shop", (f"u{n}@x.nl",))],
        [DeliveryRecord(n, relay_id, "shop", "news", f"u{n}@x.nl", "delivered", NOW, f"<{relay_id}@x>")],
    )


async def test_concurrent_records_share_one_transaction_and_one_handoff(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = await Counted.start(store, monkeypatch)
    await asyncio.gather(*(store.decisions.record(*message(n)) for n in range(1, 21)))
    # Every caller's rows are committed when its await returns.
    for n in range(1, 21):
        assert [d.relay_id for d in await store.decisions.for_relay_id(f"r{n}")] == [f"r{n}"]
        assert (await store.decisions.delivery(n)) == message(n)[1][0]
    assert counted.commits == 1 and counted.handoffs == 1


async def test_concurrent_records_are_each_committed_on_every_backend(any_store: Store) -> None:
    await asyncio.gather(*(any_store.decisions.record(*message(n)) for n in range(1, 21)))
    for n in range(1, 21):
        assert [d.relay_id for d in await any_store.decisions.for_relay_id(f"r{n}")] == [f"r{n}"]
        assert (await any_store.decisions.delivery(n)) == message(n)[1][0]


async def test_a_bad_record_fails_its_caller_alone_on_every_backend(any_store: Store) -> None:
    bad_decisions, bad_deliveries = message(2)
    bad = [dataclasses.replace(bad_decisions[0], relay_id=None)]  # NOT NULL
    results = await asyncio.gather(
        any_store.decisions.record(*message(1)),
        any_store.decisions.record(bad, bad_deliveries),
        any_store.decisions.record(*message(3)),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None and isinstance(results[1], StoreUnavailable), results
    assert len(await any_store.decisions.for_relay_id("r1")) == 1 and len(await any_store.decisions.for_relay_id("r3")) == 1
    assert await any_store.decisions.delivery(2) is None  # none of the failed caller's rows


async def test_one_delivery_written_by_two_concurrent_callers_keeps_the_later(any_store: Store) -> None:
    decisions, (first,) = message(1)
    later = dataclasses.replace(first, status="deferred")
    results = await asyncio.gather(
        any_store.decisions.record(decisions, [first]), any_store.decisions.record([], [later]), return_exceptions=True
    )
    assert results == [None, None]
    assert await any_store.decisions.delivery(1) == later


async def test_a_lone_write_is_one_handoff(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = await Counted.start(store, monkeypatch)
    await store.decisions.record(*message(1))
    assert await store.db.write("UPDATE id_blocks SET next_id = next_id WHERE name = 'none'") == 0
    assert counted.handoffs == 2 and counted.commits == 2


async def test_a_failing_write_fails_its_caller_alone(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.db.write("CREATE TABLE picky (v INTEGER NOT NULL)")
    counted = await Counted.start(store, monkeypatch)
    results = await asyncio.gather(
        store.decisions.record(*message(1)),
        store.db.write("INSERT INTO picky (v) VALUES (1)"),
        store.db.write("INSERT INTO picky (v) VALUES (NULL)"),  # NOT NULL: this caller fails
        store.db.write_returning("INSERT INTO picky (v) VALUES (3) RETURNING v"),
        store.decisions.record(*message(2)),
        return_exceptions=True,
    )
    assert results[0] is None and results[1] == 1 and [tuple(r) for r in results[3]] == [(3,)] and results[4] is None
    assert isinstance(results[2], StoreUnavailable) and "NOT NULL" in str(results[2])
    assert [tuple(r) for r in await store.db.fetchall("SELECT v FROM picky ORDER BY v")] == [(1,), (3,)]
    assert len(await store.decisions.for_relay_id("r1")) == 1 and len(await store.decisions.for_relay_id("r2")) == 1
    # The failed transaction was rolled back and the others committed again, in the same hand-off.
    assert counted.handoffs == 1 and counted.commits == 1


async def test_a_failed_commit_fails_every_caller_of_that_transaction_and_keeps_none_of_its_rows(
    store: SqliteStore,
) -> None:
    # A deferred foreign key is checked at COMMIT: the whole transaction fails there, not at a statement.
    await store.db.write("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    await store.db.write("CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    results = await asyncio.gather(
        store.decisions.record(*message(1)),
        store.db.write("INSERT INTO child (p) VALUES (99)"),
        store.decisions.record(*message(2)),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert await store.decisions.for_relay_id("r1") == [] and await store.decisions.for_relay_id("r2") == []
    # The next group is not affected.
    await store.decisions.record(*message(3))
    assert len(await store.decisions.for_relay_id("r3")) == 1


async def test_writes_commit_in_the_order_they_were_made(store: SqliteStore) -> None:
    await store.db.write("CREATE TABLE acc (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    await store.db.write("INSERT INTO acc VALUES ('x', 1)")
    ops = [("UPDATE acc SET v = v * 10 WHERE k = 'x'",), ("UPDATE acc SET v = v + 2 WHERE k = 'x'",)] * 3
    await asyncio.gather(*(store.db.write(*op) for op in ops))
    assert (await store.db.fetchone("SELECT v FROM acc"))[0] == ((((1 * 10 + 2) * 10) + 2) * 10) + 2
    # Blocks reserved concurrently do not overlap and follow the calls' order.
    starts = await asyncio.gather(*(store.decisions.reserve_ids("deliveries", 100) for _ in range(10)))
    assert starts == sorted(starts) and len(set(starts)) == 10 and starts[-1] - starts[0] == 900


async def holding_the_write_lock(store: SqliteStore) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A transaction of this process that holds the writer until the returned event is set."""
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with store.db.transaction() as tx:
            await tx.execute("UPDATE id_blocks SET next_id = next_id")
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    return holder, release


async def test_a_held_write_lock_times_out_the_waiting_writes(store: SqliteStore) -> None:
    holder, release = await holding_the_write_lock(store)
    started = time.monotonic()
    results = await asyncio.gather(store.decisions.record(*message(1)), store.decisions.record(*message(2)), return_exceptions=True)
    assert time.monotonic() - started < 2.0
    assert all(isinstance(r, StoreUnavailable) and "lock timed out" in str(r) for r in results), results
    release.set()
    await holder
    await store.decisions.record(*message(3))
    assert await store.decisions.for_relay_id("r1") == [] and len(await store.decisions.for_relay_id("r3")) == 1


async def test_each_write_waits_for_the_lock_its_own_timeout(store: SqliteStore) -> None:
    holder, release = await holding_the_write_lock(store)
    early = asyncio.create_task(store.decisions.record(*message(1)))
    await asyncio.sleep(0.3)  # of the store's 0.5 s
    late = asyncio.create_task(store.decisions.record(*message(2)))
    with pytest.raises(StoreUnavailable, match="lock timed out"):
        await early
    assert not late.done()  # 0.2 s of its own wait left
    release.set()
    await holder
    await late
    assert await store.decisions.for_relay_id("r1") == [] and len(await store.decisions.for_relay_id("r2")) == 1


async def test_another_process_holding_the_file_fails_the_group_without_blocking_the_loop(
    store: SqliteStore, tmp_path: Path
) -> None:
    blocker = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        results = await asyncio.gather(*(store.decisions.record(*message(n)) for n in (1, 2, 3)), return_exceptions=True)
        ticker.cancel()
        # busy_timeout (0.5 s) waited on the writer's thread; the loop ran on meanwhile.
        assert ticks >= 10
        assert all(isinstance(r, StoreUnavailable) and "locked" in str(r) for r in results), results
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    await store.decisions.record(*message(4))
    assert len(await store.decisions.for_relay_id("r4")) == 1 and await store.decisions.for_relay_id("r1") == []


async def test_a_caller_cancelled_before_its_group_leaves_nothing_behind(store: SqliteStore) -> None:
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with store.db.transaction():
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    kept = asyncio.create_task(store.decisions.record(*message(1)))
    dropped = asyncio.create_task(store.decisions.record(*message(2)))
    await asyncio.sleep(0.01)  # both wait behind the held lock
    dropped.cancel()
    release.set()
    await holder
    await kept
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert len(await store.decisions.for_relay_id("r1")) == 1 and await store.decisions.for_relay_id("r2") == []


async def test_close_commits_the_writes_already_waiting(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db", timeout=5)
    await store.open()
    writes = [asyncio.ensure_future(store.decisions.record(*message(n))) for n in (1, 2)]
    await asyncio.sleep(0)  # queued, the committer not yet through
    await store.close()
    await asyncio.gather(*writes)
    again = SqliteStore(tmp_path / "relay.db", timeout=5)
    await again.open()
    try:
        assert len(await again.decisions.for_relay_id("r1")) == 1 and len(await again.decisions.for_relay_id("r2")) == 1
    finally:
        await again.close()


# --- transactions with statements in between (`SqliteDatabase.transaction`) ----------------------


async def test_a_transaction_sends_its_begin_with_its_first_statement(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = await Counted.start(store, monkeypatch)
    async with store.db.transaction() as tx:
        await tx.execute("INSERT INTO id_blocks (name, next_id) VALUES ('a', 1)")
        assert [tuple(r) for r in await tx.fetchall("SELECT next_id FROM id_blocks WHERE name = 'a'")] == [(1,)]
    assert counted.handoffs == 3 and counted.commits == 1  # statement + BEGIN, statement, COMMIT
    async with store.db.transaction():
        pass  # nothing to begin or commit
    assert counted.handoffs == 3 and counted.commits == 1


async def test_a_begin_that_fails_keeps_every_statement_of_the_transaction_out(store: SqliteStore, tmp_path: Path) -> None:
    blocker = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            async with store.db.transaction() as tx:
                try:
                    await tx.execute("INSERT INTO id_blocks (name, next_id) VALUES ('a', 1)")
                except sqlite3.Error:
                    pass  # a body that carries on must not write outside the transaction
                await tx.execute("INSERT INTO id_blocks (name, next_id) VALUES ('b', 1)")
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert await store.db.fetchall("SELECT name FROM id_blocks WHERE name IN ('a', 'b')") == []


async def test_a_failing_statement_rolls_the_whole_transaction_back(store: SqliteStore) -> None:
    with pytest.raises(StoreUnavailable, match="UNIQUE"):
        async with store.db.transaction() as tx:
            await tx.execute("INSERT INTO id_blocks (name, next_id) VALUES ('a', 1)")
            await tx.execute("INSERT INTO id_blocks (name, next_id) VALUES ('a', 2)")
    assert await store.db.fetchall("SELECT name FROM id_blocks WHERE name = 'a'") == []
    async with store.db.transaction() as tx:  # the writer is usable again
        await tx.execute("INSERT INTO id_blocks (name, next_id) VALUES ('a', 3)")
    assert [tuple(r) for r in await store.db.fetchall("SELECT next_id FROM id_blocks WHERE name = 'a'")] == [(3,)]
