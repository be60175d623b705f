"""relay.engine.body_walks: a campaign's body is walked once for the content rules, and a message
that reuses a walk gets the verdict its own walk would give."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from policies import message as parsed_module
from policies.facts import ConsentRecord
from policies.message import parse_message
from relay.engine.body_walks import BodyWalks
from tests.conftest import asend, make_config, message

SECRET = "unsubscribe-secret-for-tests-0123456789"
STREAMS = [{"id": "orders", "kind": "transactional"}, {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "envelope_from": ["news@shop.example"]}]
CLEAN = "Afmelden: {{unsubscribe_url}}"
ADULT = "Hot XXX porn, adult sex videos for you. Naked. Afmelden: {{unsubscribe_url}}"  # held by strict


def newsletter(subject: str, body: str = CLEAN) -> bytes:
    return message(to="anna@example.nl", subject=subject, stream="newsletter", body=body)


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The raw messages whose bodies were walked."""
    walked: list[bytes] = []
    walk = parsed_module._walk_body

    def counting(raw: bytes, offset: int) -> Any:
        walked.append(raw)
        return walk(raw, offset)

    monkeypatch.setattr(parsed_module, "_walk_body", counting)
    return walked


async def test_a_campaign_body_is_walked_once_and_each_message_gets_its_own_verdict(
    tmp_path: Path, upstream: Any, start_relay: Any, walks: list[bytes]
) -> None:
    config = make_config(
        tmp_path, upstream.port, unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"}, account={"streams": STREAMS}
    )
    relay = await start_relay(config)
    at = datetime.now(timezone.utc) - timedelta(days=30)
    await relay.services.store.consent.upsert_consents(
        [
            ConsentRecord(
                email="anna@example.nl", scope="shop", topic="*", basis="double_opt_in", source="signup_form",
                collected_at=at, confirmed_at=at, source_url="https://shop.example/signup", source_ip="192.0.2.10",
                statement_text="Ja, stuur mij de wekelijkse nieuwsbrief van Shop", frequency_disclosed=True,
            )
        ],
        now=datetime.now(timezone.utc),
    )
    replies = []
    for subject, body in (("Nieuw", CLEAN), ("Nieuwer", CLEAN), ("Nieuwst", CLEAN), ("Nieuw", ADULT), ("Nieuw", CLEAN)):
        out = await asend(relay.smtp_port, newsletter(subject, body), mail_from="news@shop.example", rcpts=["anna@example.nl"])
        replies.append((out.code, out.text))
    # the clean body once, the adult one once; the clean body was still kept for the last message
    assert len(walks) == 2 and b"porn" in walks[1]
    assert [code for code, _ in replies] == [250] * 5
    assert ["Held for review" in text for _, text in replies] == [False, False, False, True, False]
    assert "content.adult" in replies[3][1]
    assert len(upstream.messages) == 4


def test_lend_and_keep() -> None:
    walks = BodyWalks()
    first = parse_message(newsletter("Een"))
    key = walks.lend(first.raw, first)
    assert key is not None and first.body_fields() is None  # nothing kept yet: walked as usual
    first.text
    walks.keep(key, first)
    second = parse_message(newsletter("Twee"))
    assert walks.lend(second.raw, second) == key and second.body_fields() == first.body_fields()
    other = parse_message(newsletter("Drie", body="Iets anders. " + CLEAN))
    walks.keep(walks.lend(other.raw, other), other)  # not walked: nothing to keep
    assert len(walks._fields) == 1
    big = parse_message(newsletter("Groot", body="x " * BodyWalks.MAX_BODY))
    assert walks.lend(big.raw, big) is None


def test_at_most_max_entries_bodies_are_kept_the_least_recently_used_going_first() -> None:
    walks = BodyWalks()
    messages = [parse_message(newsletter("S", body=f"Tekst {n}. " + CLEAN)) for n in range(BodyWalks.MAX_ENTRIES + 1)]
    keys = []
    for m in messages[:-1]:
        keys.append(walks.lend(m.raw, m))
        m.text
        walks.keep(keys[-1], m)
    again = parse_message(messages[0].raw)
    walks.lend(again.raw, again)  # the oldest used again: now the most recent
    last = messages[-1]
    key = walks.lend(last.raw, last)
    last.text
    walks.keep(key, last)
    assert len(walks._fields) == BodyWalks.MAX_ENTRIES
    assert keys[0] in walks._fields and keys[1] not in walks._fields
