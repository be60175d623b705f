"""The consent the consent rules rely on is picked once per recipient and message (issue 20), for
those facts only: RCPT-time facts and end-of-DATA facts never share a pick."""

from __future__ import annotations

import gc
import pickle
import weakref
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from policies.engine import Engine
from policies.facts import AccountFacts, ConsentRecord, MessageFacts, RecipientFacts, StreamFacts
from policies.findings import Action
from policies.profiles import load_profile
from policies.rules import consent
from policies.rules.consent import covering_consent

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
SHOP = AccountFacts(id="shop", parent="holding", domains=frozenset({"shop.example"}))
NEWS = StreamFacts("newsletter", "marketing", "newsletter")
ANY = StreamFacts("newsletter", "marketing", "*")  # RCPT on an all-marketing account: topic not known yet


def documented(address: str, **changes: Any) -> ConsentRecord:
    base = ConsentRecord(
        email=address, scope="shop", topic="*", basis="double_opt_in", source="signup_form",
        collected_at=NOW - timedelta(days=30), source_url="https://shop.example/signup", source_ip="192.0.2.7",
        confirmed_at=NOW - timedelta(days=30), statement_text="Yes, send me the Shop newsletter every week",
        frequency_disclosed=True, id="1",
    )
    return replace(base, **changes)


def facts(stream: StreamFacts = NEWS) -> MessageFacts:
    return MessageFacts(account=SHOP, mail_from="news@shop.example", now=NOW, params=load_profile("strict").params, stream=stream)


def recipients(count: int) -> list[RecipientFacts]:
    return [
        RecipientFacts(
            f"r{n}@example.nl",
            (
                documented(f"r{n}@example.nl", scope="holding", id=f"p{n}"),
                documented(f"r{n}@example.nl", topic="newsletter", id=f"s{n}", source="purchased"),
            ),
        )
        for n in range(count)
    ]


def test_each_candidate_is_judged_once_per_recipient_and_message(monkeypatch: pytest.MonkeyPatch) -> None:
    judged: list[str] = []
    real = consent.record_findings

    def counting(record: ConsentRecord, params: Any, *, now: datetime | None = None) -> list[tuple[str, str]]:
        judged.append(record.id)
        return real(record, params, now=now)

    monkeypatch.setattr(consent, "record_findings", counting)
    rcpts = recipients(10)
    verdict = Engine(consent.RULES, load_profile("strict")).message(facts(), rcpts)
    # Two covering consents each: both judged once, by the pick that stale, the eight record rules
    # and Verdict.relied_on share (it was ranked again for every one of them).
    assert sorted(judged) == sorted(c.id for r in rcpts for c in r.consents)
    # The same outcome as ever: the parent's documented consent beats the own scope's purchased one.
    assert {a: r.id for a, r in verdict.relied_on.items()} == {f"r{n}@example.nl": f"p{n}" for n in range(10)}
    assert not [f for f in verdict.findings if f.action is Action.REJECT]


def test_other_facts_get_their_own_pick() -> None:
    other_topic = documented("anna@example.nl", topic="sale", id="own-sale")
    parent_any = documented("anna@example.nl", scope="holding", id="parent-any")
    rcpt = RecipientFacts("anna@example.nl", (other_topic, parent_any))
    # At RCPT the topic is not known: both cover, the account's own scope wins.
    assert covering_consent(facts(ANY), rcpt) == other_topic
    # At end of DATA the same recipient facts meet the stream's topic: only the parent's '*' covers.
    at_data = facts(NEWS)
    assert covering_consent(at_data, rcpt) == parent_any
    assert Engine(consent.RULES, load_profile("strict")).message(at_data, [rcpt]).relied_on[rcpt.address].id == "parent-any"
    # Equal but new facts (a second message): picked again, the same way.
    assert covering_consent(facts(ANY), rcpt) == other_topic


def test_the_memo_keeps_no_message_alive_and_is_not_pickled() -> None:
    (rcpt,) = recipients(1)
    message_facts = facts()
    assert covering_consent(message_facts, rcpt) is not None
    gone = weakref.ref(message_facts)
    del message_facts
    gc.collect()
    assert gone() is None
    # The shell sends recipient facts evaluated at RCPT to the helper process at end of DATA.
    copy = pickle.loads(pickle.dumps(rcpt))
    assert copy == rcpt and "_derived" not in vars(copy)
    assert covering_consent(facts(), copy) == covering_consent(facts(), rcpt)
