"""The store contract, run against both backends: SQLite (a temp file) and PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import sqlite3
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import asyncpg
import pytest

from policies.facts import ConsentRecord, Suppression
from relay.errors import StoreUnavailable
from relay.store import schema, tables
from relay.store.base import Store
from relay.store.complaints_base import ACKNOWLEDGED, INFORMATIONAL, OPEN, Complaint, RejectedReport
from relay.store.postgres import PostgresStore
from relay.store.records import (
    AccountState,
    AuditEntry,
    DecisionRecord,
    DeliveryRecord,
    OutboxItem,
    QuarantineItem,
)
from relay.store.sql import POSTGRES, SQLITE
from relay.store.sqlite import SqliteStore

# CI and this machine run PostgreSQL at 127.0.0.1:5432 with trust auth and a database `test`.
PG_URL = os.environ.get("RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Backend:
    """Makes unopened stores that all share one database: separate instances act as separate hosts."""

    kind: str
    make: Callable[[], Store]
    version: Callable[[], Awaitable[int]]  # schema_version as the database has it
    run: Callable[[Sequence[str]], Awaitable[None]]  # raw statements, as an older release's store ran them


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "relay.db"

        async def sqlite_version() -> int:
            with sqlite3.connect(path) as conn:
                return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])

        async def sqlite_run(statements: Sequence[str]) -> None:
            with sqlite3.connect(path) as conn:
                for statement in statements:
                    conn.execute(statement)

        yield Backend("sqlite", lambda: SqliteStore(path, 5.0), sqlite_version, sqlite_run)
        return
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={name}"

        async def pg_version() -> int:
            return int(await admin.fetchval(f'SELECT version FROM "{name}".schema_version'))

        async def pg_run(statements: Sequence[str]) -> None:
            conn = await asyncpg.connect(url)
            try:
                async with conn.transaction():
                    for statement in statements:
                        await conn.execute(statement)
            finally:
                await conn.close()

        yield Backend("postgresql", lambda: PostgresStore(url, 5.0), pg_version, pg_run)
    finally:
        await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
        await admin.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def second(backend: Backend, store: Store) -> AsyncIterator[Store]:
    """Another instance on the same database (another host, for PostgreSQL)."""
    s = backend.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def consent(email: str, scope: str = "shop", topic: str = "*", **kw: object) -> ConsentRecord:
    return ConsentRecord(email=email, scope=scope, topic=topic, collected_at=T0, source_url="https://shop/x", **kw)  # type: ignore[arg-type]


def content_of(record: ConsentRecord) -> ConsentRecord:
    return replace(record, id="", created_at=None, updated_at=None)


# --- accounts --------------------------------------------------------------------------------


async def test_account_state_defaults_sets_and_audits(store: Store) -> None:
    assert await store.accounts.get("acme") == AccountState("acme")
    await store.accounts.set(
        AccountState("acme", "paused", "complaints", frozenset({"news", "promo"})), actor="ops", note="too many"
    )
    await store.accounts.set(AccountState("beta", "suspended", "spam trap"), actor="ops", note="")
    got = await store.accounts.get("acme")
    assert (got.state, got.reason, got.paused_streams) == ("paused", "complaints", frozenset({"news", "promo"}))
    assert got.updated_at is not None and got.updated_at.tzinfo is not None
    await store.accounts.set(AccountState("acme", "active"), actor="ops", note="resolved")
    assert [(a.account, a.state, a.paused_streams) for a in await store.accounts.all()] == [
        ("acme", "active", frozenset()),
        ("beta", "suspended", frozenset()),
    ]
    audit = await store.audit.list(target="acme")
    assert [(e.actor, e.action, e.note, e.detail) for e in audit] == [
        ("ops", "account.active", "resolved", {"state": "active"}),
        ("ops", "account.paused", "too many", {"state": "paused"}),
    ]


# --- consent ---------------------------------------------------------------------------------


async def test_find_consents_by_scopes_and_many_emails(store: Store) -> None:
    records = [
        consent("a@x.nl", "shop"),
        consent("a@x.nl", "group", "news"),
        consent("a@x.nl", "other"),
        consent("b@x.nl", "shop", revoked_at=T0, revoked_via="page"),
        consent("c@x.nl", "shop"),
    ] + [consent(f"bulk{i}@x.nl") for i in range(1200)]
    assert await store.consent.upsert_consents(records, now=T0) == (len(records), 0)
    emails = ["a@x.nl", "b@x.nl", "a@x.nl", "nobody@x.nl"] + [f"bulk{i}@x.nl" for i in range(1200)]
    found = await store.consent.find_consents(["shop", "group"], emails)
    assert set(found) == {"a@x.nl", "b@x.nl"} | {f"bulk{i}@x.nl" for i in range(1200)}
    assert sorted((r.scope, r.topic) for r in found["a@x.nl"]) == [("group", "news"), ("shop", "*")]
    assert found["b@x.nl"][0].revoked_at == T0 and found["b@x.nl"][0].revoked_via == "page"
    record = found["bulk7@x.nl"][0]
    assert content_of(record) == content_of(consent("bulk7@x.nl"))
    assert record.id and record.created_at == T0 and record.updated_at == T0
    assert await store.consent.find_consents(["shop"], []) == {}
    assert await store.consent.count() == len(records)


@pytest.mark.parametrize("bulk", [3, 600])  # a message's few recipients; a list longer than one read on the loop
async def test_consents_and_suppressions_in_one_lookup_answer_as_the_two_finds(store: Store, bulk: int) -> None:
    records = [
        consent("a@x.nl", "shop", confirmed_at=T0, last_purchase_at=T0 + timedelta(1), prechecked=True),
        consent("a@x.nl", "group", "news", frequency_disclosed=True),
        consent("a@x.nl", "other"),
        consent("b@x.nl", "shop", revoked_at=T0, revoked_via="page"),
    ] + [consent(f"bulk{i}@x.nl") for i in range(bulk)]
    await store.consent.upsert_consents(records, now=T0)
    await store.consent.add_suppression(Suppression("a@x.nl", "shop", "*", "suppression.unsubscribed", "one_click", T0))
    await store.consent.add_suppression(Suppression("a@x.nl", "group", "news", "suppression.complaint", "complaint", T0))
    await store.consent.add_suppression(Suppression("c@x.nl", "shop", "*", "suppression.bounced", "", T0))
    await store.consent.add_suppression(Suppression("bulk1@x.nl", "other", "*", "suppression.unsubscribed", "page", T0))
    scopes = ["shop", "group"]
    emails = ["a@x.nl", "b@x.nl", "c@x.nl", "a@x.nl", "nobody@x.nl"] + [f"bulk{i}@x.nl" for i in range(bulk)]
    consents, suppressions = await store.consent.find_consents_and_suppressions(scopes, emails)
    assert consents == await store.consent.find_consents(scopes, emails)
    assert suppressions == await store.consent.find_suppressions(scopes, emails)
    assert [(r.scope, r.prechecked, r.last_purchase_at) for r in consents["a@x.nl"]] == [("shop", True, T0 + timedelta(1)), ("group", False, None)]
    assert sorted(s.reason for s in suppressions["a@x.nl"]) == ["suppression.complaint", "suppression.unsubscribed"]
    assert set(suppressions) == {"a@x.nl", "c@x.nl"} and len(consents) == 2 + bulk
    assert await store.consent.find_consents_and_suppressions(scopes, []) == ({}, {})


async def test_upsert_counts_written_and_unchanged_and_keeps_created_at(store: Store) -> None:
    first = [consent("a@x.nl"), consent("b@x.nl", prechecked=True), consent("c@x.nl", "shop", "news")]
    assert await store.consent.upsert_consents(first, now=T0) == (3, 0)
    later = T0 + timedelta(days=1)
    assert await store.consent.upsert_consents(first, now=later) == (0, 3)
    changed = [first[0], replace(first[1], prechecked=False, source_ip="192.0.2.1"), first[2]]
    assert await store.consent.upsert_consents(iter(changed), now=later) == (1, 2)
    got = (await store.consent.find_consents(["shop"], ["b@x.nl"]))["b@x.nl"][0]
    assert (got.prechecked, got.source_ip, got.created_at, got.updated_at) == (False, "192.0.2.1", T0, later)
    unchanged = (await store.consent.find_consents(["shop"], ["a@x.nl"]))["a@x.nl"][0]
    assert unchanged.updated_at == T0  # an identical re-import leaves the row alone
    assert await store.consent.count() == 3


async def test_upsert_repeated_key_in_one_call_applies_in_order(store: Store) -> None:
    a = consent("a@x.nl")
    assert await store.consent.upsert_consents([a, a], now=T0) == (1, 1)
    b = replace(a, source_ip="192.0.2.9")
    assert await store.consent.upsert_consents([b, a, b], now=T0) == (3, 0)
    got = (await store.consent.find_consents(["shop"], ["a@x.nl"]))["a@x.nl"]
    assert [r.source_ip for r in got] == ["192.0.2.9"]


async def test_upsert_streams_a_large_iterable_in_one_transaction(store: Store) -> None:
    def many() -> Iterator[ConsentRecord]:
        for i in range(12_000):
            yield consent(f"u{i}@x.nl")

    assert await store.consent.upsert_consents(many(), now=T0) == (12_000, 0)
    assert await store.consent.count() == 12_000

    def failing() -> Iterator[ConsentRecord]:
        for i in range(12_000):
            yield consent(f"new{i}@x.nl")
        raise ValueError("bad row 12001")

    with pytest.raises(ValueError):
        await store.consent.upsert_consents(failing(), now=T0)
    assert await store.consent.count() == 12_000  # nothing of the failed import stayed


async def test_revoke_by_topic_and_all(store: Store) -> None:
    await store.consent.upsert_consents(
        [consent("a@x.nl", topic="news"), consent("a@x.nl", topic="promo"), consent("a@x.nl", "other")], now=T0
    )
    at = T0 + timedelta(hours=1)
    assert await store.consent.revoke("shop", "a@x.nl", "news", via="one_click", at=at) == 1
    assert await store.consent.revoke("shop", "a@x.nl", "news", via="one_click", at=at) == 0
    assert await store.consent.revoke("shop", "a@x.nl", None, via="page", at=at + timedelta(1)) == 1
    found = {r.topic: r for r in (await store.consent.find_consents(["shop"], ["a@x.nl"]))["a@x.nl"]}
    assert (found["news"].revoked_at, found["news"].revoked_via) == (at, "one_click")
    assert (found["promo"].revoked_at, found["promo"].revoked_via) == (at + timedelta(1), "page")
    assert found["promo"].updated_at == at + timedelta(1)
    other = (await store.consent.find_consents(["other"], ["a@x.nl"]))["a@x.nl"][0]
    assert other.revoked_at is None


async def test_touch_extends_live_consents_only(store: Store) -> None:
    await store.consent.upsert_consents(
        [consent("a@x.nl"), consent("a@x.nl", "group"), consent("a@x.nl", "gone", revoked_at=T0)], now=T0
    )
    bought = T0 + timedelta(days=10)
    assert await store.consent.touch(["shop", "group", "gone"], "a@x.nl", "purchase", bought) == 2
    # An older click must not move last_interaction_at backwards.
    assert await store.consent.touch(["shop"], "a@x.nl", "click", T0 + timedelta(days=5)) == 1
    assert await store.consent.touch(["shop"], "a@x.nl", "confirmation", T0 + timedelta(days=3)) == 1
    got = {r.scope: r for r in (await store.consent.find_consents(["shop", "group", "gone"], ["a@x.nl"]))["a@x.nl"]}
    assert got["shop"].last_purchase_at == bought
    assert got["shop"].last_interaction_at == bought
    assert got["shop"].confirmed_at == T0 + timedelta(days=3)
    assert got["group"].last_purchase_at == bought
    assert got["gone"].last_purchase_at is None
    assert await store.consent.touch(["shop"], "nobody@x.nl", "click", bought) == 0


@pytest.mark.parametrize(("kind", "field"), [("purchase", "last_purchase_at"), ("confirmation", "confirmed_at")])
async def test_touch_with_an_earlier_time_never_moves_a_stamp_backwards(store: Store, kind: str, field: str) -> None:
    await store.consent.upsert_consents([consent("a@x.nl")], now=T0)
    later, earlier = T0 + timedelta(days=20), T0 + timedelta(days=2)
    assert await store.consent.touch(["shop"], "a@x.nl", kind, later) == 1
    assert await store.consent.touch(["shop"], "a@x.nl", kind, earlier) == 1  # reported late: still counted
    (got,) = (await store.consent.find_consents(["shop"], ["a@x.nl"]))["a@x.nl"]
    assert (getattr(got, field), got.last_interaction_at) == (later, later)
    # A later one still moves it on.
    assert await store.consent.touch(["shop"], "a@x.nl", kind, later + timedelta(days=1)) == 1
    (got,) = (await store.consent.find_consents(["shop"], ["a@x.nl"]))["a@x.nl"]
    assert getattr(got, field) == later + timedelta(days=1)


@pytest.mark.parametrize(
    ("changes", "revoked", "written"),
    [
        ({}, False, False),
        ({"confirmed_at": T0 - timedelta(days=1)}, False, False),  # dates only move forward
        ({"confirmed_at": T0 + timedelta(days=1)}, False, True),
        ({"source_ip": "192.0.2.9"}, False, True),
        ({}, True, False),  # the revocation stands against the old row
        ({"collected_at": T0 + timedelta(days=9)}, True, True),  # consent given again after it
    ],
)
async def test_dry_run_merge_predicts_what_the_upsert_writes(
    store: Store, changes: dict[str, object], revoked: bool, written: bool
) -> None:
    from relay.store.rows import consent_row_unchanged, consent_to_row, merged_consent_row

    await store.consent.upsert_consents([consent("a@x.nl", confirmed_at=T0)], now=T0)
    if revoked:
        await store.consent.revoke("shop", "a@x.nl", None, via="one_click", at=T0 + timedelta(days=2))
    (before,) = (await store.consent.find_consents(["shop"], ["a@x.nl"]))["a@x.nl"]
    incoming = replace(consent("a@x.nl", confirmed_at=T0), **changes)  # type: ignore[arg-type]
    stored_row = consent_to_row(before)
    predicted = not consent_row_unchanged(stored_row, merged_consent_row(stored_row, consent_to_row(incoming, "x")))
    assert predicted is written
    assert await store.consent.upsert_consents([incoming], now=T0 + timedelta(days=10)) == ((1, 0) if written else (0, 1))


async def test_suppressions_add_idempotent_find_list_remove(store: Store) -> None:
    s1 = Suppression("a@x.nl", "shop", "*", "suppression.unsubscribed", "one_click", T0)
    s2 = Suppression("a@x.nl", "shop", "*", "suppression.complaint", "complaint", T0 + timedelta(1))
    s3 = Suppression("b@x.nl", "group", "news", "suppression.unsubscribed", "page", T0 + timedelta(2))
    assert await store.consent.add_suppression(s1, note="link")
    assert not await store.consent.add_suppression(replace(s1, via="page"))
    assert await store.consent.add_suppression(s2)
    assert await store.consent.add_suppression(s3)
    found = await store.consent.find_suppressions(["shop", "group"], ["a@x.nl", "b@x.nl", "c@x.nl"])
    assert sorted(found["a@x.nl"], key=lambda s: s.reason) == [s2, s1]
    assert found["b@x.nl"] == [s3]
    assert await store.consent.find_suppressions(["other"], ["a@x.nl"]) == {}
    assert await store.consent.list_suppressions() == [s3, s2, s1]
    assert await store.consent.list_suppressions("shop", limit=1) == [s2]
    assert await store.consent.remove_suppression("shop", "a@x.nl", "suppression.complaint") == 1
    assert await store.consent.remove_suppression("shop", "a@x.nl", "suppression.complaint") == 0
    assert await store.consent.remove_suppression("group", "b@x.nl") == 1
    assert await store.consent.list_suppressions() == [s1]
    now_ish = await store.consent.add_suppression(Suppression("d@x.nl", "shop", "*", "suppression.unsubscribed"))
    assert now_ish and (await store.consent.list_suppressions(limit=1))[0].created_at is not None


# --- decisions -------------------------------------------------------------------------------


def delivery(i: int, email: str, account: str = "acme", at: datetime = T0, **kw: object) -> DeliveryRecord:
    return DeliveryRecord(
        id=i, relay_id=f"r{i}", account=account, stream="news", email=email, status="delivered",
        delivered_at=at, message_id=f"<m{i}@x>", scope=account, topic="*", **kw,  # type: ignore[arg-type]
    )


async def test_decisions_and_deliveries_round_trip(store: Store) -> None:
    d1 = DecisionRecord(
        "r1", "accept", T0, "<m1@x>", "acme", "news", "o@shop", ("a@x.nl", "b@x.nl"), ("content.x",),
        ({"rule": "content.x", "action": "warn", "detail": {"n": 1}},),
    )
    d2 = replace(d1, outcome="reject", rules=(), findings=())
    await store.decisions.record([d1, d2], [delivery(1, "a@x.nl", consent_id=42), delivery(2, "b@x.nl")])
    await store.decisions.record([], [delivery(3, "a@x.nl", "beta", T0 + timedelta(1))])
    await store.decisions.record([replace(d1, relay_id="r9")], [])
    assert await store.decisions.for_relay_id("r1") == [d1, d2]
    assert await store.decisions.for_relay_id("nope") == []
    assert await store.decisions.delivery(1) == delivery(1, "a@x.nl", consent_id=42)
    assert await store.decisions.delivery(99) is None
    assert [d.id for d in await store.decisions.deliveries_to("a@x.nl", ["acme", "beta"])] == [3, 1]
    assert [d.id for d in await store.decisions.deliveries_to("a@x.nl", ["acme", "beta"], limit=1)] == [3]
    assert [d.id for d in await store.decisions.deliveries_to("a@x.nl", ["acme"])] == [1]
    assert await store.decisions.deliveries_by_message_id("<m2@x>") == [delivery(2, "b@x.nl")]
    # A queued copy later delivered is written again under the same id: it replaces the row.
    await store.decisions.record([], [replace(delivery(2, "b@x.nl"), status="queued")])
    assert (await store.decisions.delivery(2)).status == "queued"  # type: ignore[union-attr]


async def test_reserve_ids_consecutive_and_disjoint_under_concurrency(store: Store, second: Store) -> None:
    assert await store.decisions.reserve_ids("deliveries", 10) == 1
    assert await second.decisions.reserve_ids("deliveries", 5) == 11
    assert await store.decisions.reserve_ids("other", 3) == 1
    firsts = await asyncio.gather(
        *(s.decisions.reserve_ids("deliveries", 7) for _ in range(20) for s in (store, second))
    )
    ids = [i for first in sorted(firsts) for i in range(first, first + 7)]
    assert ids == list(range(16, 16 + 40 * 7))  # no overlap, no gap
    assert await store.decisions.reserve_ids("deliveries", 1) == 16 + 40 * 7


# --- outbox ----------------------------------------------------------------------------------


def copy(i: int, **kw: object) -> OutboxItem:
    return OutboxItem(f"r{i}", "acme", "news", "o@shop", (f"u{i}@x.nl", "v@x.nl"), b"Subject: %d\r\n\r\nhi\xff" % i, **kw)  # type: ignore[arg-type]


async def test_outbox_lease_retry_give_up_delivered(store: Store, second: Store) -> None:
    ids = await store.outbox.enqueue([copy(1), copy(2), copy(3, next_attempt_at=500.0)], now=100.0)
    assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
    assert await store.outbox.depth() == 3
    claimed = await store.outbox.claim_due(now=200.0, owner="h1", lease_seconds=60, limit=10)
    assert [c.id for c in claimed] == ids[:2]
    assert claimed[0] == replace(copy(1), id=ids[0], next_attempt_at=100.0, created_at=100.0)
    # Leased copies are not handed to another owner until the lease runs out.
    assert await second.outbox.claim_due(now=250.0, owner="h2", lease_seconds=60, limit=10) == []
    # Only the lease owner may settle a copy.
    await second.outbox.delivered(ids[0], "h2")
    await store.outbox.delivered(ids[0], "h1")
    await store.outbox.retry_later(ids[1], "h2", next_attempt_at=300.0, error="nope")
    assert await store.outbox.depth() == 2
    await store.outbox.retry_later(ids[1], "h1", next_attempt_at=300.0, error="451 try later" * 200)
    assert await store.outbox.claim_due(now=299.0, owner="h2", lease_seconds=60, limit=10) == []
    again = await second.outbox.claim_due(now=300.0, owner="h2", lease_seconds=60, limit=10)
    assert [(c.id, c.attempts, c.next_attempt_at) for c in again] == [(ids[1], 1, 300.0)]
    assert len(again[0].last_error) == 1000 and again[0].last_error.startswith("451 try later")
    # The lease expired without settling: another owner takes it over.
    taken = await store.outbox.claim_due(now=361.0, owner="h1", lease_seconds=60, limit=10)
    assert [c.id for c in taken] == [ids[1]]
    await second.outbox.give_up(ids[1], "h2", error="stale owner")  # no longer its lease
    assert await store.outbox.depth() == 2
    await store.outbox.give_up(ids[1], "h1", error="550 no such user")
    assert await store.outbox.depth() == 1
    late = await store.outbox.claim_due(now=1000.0, owner="h1", lease_seconds=60, limit=10)
    assert [c.id for c in late] == [ids[2]]  # the failed copy is never claimed again
    assert await store.outbox.enqueue([], now=1.0) == []


async def test_outbox_renew_fence_release_and_an_interrupted_send(store: Store, second: Store) -> None:
    ids = await store.outbox.enqueue([copy(1), copy(2), copy(3)], now=100.0)
    claimed = await store.outbox.claim_due(now=100.0, owner="h1", lease_seconds=5, limit=10)
    assert [c.id for c in claimed] == ids and not any(c.interrupted_send or c.uncertain for c in claimed)
    # A renewed lease keeps the copies from another owner past the first deadline.
    assert await store.outbox.renew(ids, "h1", lease_until=110.0) == set(ids)
    assert await second.outbox.claim_due(now=108.0, owner="h2", lease_seconds=5, limit=10) == []
    assert await second.outbox.renew(ids, "h2", lease_until=200.0) == set()  # not its copies
    assert not await second.outbox.fence(ids[0], "h2", now=108.0, lease_until=113.0)
    # Graceful stop: the unsent copies are given back at once, not at the end of the lease.
    await store.outbox.release(ids[1:], "h1")
    taken = await second.outbox.claim_due(now=109.0, owner="h2", lease_seconds=5, limit=10)
    assert [c.id for c in taken] == ids[1:]
    assert await second.outbox.renew(ids[1:], "h2", lease_until=1000.0) == set(ids[1:])
    assert await store.outbox.renew(ids, "h1", lease_until=120.0) == {ids[0]}
    # h1 begins a send of the first copy and dies: the next holder is told the send was interrupted.
    assert await store.outbox.fence(ids[0], "h1", now=110.0, lease_until=115.0)
    assert not await store.outbox.fence(ids[1], "h1", now=110.0, lease_until=115.0)
    assert await second.outbox.claim_due(now=114.0, owner="h2", lease_seconds=5, limit=10) == []
    (after,) = await second.outbox.claim_due(now=120.0, owner="h2", lease_seconds=5, limit=10)
    assert (after.id, after.interrupted_send, after.uncertain) == (ids[0], True, 1)
    # Its lease runs out again without a send begun: not interrupted, the count stays.
    (again,) = await store.outbox.claim_due(now=126.0, owner="h1", lease_seconds=5, limit=10)
    assert (again.interrupted_send, again.uncertain) == (False, 1)
    # An uncertain attempt recorded by its holder, and the rest of the recipients kept alone.
    await store.outbox.retry_later(ids[0], "h1", next_attempt_at=130.0, error="no answer", uncertain=True, rcpt_tos=["v@x.nl"])
    (last,) = await store.outbox.claim_due(now=130.0, owner="h1", lease_seconds=5, limit=10)
    assert (last.uncertain, last.rcpt_tos, last.attempts) == (2, ("v@x.nl",), 1)


async def test_outbox_racing_owners_get_disjoint_copies(store: Store, second: Store) -> None:
    ids = await store.outbox.enqueue([copy(i) for i in range(150)], now=10.0)
    claims = await asyncio.gather(
        *(
            s.outbox.claim_due(now=20.0, owner=owner, lease_seconds=60, limit=4)
            for _ in range(15)
            for s, owner in ((store, "h1"), (second, "h2"))
        )
    )
    by_owner: dict[str, list[int]] = {"h1": [], "h2": []}
    for n, batch in enumerate(claims):
        by_owner["h1" if n % 2 == 0 else "h2"].extend(c.id for c in batch)
    every = by_owner["h1"] + by_owner["h2"]
    assert len(every) == len(set(every)) == 120  # 30 claims of 4, each copy to exactly one owner
    assert set(every) <= set(ids)
    # Only the owner of each lease can deliver it: the other owner's attempts change nothing.
    for item_id in by_owner["h1"]:
        await second.outbox.delivered(item_id, "h2")
    assert await store.outbox.depth() == 150
    for owner, s in (("h1", store), ("h2", second)):
        for item_id in by_owner[owner]:
            await s.outbox.delivered(item_id, owner)
    assert await store.outbox.depth() == 30


async def test_outbox_early_claims_take_copies_not_due_in_id_order_and_respect_leases(store: Store, second: Store) -> None:
    ids = await store.outbox.enqueue([copy(i, next_attempt_at=1000.0 + i) for i in range(5)], now=10.0)
    assert await store.outbox.claim_due(now=20.0, owner="h1", lease_seconds=60, limit=10) == []  # none is due
    (leased,) = await second.outbox.claim_early(now=20.0, owner="h2", lease_seconds=60, limit=1, after_id=ids[1])
    assert leased.id == ids[2]
    early = await store.outbox.claim_early(now=20.0, owner="h1", lease_seconds=60, limit=10, after_id=ids[0])
    assert [c.id for c in early] == [ids[1], ids[3], ids[4]]  # after ids[0], and not h2's copy
    assert await store.outbox.claim_early(now=30.0, owner="h2", lease_seconds=60, limit=10, after_id=0) == [
        replace(copy(0, next_attempt_at=1000.0), id=ids[0], created_at=10.0)
    ]
    await store.outbox.give_up(ids[1], "h1", error="550 no such user")
    # Once the leases ran out: every pending copy again, never a failed one.
    again = await store.outbox.claim_early(now=400.0, owner="h1", lease_seconds=60, limit=10, after_id=0)
    assert [c.id for c in again] == [ids[0], ids[2], ids[3], ids[4]]


async def test_outbox_settle_delivers_and_fences_in_one_go_for_the_owner_only(store: Store, second: Store) -> None:
    ids = await store.outbox.enqueue([copy(i) for i in range(4)], now=10.0)
    assert len(await store.outbox.claim_due(now=20.0, owner="h1", lease_seconds=5, limit=3)) == 3
    assert len(await second.outbox.claim_due(now=20.0, owner="h2", lease_seconds=5, limit=3)) == 1
    held = await store.outbox.settle("h1", delivered=[ids[0], ids[3]], fence=[ids[1], ids[2], ids[3]], now=21.0, lease_until=40.0)
    assert held == {ids[1], ids[2]}  # h2's copy is neither removed nor fenced by h1
    assert await store.outbox.depth() == 3
    # The fence holds h1's leases until 40 (h2's ran out at 25) and marks the sends begun: the next holder is told.
    (first,) = await second.outbox.claim_due(now=39.0, owner="h2", lease_seconds=5, limit=10)
    taken = await second.outbox.claim_due(now=40.0, owner="h2", lease_seconds=5, limit=10)
    assert (first.id, first.interrupted_send) == (ids[3], False)
    assert sorted((c.id, c.interrupted_send) for c in taken) == [(ids[1], True), (ids[2], True)]
    assert await second.outbox.settle("h2", delivered=ids[1:], fence=[], now=41.0, lease_until=46.0) == set()
    assert await store.outbox.depth() == 0



async def test_outbox_a_fenced_claim_marks_its_copies_begun_in_the_same_write(store: Store, second: Store) -> None:
    # relay.delivery.outbox claims `fenced`: the claim is the fence, so a holder that dies after it
    # leaves its copies uncertain, and a graceful stop gives them back unmarked (release).
    ids = await store.outbox.enqueue([copy(i) for i in range(4)], now=10.0)
    claimed = await store.outbox.claim_due(now=20.0, owner="h1", lease_seconds=5, limit=2, fenced=True)
    assert [c.id for c in claimed] == ids[:2] and not any(c.interrupted_send for c in claimed)
    (early,) = await store.outbox.claim_early(now=20.0, owner="h1", lease_seconds=5, limit=1, after_id=ids[1], fenced=True)
    assert early.id == ids[2]
    await store.outbox.release([ids[1]], "h1")  # a graceful stop: not begun after all
    unfenced = await second.outbox.claim_due(now=21.0, owner="h2", lease_seconds=5, limit=10)
    assert sorted((c.id, c.interrupted_send) for c in unfenced) == [(ids[1], False), (ids[3], False)]
    # h1 dies: its fenced copies come back uncertain; h2's claim, not fenced, left no mark.
    taken = await second.outbox.claim_due(now=26.0, owner="h2", lease_seconds=5, limit=10)
    assert sorted((c.id, c.interrupted_send, c.uncertain) for c in taken) == [
        (ids[0], True, 1), (ids[1], False, 0), (ids[2], True, 1), (ids[3], False, 0)
    ]


async def test_outbox_release_gives_back_fenced_copies_unmarked_for_the_owner_only(store: Store, second: Store) -> None:
    # A claim's copies are fenced together before the first is sent (relay.delivery.outbox): those a
    # graceful stop never sent go back as not begun, so the next holder does not count them uncertain.
    ids = await store.outbox.enqueue([copy(i) for i in range(3)], now=10.0)
    assert len(await store.outbox.claim_due(now=20.0, owner="h1", lease_seconds=5, limit=10)) == 3
    assert await store.outbox.settle("h1", delivered=[], fence=ids, now=21.0, lease_until=40.0) == set(ids)
    await second.outbox.release(ids, "h2")  # not its copies: nothing changes
    await store.outbox.release(ids[1:], "h1")
    taken = await second.outbox.claim_due(now=22.0, owner="h2", lease_seconds=5, limit=10)
    assert sorted((c.id, c.interrupted_send, c.uncertain) for c in taken) == [(ids[1], False, 0), (ids[2], False, 0)]
    await second.outbox.settle("h2", delivered=ids[1:], fence=[], now=23.0, lease_until=28.0)
    (cut,) = await second.outbox.claim_due(now=40.0, owner="h2", lease_seconds=5, limit=10)
    assert (cut.id, cut.interrupted_send, cut.uncertain) == (ids[0], True, 1)  # fenced, never given back


async def test_outbox_claims_read_their_limit_in_index_order_when_the_table_was_never_analysed(store: Store) -> None:
    # A queue table grows from empty during an outage, faster than statistics follow. With none,
    # PostgreSQL took 3,000 due copies for a few dozen and read and sorted all of them per claim
    # (100,000 queued: 120 ms a claim, most of the drain's store time). Each claim must walk its
    # index in order and stop at the limit, on either backend, whatever the statistics.
    db = store.db  # type: ignore[attr-defined]
    dialect = db.dialect
    async with db.transaction() as tx:
        if dialect is POSTGRES:  # never analysed: the state of an outbox that filled since it was last
            await tx.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        await tx.execute(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000) "
            "INSERT INTO outbox (relay_id, account, stream, mail_from, rcpt_tos, content, next_attempt_at, created_at) "
            "SELECT 'r', 'acme', 'news', 'o@shop', '[]', ?, 100 + n / 9, 100 FROM g",
            (b"x" * 100,),
        )
    for where, params in ((tables.OUTBOX_DUE, (1000.0, 1000.0)), (tables.OUTBOX_EARLY, (0, 1000.0))):
        async with db.transaction() as tx:
            if dialect.ordered_reads:
                await tx.execute(dialect.ordered_reads)
            explain = "EXPLAIN (ANALYZE, COSTS OFF) " if dialect is POSTGRES else "EXPLAIN QUERY PLAN "
            rows = await tx.fetchall(explain + tables.outbox_claim(dialect, where), (*params, 80))
        plan = "\n".join(str(row[-1]) for row in rows)
        assert "TEMP B-TREE" not in plan and "Bitmap" not in plan, plan  # no sort of every due copy
        assert not re.search(r"(^|->)\s*Sort \(", plan, re.MULTILINE), plan  # an Incremental Sort sorts a few rows
        if dialect is POSTGRES:
            read = max(int(line.split("rows=")[1].split()[0]) for line in plan.splitlines() if "Index Scan" in line)
            assert read <= 200, plan  # the limit and a few rows of the incremental sort's last group, not 3,000
    claimed = await store.outbox.claim_due(now=1000.0, owner="h1", lease_seconds=60, limit=80)
    assert [(c.next_attempt_at, c.id) for c in claimed] == sorted((c.next_attempt_at, c.id) for c in claimed)
    assert len(claimed) == 80 and claimed[0].next_attempt_at == 100.0


# --- quarantine ------------------------------------------------------------------------------


def held(i: int, account: str = "acme", rules: tuple[str, ...] = ("content.x",), minutes: int = 0) -> QuarantineItem:
    return QuarantineItem(
        id=f"q{i:03d}", relay_id=f"r{i}", account=account, stream="news", mail_from="o@shop",
        rcpt_tos=("a@x.nl",), subject=f"subject {i}", rules=rules,
        findings=({"rule": rules[0] if rules else "", "detail": "x"},), size=100 + i,
        received_at=T0 + timedelta(minutes=minutes), content=b"raw %d" % i,
    )


async def test_quarantine_counts_per_rule_and_account_in_a_window(store: Store, backend: Backend) -> None:
    await store.quarantine.hold(held(1, "acme", ("content.x",), minutes=10))
    await store.quarantine.hold(held(2, "beta", ("content.x", "identity.spf"), minutes=20))
    await store.quarantine.hold(held(3, "acme", ("content.x", "identity.spf"), minutes=30))
    await store.quarantine.hold(held(4, "acme", ("content.y",), minutes=40))
    await store.quarantine.hold(held(5, "beta", ("content.x",), minutes=50))
    assert await store.quarantine.set_status("q005", "deleted", AuditEntry("admin", "quarantine.delete", "q005", at=T0))
    assert await store.quarantine.counts() == (
        {"content.x": 3, "identity.spf": 2, "content.y": 1}, {"acme": 3, "beta": 1}
    )
    window = await store.quarantine.counts(since=T0 + timedelta(minutes=20), before=T0 + timedelta(minutes=40))
    assert window == ({"content.x": 2, "identity.spf": 2}, {"acme": 1, "beta": 1})
    if backend.kind == "sqlite":
        # The admin UI asks on every list page: the answer must come from the index, not the table.
        db = store.quarantine.db  # type: ignore[attr-defined]
        plan = await db.fetchall(
            "EXPLAIN QUERY PLAN SELECT account, rules, count(*) FROM quarantine WHERE status='held' "
            "AND received_at >= ? GROUP BY account, rules", ("x",)
        )
        assert any("COVERING INDEX quarantine_counts" in str(tuple(r)) for r in plan), [tuple(r) for r in plan]


async def test_an_abandoned_release_claim_goes_back_to_held(store: Store, second: Store) -> None:
    """A process killed between claim and finish must not leave the message out of sight forever."""
    await store.quarantine.hold(held(1))
    await store.quarantine.hold(held(2))
    assert await store.quarantine.claim_release("q001", T0) is not None
    assert await store.quarantine.claim_release("q002", T0 + timedelta(minutes=50)) is not None
    # Claims younger than the cut-off are left alone: their release may still be running.
    assert await second.quarantine.reclaim_abandoned(T0, "retention", T0) == []
    assert await second.quarantine.reclaim_abandoned(T0 + timedelta(minutes=1), "retention", T0 + timedelta(hours=1)) == ["q001"]
    assert (await store.quarantine.get("q001")) is not None and await store.quarantine.get("q002") is None
    entries = await store.audit.list(target="q001")
    assert [(e.actor, e.action) for e in entries] == [("retention", "quarantine.release_abandoned")]
    # Held again, so a new release can claim it; a late finish of the old claim changes nothing.
    late = AuditEntry("admin", "quarantine.release", "q001", "late", {}, T0)
    assert not await store.quarantine.finish_release("q001", late)
    assert await second.quarantine.claim_release("q001", T0 + timedelta(hours=2)) is not None


async def test_quarantine_release_claim_is_won_once_across_instances(store: Store, second: Store) -> None:
    await store.quarantine.hold(held(1))
    await store.quarantine.hold(held(2))
    # Two instances claim the same message at once: one gets it (with its content), the other nothing.
    claims = await asyncio.gather(store.quarantine.claim_release("q001"), second.quarantine.claim_release("q001"))
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].id == "q001" and won[0].content == b"raw 1" and won[0].status == "releasing"
    # Being released: not listed, not shown, not deletable, not claimable again.
    assert await store.quarantine.get("q001") is None and await store.quarantine.count() == 1
    assert [q.id for q in (await store.quarantine.list())[0]] == ["q002"]
    assert not await store.quarantine.set_status("q001", "deleted", AuditEntry("admin", "quarantine.delete", "q001", at=T0))
    assert await second.quarantine.claim_release("q001") is None
    # Delivery failed: back to held, and claimable again.
    await second.quarantine.unclaim_release("q001")
    assert (await store.quarantine.get("q001")) is not None
    assert await second.quarantine.claim_release("q001") is not None
    released = AuditEntry("admin", "quarantine.release", "q001", "ok", {"delivered": ["a@x.nl"]}, T0)
    assert await second.quarantine.finish_release("q001", released)
    assert not await store.quarantine.finish_release("q001", released)  # once only
    await store.quarantine.unclaim_release("q001")  # a late revert does not resurrect it
    assert await store.quarantine.get("q001") is None
    assert [(e.action, e.note) for e in await store.audit.list(target="q001")] == [("quarantine.release", "ok")]
    # Only a claimed message can be finished; a held one is not released behind the claim's back.
    assert not await store.quarantine.finish_release("q002", replace(released, target="q002"))
    assert await store.quarantine.get("q002") is not None


async def test_quarantine_hold_get_list_and_page(store: Store) -> None:
    items = [
        held(1, minutes=0),
        held(2, "beta", ("identity.spf", "content.x"), minutes=1),
        held(3, rules=("content.xy",), minutes=2),
        held(4, minutes=2),  # same time as q003: the id breaks the tie
        held(5, "beta", ("identity.spf",), minutes=3),
    ]
    for item in items:
        await store.quarantine.hold(item)
    assert await store.quarantine.get("q002", with_content=True) == items[1]
    assert await store.quarantine.get("q002") == replace(items[1], content=b"")
    assert await store.quarantine.get("missing") is None
    assert await store.quarantine.count() == 5

    async def ids(**kw: object) -> list[str]:
        page, _ = await store.quarantine.list(**kw)  # type: ignore[arg-type]
        return [q.id for q in page]

    assert await ids() == ["q005", "q004", "q003", "q002", "q001"]
    assert await ids(account="beta") == ["q005", "q002"]
    assert await ids(rule="content.x") == ["q004", "q002", "q001"]  # exact rule id, not a prefix
    assert await ids(rule="identity.spf", account="acme") == []
    assert await ids(since=T0 + timedelta(minutes=1), before=T0 + timedelta(minutes=3)) == ["q004", "q003", "q002"]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.quarantine.list(limit=2, cursor=cursor)
        seen += [q.id for q in page]
        assert all(q.content == b"" for q in page)
        if cursor is None:
            break
    assert seen == ["q005", "q004", "q003", "q002", "q001"]
    page, cursor = await store.quarantine.list(rule="content.x", limit=2)
    assert [q.id for q in page] == ["q004", "q002"] and cursor is not None
    page, cursor = await store.quarantine.list(rule="content.x", limit=2, cursor=cursor)
    assert ([q.id for q in page], cursor) == (["q001"], None)


async def test_quarantine_status_changes_audit_and_purge(store: Store, second: Store) -> None:
    for i in range(1, 5):
        await store.quarantine.hold(held(i, minutes=i * 60))
    released = AuditEntry("admin", "quarantine.release", "q001", "false positive", {"to": "upstream"}, T0)
    # Two admins on two instances release the same message: exactly one wins.
    results = await asyncio.gather(
        store.quarantine.set_status("q001", "released", released),
        second.quarantine.set_status("q001", "released", released),
    )
    assert sorted(results) == [False, True]
    assert await store.quarantine.get("q001") is None
    assert await store.quarantine.set_status("q002", "deleted", replace(released, target="q002"))
    assert not await store.quarantine.set_status("q002", "released", replace(released, target="q002"))
    assert await store.quarantine.count() == 2
    audit = await store.audit.list(target="q001")
    assert [(e.actor, e.action, e.note, e.detail, e.at) for e in audit] == [
        ("admin", "quarantine.release", "false positive", {"to": "upstream"}, T0)
    ]
    assert await store.quarantine.purge_older_than(T0 + timedelta(hours=3, minutes=30), "retention") == 1
    assert [q.id for q in (await store.quarantine.list())[0]] == ["q004"]
    purged = await store.audit.list(target="q003")
    assert [(e.actor, e.action) for e in purged] == [("retention", "quarantine.purge")]
    assert await store.quarantine.purge_older_than(T0 + timedelta(hours=3, minutes=30), "retention") == 0


# --- audit -----------------------------------------------------------------------------------


async def test_audit_add_and_list(store: Store) -> None:
    for i in range(5):
        await store.audit.add(AuditEntry("ops", "thing.done", f"t{i % 2}", f"n{i}", {"i": i}, T0 + timedelta(i)))
    await store.audit.add(AuditEntry("cli", "no.time", "t9"))
    latest = await store.audit.list(limit=3)
    assert [e.note for e in latest] == ["", "n4", "n3"]
    assert latest[0].at is not None and latest[0].id > latest[1].id > latest[2].id
    assert [(e.note, e.detail, e.at) for e in await store.audit.list(target="t1")] == [
        ("n3", {"i": 3}, T0 + timedelta(3)),
        ("n1", {"i": 1}, T0 + timedelta(1)),
    ]


# --- rates -----------------------------------------------------------------------------------


async def test_rate_bucket_takes_and_refills(store: Store) -> None:
    assert [await store.rates.take("acme", rate_per_minute=2, now=1000.0) for _ in range(3)] == [True, True, False]
    assert await store.rates.take("beta", rate_per_minute=2, now=1000.0)
    assert not await store.rates.take("acme", rate_per_minute=2, now=1029.0)  # 0.97 tokens back
    assert await store.rates.take("acme", rate_per_minute=2, now=1031.0)  # past 1 token
    assert not await store.rates.take("acme", rate_per_minute=2, now=1031.0)
    # A long pause refills only to capacity.
    assert [await store.rates.take("acme", rate_per_minute=2, now=5000.0) for _ in range(3)] == [True, True, False]


async def test_rate_bucket_is_shared_and_atomic(store: Store, second: Store) -> None:
    results = await asyncio.gather(
        *(s.rates.take("acme", rate_per_minute=5, now=50.0) for _ in range(10) for s in (store, second))
    )
    assert sum(results) == 5


# --- complaints ------------------------------------------------------------------------------


def complaint(key: str, email: str = "a@x.nl", account: str = "acme", hours: int = 0, **kw: object) -> Complaint:
    return Complaint(
        account=account, email=email, feedback_type="abuse", status=kw.pop("status", OPEN), source="mail",  # type: ignore[arg-type]
        received_at=T0 + timedelta(hours=hours), report_key=key, deadline=T0 + timedelta(hours=hours + 72),
        relay_id="r1", mapped_by="relay_id", reporter="FBL/1.0", **kw,  # type: ignore[arg-type]
    )


async def test_complaints_add_once_list_acknowledge(store: Store, second: Store) -> None:
    complaints = store.complaints  # type: ignore[attr-defined]
    first, created = await complaints.add(complaint("k1"), b"ARF report 1")
    assert created and first.id > 0 and replace(first, id=0) == complaint("k1")
    # The same report ingested twice (here on two instances at once) is one complaint.
    results = await asyncio.gather(
        complaints.add(complaint("k2", hours=1), b"r2"),
        second.complaints.add(complaint("k2", hours=1), b"r2"),  # type: ignore[attr-defined]
    )
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0] == results[1][0]
    again, created = await complaints.add(complaint("k1", hours=5), b"other bytes")
    assert (again, created) == (first, False)
    await complaints.add(complaint("k3", "b@x.nl", "beta", 2, status=INFORMATIONAL), b"not spam")
    assert await complaints.get(first.id) == first
    assert await complaints.get(999) is None
    assert await complaints.report(first.id) == b"ARF report 1"
    assert await complaints.report(999) is None
    assert [c.report_key for c in await complaints.list()] == ["k3", "k2", "k1"]
    assert [c.report_key for c in await complaints.list(account="acme", limit=1)] == ["k2"]
    assert await complaints.acknowledge(first.id, actor="ops", note="handled", at=T0 + timedelta(hours=3))
    assert not await complaints.acknowledge(first.id, actor="ops", note="again", at=T0 + timedelta(hours=4))
    acked = await complaints.get(first.id)
    assert (acked.status, acked.acknowledged_by, acked.ack_note) == (ACKNOWLEDGED, "ops", "handled")
    assert acked.acknowledged_at == T0 + timedelta(hours=3)
    assert [c.report_key for c in await complaints.list(open_only=True)] == ["k2"]
    audit = await store.audit.list(target=f"complaint:{first.id}")
    assert [(e.actor, e.action) for e in audit] == [("ops", "complaint.acknowledged"), ("FBL/1.0", "complaint.received")]
    assert audit[1].detail == {
        "account": "acme", "status": OPEN, "mapped_by": "relay_id", "verified": True, "spam_trap": False
    }


async def test_unverified_complaints_do_not_count_until_verified(store: Store) -> None:
    """docs/SPEC.md §16: a report from no configured source suppresses, but neither counts nor has a deadline."""
    complaints = store.complaints  # type: ignore[attr-defined]
    trap, _ = await complaints.add(complaint("k1", spam_trap=True), b"1")
    forged, _ = await complaints.add(replace(complaint("k2", hours=1, verified=False), deadline=None), b"2")
    assert (trap.verified, trap.spam_trap) == (True, True)
    assert (forged.verified, forged.spam_trap, forged.deadline) == (False, False, None)
    assert await complaints.count_since("acme", T0) == 1
    assert not await complaints.verify(trap.id, actor="ops", note="", at=T0, deadline=None)  # verified already
    deadline = T0 + timedelta(hours=30)
    assert await complaints.verify(forged.id, actor="ops", note="from our FBL's new address", at=T0 + timedelta(hours=6), deadline=deadline)
    assert not await complaints.verify(forged.id, actor="ops", note="again", at=T0, deadline=deadline)
    got = await complaints.get(forged.id)
    assert (got.verified, got.deadline) == (True, deadline)
    assert await complaints.count_since("acme", T0) == 2
    audit = await store.audit.list(target=f"complaint:{forged.id}")
    assert [(e.actor, e.action, e.note) for e in audit][0] == ("ops", "complaint.verified", "from our FBL's new address")


async def test_complaints_deadlines_forwarding_and_counts(store: Store) -> None:
    complaints = store.complaints  # type: ignore[attr-defined]
    a, _ = await complaints.add(complaint("k1", hours=0), b"1")
    b, _ = await complaints.add(complaint("k2", hours=10), b"2")
    await complaints.add(complaint("k3", hours=20, status=INFORMATIONAL), b"3")
    assert await complaints.overdue(T0 + timedelta(hours=71)) == []
    assert [c.id for c in await complaints.overdue(T0 + timedelta(hours=90))] == [a.id, b.id]
    assert await complaints.mark_escalated([a.id], at=T0 + timedelta(hours=90)) == 1
    assert await complaints.mark_escalated([a.id, b.id], at=T0 + timedelta(hours=91)) == 1
    assert await complaints.mark_escalated([], at=T0) == 0
    assert await complaints.overdue(T0 + timedelta(hours=200)) == []
    assert (await complaints.get(a.id)).escalated_at == T0 + timedelta(hours=90)
    await complaints.set_forwarded(a.id, to="abuse@shop", at=T0, error="")
    await complaints.set_forwarded(b.id, to="", at=None, error="x" * 2000)
    got_a, got_b = await complaints.get(a.id), await complaints.get(b.id)
    assert (got_a.forwarded_to, got_a.forwarded_at, got_a.forward_error) == ("abuse@shop", T0, "")
    assert (got_b.forwarded_at, len(got_b.forward_error)) == (None, 1000)
    assert await complaints.count_since("acme", T0) == 2  # the informational one does not count
    assert await complaints.count_since("acme", T0 + timedelta(hours=1)) == 1
    assert await complaints.count_since("beta", T0) == 0
    await store.decisions.record(
        [], [delivery(1, "a@x.nl", at=T0), delivery(2, "b@x.nl", at=T0 + timedelta(hours=2)), delivery(3, "c@x.nl", "beta")]
    )
    await store.decisions.record([], [replace(delivery(4, "d@x.nl"), relay_id="r1")])
    assert await complaints.delivered_since("acme", T0) == 3
    assert await complaints.delivered_since("acme", T0 + timedelta(hours=1)) == 1
    assert [d.id for d in await complaints.deliveries_for_relay_id("r1")] == [1, 4]


async def test_rejected_feedback_reports_are_kept(store: Store) -> None:
    complaints = store.complaints  # type: ignore[attr-defined]
    one = await complaints.keep_rejected(source="mail", reason="not an ARF report", report=b"junk", at=T0)
    two = await complaints.keep_rejected(source="api", reason="r" * 2000, report=b"\x00\xff", at=T0 + timedelta(1))
    assert two > one > 0
    listed = await complaints.list_rejected()
    assert [(r.id, r.source, r.size, r.report) for r in listed] == [(two, "api", 2, b""), (one, "mail", 4, b"")]
    assert len(listed[0].reason) == 1000
    assert await complaints.list_rejected(limit=1, with_report=True) == [
        RejectedReport(two, "api", "r" * 1000, T0 + timedelta(1), 2, b"\x00\xff")
    ]


# --- opening and migrations ------------------------------------------------------------------


async def test_reopening_migrates_nothing_and_keeps_data(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    await first.audit.add(AuditEntry("ops", "x", "kept"))
    await first.close()
    again = backend.make()
    await again.open()  # the migrations already ran: a no-op
    try:
        assert [e.target for e in await again.audit.list()] == ["kept"]
        assert await backend.version() == len(schema.MIGRATIONS)
        await again.ping()
    finally:
        await again.close()


RELEASED = json.loads((Path(__file__).parent / "data" / "released_migrations.json").read_text())


def test_released_migrations_render_as_they_were_released() -> None:
    """Databases in use were made by these statements: the one schema renders them unchanged in both dialects."""
    for dialect in (SQLITE, POSTGRES):
        released = [tuple(m) for m in RELEASED[dialect.name]]
        assert list(schema.migrations(dialect)[: len(released)]) == released


async def test_a_database_of_an_older_release_opens_and_is_upgraded(backend: Backend) -> None:
    """Made at version 5 by that release's statements, with rows in it: the store migrates it on open and
    reads and writes the old rows, with the columns added since."""
    blob = "x'6d7367'" if backend.kind == "sqlite" else "decode('6d7367', 'hex')"
    await backend.run([
        *(statement for migration in RELEASED[backend.kind][:5] for statement in migration),
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (5)",
        "INSERT INTO account_state (account, state, reason, paused_streams, updated_at) "
        "VALUES ('acme', 'paused', 'old', 'news', '2024-03-01T12:00:00.000000+00:00')",
        "INSERT INTO outbox (relay_id, account, stream, mail_from, rcpt_tos, content, next_attempt_at, created_at) "
        f"VALUES ('r1', 'acme', 'news', 'o@acme.example', '[\"a@x.nl\"]', {blob}, 100, 100)",
    ])
    store = backend.make()
    await store.open()
    try:
        assert await backend.version() == len(schema.MIGRATIONS)
        state = await store.accounts.get("acme")
        assert (state.state, state.reason, state.paused_streams) == ("paused", "old", frozenset({"news"}))
        (item,) = await store.outbox.claim_due(now=200.0, owner="A", lease_seconds=60, limit=10)  # migration 8's columns
        assert (item.relay_id, item.rcpt_tos, item.content, item.uncertain, item.interrupted_send) == (
            "r1", ("a@x.nl",), b"msg", 0, False,
        )
        added, created = await store.complaints.add(complaint("k1"), b"report")  # migration 6's columns
        assert created and added.verified and not added.spam_trap
        await store.accounts.set(AccountState("acme"), actor="ops", note="resumed")  # migration 7's events
        assert [e.type for e in await store.events.after("acme", 0)] == ["complained", "account_state"]
    finally:
        await store.close()


# One relay process's store start-up, as `[smtp] workers = N` runs it: a line on stdin names a fresh
# store to open (every process gets the same line at once), one line on stdout answers how it went.
_OPENER = """
import asyncio, sys, threading
from relay.config import StoreConfig
from relay.errors import StoreUnavailable
from relay.store import open_store_for
from relay.store.records import AuditEntry

