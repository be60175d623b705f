"""The event part of the store contract (docs/SPEC.md §17), on SQLite and PostgreSQL alike: each decision
writes its events in its own transaction, numbered per account in commit order."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from policies.facts import Suppression
from relay.store.account_events import decision_events, suppression_event
from relay.store.base import Store
from relay.store.records import AccountState, AuditEntry, DecisionRecord, DeliveryRecord
from tests.relay.store.test_store import T0, backend, complaint, held, second, store  # noqa: F401  (fixtures)


async def types(store: Store, account: str, after: int = 0) -> list[tuple[int, str, str]]:
    return [(e.seq, e.type, e.recipient) for e in await store.events.after(account, after, 1000)]


async def test_every_decision_writes_its_event_in_order(store: Store) -> None:
    await store.quarantine.hold(held(1, account="acme"))
    await store.quarantine.hold(held(2, account="acme"))
    decision = DecisionRecord("r9", "quarantined", T0, account="acme", stream="news", recipients=("a@x.nl", "b@x.nl"), rules=("content.x",))
    rejected = DecisionRecord("r10", "rejected", T0, account="acme", recipients=("c@x.nl",), rules=("consent.none",))
    delivered = DeliveryRecord(1, "r11", "acme", "news", "d@x.nl", "delivered", T0)
    queued = DeliveryRecord(2, "r11", "acme", "news", "e@x.nl", "queued", T0)
    events = decision_events([decision, rejected], [delivered, queued])
    await store.decisions.record([decision, rejected], [delivered, queued], events)
    assert await types(store, "acme") == [
        (1, "quarantined", "a@x.nl"), (2, "quarantined", "b@x.nl"), (3, "rejected", "c@x.nl"), (4, "deferred", "e@x.nl"),
    ]
    assert await store.quarantine.set_status(held(1).id, "deleted", AuditEntry("ops", "quarantine.delete", held(1).id, at=T0))
    assert await store.quarantine.claim_release(held(2).id) is not None
    assert await store.quarantine.finish_release(held(2).id, AuditEntry("ops", "quarantine.release", held(2).id, at=T0))
    assert not await store.quarantine.set_status(held(1).id, "deleted", AuditEntry("ops", "quarantine.delete", held(1).id, at=T0))
    await store.consent.add_suppression(Suppression("u@x.nl", "acme", "*", "unsubscribed", "one_click", T0))
    await store.consent.add_suppression(Suppression("v@x.nl", "acme", "*", "unsubscribed", "admin", T0), note="asked by phone")
    assert not await store.consent.add_suppression(Suppression("v@x.nl", "acme", "*", "unsubscribed", "admin", T0))
    assert await store.consent.remove_suppression("acme", "v@x.nl") == 1
    await store.accounts.set(AccountState("acme", "paused", "complaints"), actor="ops", note="")
    await store.complaints.add(complaint("k1", email="w@x.nl"), b"report")
    await store.complaints.add(complaint("k1", email="w@x.nl"), b"report")  # the same report again: no event
    got = await store.events.after("acme", 4, 100)
    assert [(e.seq, e.type, e.recipient) for e in got] == [
        (5, "deleted", "a@x.nl"), (6, "released", "a@x.nl"), (7, "unsubscribed", "u@x.nl"),
        (8, "suppression_added", "v@x.nl"), (9, "suppression_removed", "v@x.nl"), (10, "account_state", ""),
        (11, "complained", "w@x.nl"),
    ]
    shape = got[0].as_dict()
    assert set(shape) >= {"id", "type", "at", "account", "stream", "recipient", "relay_id", "message_id", "rule", "detail"}
    assert shape["id"] == "evt_acme_5" and shape["detail"]["by"] == "ops" and shape["rule"] == "content.x"
    assert got[3].detail["note"] == "asked by phone" and got[5].detail["state"] == "paused"
    # The cursor is the last seq seen: the same page comes back for the same cursor, others never mix in.
    assert [e.seq for e in await store.events.after("acme", 9, 100)] == [10, 11]
    assert await store.events.after("other", 0, 100) == []


def test_a_bounce_suppression_is_a_bounced_event() -> None:
    bounce = Suppression("gone@x.nl", "acme", "*", "suppression.bounced", "dsn", T0)
    assert suppression_event(bounce, T0).type == "bounced"
    assert suppression_event(bounce, T0, added=False).type == "suppression_removed"


async def test_delivered_events_only_for_accounts_that_asked() -> None:
    copy = DeliveryRecord(1, "r1", "acme", "news", "d@x.nl", "delivered", T0)
    assert decision_events([], [copy]) == []
    assert [e.type for e in decision_events([], [copy], frozenset({"acme"}))] == ["delivered"]


async def test_two_instances_number_one_accounts_events_without_gaps_or_repeats(store: Store, second: Store) -> None:
    async def suppress(s: Store, i: int) -> None:
        await s.consent.add_suppression(Suppression(f"p{i}@x.nl", "acme", "*", "unsubscribed", "admin", T0))

    await asyncio.gather(*(suppress(store if i % 2 else second, i) for i in range(40)))
    got = await second.events.after("acme", 0, 1000)
    assert [e.seq for e in got] == list(range(1, 41))
    assert sorted(e.recipient for e in got) == sorted(f"p{i}@x.nl" for i in range(40))


async def test_events_older_than_the_retention_are_purged(store: Store) -> None:
    await store.consent.add_suppression(Suppression("old@x.nl", "acme", "*", "unsubscribed", "admin", T0))
    await store.consent.add_suppression(Suppression("new@x.nl", "acme", "*", "unsubscribed", "admin", T0 + timedelta(days=40)))
    assert await store.events.purge_older_than(T0 + timedelta(days=30)) == 1
    assert await types(store, "acme") == [(2, "suppression_added", "new@x.nl")]
