"""The store interface, exercised through relay.store.base only so the same tests run against every
backend: SQLite here, PostgreSQL too once relay/store/postgres.py exists."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from policies.facts import ConsentRecord, Suppression
from relay.config import StoreConfig
from relay.errors import StoreUnavailable
from relay.store import open_store_for
from relay.store.base import Store
from relay.store.records import AccountState, AuditEntry, DecisionRecord, DeliveryRecord, OutboxItem, QuarantineItem
from tests.relay.store.backends import any_store  # noqa: F401  (a fixture)

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
@pytest.fixture
def store(any_store: Store) -> Store:
    """Every contract test runs on every backend (tests/relay/store/backends.py)."""
    return any_store

def item(relay_id: str = "r1", rcpts: tuple[str, ...] = ("a@x.nl",), **changes: Any) -> OutboxItem:
    values: dict[str, Any] = dict(
        relay_id=relay_id, account="shop", stream="orders", mail_from="o@shop.example", rcpt_tos=rcpts, content=b"msg\r\n"
    )
    values.update(changes)
    return OutboxItem(**values)


async def test_sqlite_file_wal_and_migrations_rerun_safely(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new/dir/relay.db"
    for _ in range(2):  # created on first open, migrated once, reopened without error
        s = open_store_for(StoreConfig(url=url))
        await s.open()
        await s.ping()
        await s.close()
    db = tmp_path / "new" / "dir" / "relay.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    finally:
        conn.close()


async def test_unopened_or_closed_store_is_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.accounts.get("shop")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.open()
    await store.ping()


async def test_account_state_read_on_the_loop_sees_every_commit_at_once(tmp_path: Path) -> None:
    # The MAIL FROM lookup skips aiosqlite's thread; it must still see another process's change
    # (a CLI pause, a second worker) on the very next read, and fall back when it cannot read.
    url = f"sqlite:///{tmp_path}/relay.db"
    relay_side, other_process = open_store_for(StoreConfig(url=url)), open_store_for(StoreConfig(url=url))
    await relay_side.open()
    await other_process.open()
    try:
        assert (await relay_side.accounts.get("shop")).state == "active"
        await other_process.accounts.set(AccountState("shop", "paused", "complaint rate"), actor="cli", note="")
        assert (await relay_side.accounts.get("shop")).state == "paused"
        db = relay_side.db  # type: ignore[attr-defined]
        db._point.close()  # a broken point reader: the threaded reader answers instead
        assert (await relay_side.accounts.get("shop")).reason == "complaint rate"
    finally:
        await relay_side.close()
        await other_process.close()


async def test_recipient_lookup_reads_on_the_loop_sees_every_commit_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lookup of every recipient skips aiosqlite's thread too (issue 20): an unsubscribe written by
    # another process counts on the very next RCPT, and a broken loop reader costs speed, not answers.
    url = f"sqlite:///{tmp_path}/relay.db"
    relay_side, other_process = open_store_for(StoreConfig(url=url)), open_store_for(StoreConfig(url=url))
    await relay_side.open()
    await other_process.open()
    db = relay_side.db  # type: ignore[attr-defined]
    threaded: list[str] = []
    real = db._reader.execute_fetchall

    async def counted(sql: str, params: Any = ()) -> Any:
        threaded.append(sql)
        return await real(sql, params)

    monkeypatch.setattr(db._reader, "execute_fetchall", counted)
    try:
        record = ConsentRecord(email="a@x.nl", scope="shop", basis="double_opt_in", collected_at=NOW)
        await other_process.consent.upsert_consents([record], now=NOW)
        consents, suppressions = await relay_side.consent.find_consents_and_suppressions(["shop"], ["a@x.nl"])
        assert [r.basis for r in consents["a@x.nl"]] == ["double_opt_in"] and suppressions == {}
        await other_process.consent.add_suppression(Suppression("a@x.nl", "shop", "*", "suppression.unsubscribed", "page", NOW))
        _, suppressions = await relay_side.consent.find_consents_and_suppressions(["shop"], ["a@x.nl"])
        assert [s.via for s in suppressions["a@x.nl"]] == ["page"]
        assert threaded == []  # both answered on the loop
        many = [f"u{i}@x.nl" for i in range(100)]  # longer than a message's few recipients: the thread reads
        assert await relay_side.consent.find_consents_and_suppressions(["shop"], many) == ({}, {})
        assert len(threaded) == 1
        db._point.close()  # a broken loop reader: the threaded reader answers instead
        consents, suppressions = await relay_side.consent.find_consents_and_suppressions(["shop"], ["a@x.nl"])
        assert list(consents) == list(suppressions) == ["a@x.nl"] and len(threaded) == 2
    finally:
        await relay_side.close()
        await other_process.close()


async def test_unwritable_location_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = open_store_for(StoreConfig(url=f"sqlite:///{blocker}/relay.db"))
    with pytest.raises(StoreUnavailable):
        await s.open()


async def test_account_state_and_its_audit(store: Store) -> None:
    assert (await store.accounts.get("shop")).state == "active"
    await store.accounts.set(AccountState("shop", "paused", "review", frozenset({"newsletter"})), actor="alice", note="review")
    state = await store.accounts.get("shop")
    assert (state.state, state.reason, state.paused_streams) == ("paused", "review", frozenset({"newsletter"}))
    assert state.updated_at is not None
    await store.accounts.set(AccountState("shop"), actor="bob", note="ok")
    assert [s.state for s in await store.accounts.all()] == ["active"]
    audit = await store.audit.list(target="shop")
    assert [(a.actor, a.action, a.note) for a in audit] == [("bob", "account.active", "ok"), ("alice", "account.paused", "review")]


async def test_outbox_enqueue_claim_lease_and_finish(store: Store) -> None:
    outbox = store.outbox
    ids = await outbox.enqueue([item("r1"), item("r2", ("b@x.nl", "c@x.nl"))], now=1000.0)
    assert len(ids) == 2 and await outbox.depth() == 2
    claimed = await outbox.claim_due(now=1000.0, owner="A", lease_seconds=60, limit=10)
    assert [c.rcpt_tos for c in claimed] == [("a@x.nl",), ("b@x.nl", "c@x.nl")]
    assert claimed[0].content == b"msg\r\n" and claimed[0].created_at == 1000.0
    # Leased to A: nobody else gets them until the lease runs out (a killed process's lease expires).
    assert await outbox.claim_due(now=1001.0, owner="B", lease_seconds=60, limit=10) == []
    again = await outbox.claim_due(now=1061.0, owner="B", lease_seconds=60, limit=10)
    assert len(again) == 2
    await outbox.delivered(again[0].id, "A")  # A lost its lease: its late answer changes nothing
    assert await outbox.depth() == 2
    await outbox.delivered(again[0].id, "B")
    await outbox.retry_later(again[1].id, "B", next_attempt_at=2000.0, error="450 busy")
    assert await outbox.depth() == 1
    assert await outbox.claim_due(now=1999.0, owner="C", lease_seconds=60, limit=10) == []
    (later,) = await outbox.claim_due(now=2000.0, owner="C", lease_seconds=60, limit=10)
    assert later.attempts == 1 and later.last_error == "450 busy"
    await outbox.give_up(later.id, "C", error="gave up")
    assert await outbox.depth() == 0
    assert await outbox.claim_due(now=99999.0, owner="D", lease_seconds=60, limit=10) == []


async def test_outbox_claim_respects_limit_and_order(store: Store) -> None:
    await store.outbox.enqueue([item(f"r{i}", next_attempt_at=1000.0 - i) for i in range(5)], now=1000.0)
    first = await store.outbox.claim_due(now=1000.0, owner="A", lease_seconds=60, limit=2)
    assert [c.relay_id for c in first] == ["r4", "r3"]  # most overdue first


async def test_decisions_and_deliveries(store: Store) -> None:
    decision = DecisionRecord(
        relay_id="r1", outcome="delivered", created_at=NOW, message_id="<m@x>", account="shop", stream="orders",
        mail_from="o@shop.example", recipients=("a@x.nl", "b@x.nl"), rules=("identity.no_reply",),
        findings=({"rule": "identity.no_reply", "action": "monitor", "detail": "d", "evidence": "", "recipient": None},),
    )
    first = await store.decisions.reserve_ids("deliveries", 10)
    second = await store.decisions.reserve_ids("deliveries", 10)
    assert second == first + 10
    delivery = DeliveryRecord(first, "r1", "shop", "orders", "a@x.nl", "delivered", NOW, message_id="<m@x>")
    await store.decisions.record([decision], [delivery])
    (got,) = await store.decisions.for_relay_id("r1")
    assert got.recipients == ("a@x.nl", "b@x.nl") and got.rules == ("identity.no_reply",) and got.created_at == NOW
    assert got.findings[0]["rule"] == "identity.no_reply"
    assert (await store.decisions.delivery(first)) == delivery
    assert [d.id for d in await store.decisions.deliveries_to("a@x.nl", ["shop"])] == [first]
    assert [d.email for d in await store.decisions.deliveries_by_message_id("<m@x>")] == ["a@x.nl"]


async def test_consent_and_suppressions(store: Store) -> None:
    record = ConsentRecord(email="a@x.nl", scope="shop", topic="*", basis="double_opt_in", source="signup_form", collected_at=NOW)
    assert await store.consent.upsert_consents([record], now=NOW) == (1, 0)
    assert await store.consent.upsert_consents([record], now=NOW) == (0, 1)
    found = await store.consent.find_consents(["shop", "holding"], ["a@x.nl", "b@x.nl"])
    assert list(found) == ["a@x.nl"] and found["a@x.nl"][0].basis == "double_opt_in"
    assert await store.consent.count() == 1
    assert await store.consent.revoke("shop", "a@x.nl", None, via="admin", at=NOW) == 1
    assert (await store.consent.find_consents(["shop"], ["a@x.nl"]))["a@x.nl"][0].revoked_at == NOW
    assert await store.consent.add_suppression(Suppression("a@x.nl", "shop", "*", "unsubscribed", "one-click", NOW))
    assert not await store.consent.add_suppression(Suppression("a@x.nl", "shop", "*", "unsubscribed", "one-click", NOW))
    assert list(await store.consent.find_suppressions(["shop"], ["a@x.nl"])) == ["a@x.nl"]
    assert await store.consent.remove_suppression("shop", "a@x.nl") == 1


async def test_quarantine_hold_list_release(store: Store) -> None:
    held = QuarantineItem(
        id="Q1", relay_id="r1", account="shop", stream="newsletter", mail_from="o@shop.example", rcpt_tos=("a@x.nl",),
        subject="Hi", rules=("content.adult",), findings=(), size=5, received_at=NOW, content=b"hello",
    )
    await store.quarantine.hold(held)
    assert (await store.quarantine.get("Q1", with_content=True)).content == b"hello"  # type: ignore[union-attr]
    items, cursor = await store.quarantine.list(rule="content.adult")
    assert [i.id for i in items] == ["Q1"] and cursor is None
    assert await store.quarantine.count() == 1
    assert await store.quarantine.set_status("Q1", "released", AuditEntry("alice", "quarantine.release", "Q1"))
    assert not await store.quarantine.set_status("Q1", "deleted", AuditEntry("alice", "quarantine.delete", "Q1"))
    assert await store.quarantine.get("Q1") is None
    assert await store.quarantine.purge_older_than(NOW + timedelta(days=1), "purger") == 0


async def test_rate_buckets(store: Store) -> None:
    assert [await store.rates.take("shop", rate_per_minute=2, now=100.0) for _ in range(3)] == [True, True, False]
    assert await store.rates.take("shop", rate_per_minute=2, now=130.0)  # one token back after 30 s