async def main():
    for line in sys.stdin:
        store = open_store_for(StoreConfig(url=line.strip(), timeout=5.0))
        try:
            await store.open()
        except StoreUnavailable as exc:
            print("failed:", exc, flush=True)
            continue
        await store.audit.add(AuditEntry("ops", "x", "t"))
        await store.close()
        print("ok", flush=True)

asyncio.run(main())
# A closed connection's thread ends just after close() returns; a leaked one never ends.
for thread in threading.enumerate():
    if thread is not threading.main_thread():
        thread.join(10)
print("threads left:", threading.active_count() - 1, flush=True)
"""
_PROCESSES, _ROUNDS = 4, {"sqlite": 200, "postgresql": 10}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_instances_starting_at_once_all_migrate_safely(kind: str, tmp_path: Path) -> None:
    """Separate processes open one fresh store at the same moment, round after round: every one opens
    (SQLite's switch to WAL and the migrations race on a new file), writes, and leaves no thread behind."""
    admin = await asyncpg.connect(PG_URL) if kind == "postgresql" else None
    schemas: list[str] = []
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _OPENER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(_PROCESSES)
    ]
    try:
        for round_ in range(_ROUNDS[kind]):
            if admin is None:
                url, path = f"sqlite:///{tmp_path}/round{round_}.db", tmp_path / f"round{round_}.db"
            else:
                schemas.append(f"t_{secrets.token_hex(6)}")
                await admin.execute(f'CREATE SCHEMA "{schemas[-1]}"')
                url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schemas[-1]}"
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(url.encode() + b"\n")
            await asyncio.gather(*(proc.stdin.drain() for proc in procs if proc.stdin is not None))
            answers = [
                (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
                for proc in procs
                if proc.stdout is not None
            ]
            assert answers == ["ok"] * _PROCESSES, f"round {round_}: {answers}"
            if admin is None:
                with sqlite3.connect(path) as conn:
                    version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
                    audited = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
            else:
                version = await admin.fetchval(f'SELECT version FROM "{schemas[-1]}".schema_version')
                audited = await admin.fetchval(f'SELECT count(*) FROM "{schemas[-1]}".audit')
            assert (version, audited) == (len(schema.MIGRATIONS), _PROCESSES)
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"threads left: 0"
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if admin is not None:
            for name in schemas:
                await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
            await admin.close()


async def test_failed_open_closes_its_connections(tmp_path: Path) -> None:
    """A store that cannot open leaves no aiosqlite thread behind: a live one keeps the process from exiting."""
    garbage = tmp_path / "relay.db"
    garbage.write_bytes(b"this is not an SQLite database, not even its header" * 100)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OPENER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"sqlite:///{garbage}\n".encode())
        proc.stdin.close()
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip() for _ in range(2)]
        assert lines == [f"failed: cannot open SQLite store {garbage}: file is not a database", "threads left: 0"]
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_closed_or_unreachable_store_is_unavailable(backend: Backend, store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.accounts.get("acme")
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_unreachable_postgres_is_unavailable() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        unreachable = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test", 2.0)
        with pytest.raises(StoreUnavailable):
            await unreachable.open()


async def test_postgres_schema_mirrors_sqlite_schema(tmp_path: Path) -> None:
    """Every table and column of schema.py exists in both dialects' DDL, migration by migration."""
    assert len(schema.migrations(POSTGRES)) == len(schema.migrations(SQLITE)) == len(schema.MIGRATIONS)
    sqlite_store = SqliteStore(tmp_path / "s.db", 5.0)
    await sqlite_store.open()
    await sqlite_store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        sqlite_columns = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        sqlite_indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        pg = PostgresStore(f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={name}", 5.0)
        await pg.open()
        await pg.close()
        rows = await admin.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema=$1 "
            "ORDER BY table_name, ordinal_position",
            name,
        )
        pg_columns: dict[str, list[str]] = {}
        for row in rows:
            pg_columns.setdefault(row["table_name"], []).append(row["column_name"])
        pg_indexes = {
            r["indexname"]
            for r in await admin.fetch("SELECT indexname FROM pg_indexes WHERE schemaname=$1", name)
        }
    finally:
        await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
        await admin.close()
    assert pg_columns == sqlite_columns
    assert sqlite_indexes <= pg_indexes
