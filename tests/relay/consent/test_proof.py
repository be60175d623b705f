"""Proof of consent: the exact provenance stored, the suppressions, and the deliveries with their consent."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

import pytest

from policies.facts import ConsentRecord, Suppression
from relay.cli import main as cli
from relay.config import build_config
from relay.consent.proof import build_proof, render_proof_text
from relay.services import Clock, Services
from relay.store.records import DecisionRecord, DeliveryRecord

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
RECORD = ConsentRecord(
    email="anna@example.nl",
    scope="holding",
    topic="newsletter",
    basis="double_opt_in",
    source="signup_form",
    collected_at=datetime(2025, 11, 3, 14, 21, 7, tzinfo=timezone.utc),
    source_url="https://shop.example/nieuwsbrief?utm=x",
    source_ip="2001:db8::42",
    confirmed_at=datetime(2025, 11, 3, 14, 25, 51, tzinfo=timezone.utc),
    statement_text="Ja, stuur mij elke vrijdag de nieuwsbrief van Shop B.V.",
    co_registration_partners="",
    frequency_disclosed=True,
    last_interaction_at=datetime(2026, 2, 1, 8, 0, tzinfo=timezone.utc),
)
CUSTOMER = ConsentRecord(
    email="anna@example.nl",
    scope="shop",
    topic="bikes",
    basis="existing_customer",
    source="customer_purchase",
    collected_at=datetime(2025, 6, 1, tzinfo=timezone.utc),
    customer_relationship="bought a city bike (order 1234)",
    last_purchase_at=datetime(2025, 6, 1, tzinfo=timezone.utc),
    informed_at_collection=True,
    objection_offered=True,
)


def _config(tmp_path: Path) -> dict[str, object]:
    return {
        "store": {"url": f"sqlite:///{tmp_path}/relay.db"},
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"]},
        "accounts": [
            {
                "id": "shop",
                "domains": ["shop.example"],
                "parent": "holding",
                "default_stream": "newsletter",
                "streams": [{"id": "newsletter", "kind": "marketing"}],
            }
        ],
    }


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    s = Services.build(build_config(_config(tmp_path), tmp_path / "config.toml"), clock=Clock(now=lambda: NOW))
    await s.store.open()
    await s.store.consent.upsert_consents([RECORD, CUSTOMER], now=NOW - timedelta(days=30))
    await s.store.consent.add_suppression(
        Suppression("anna@example.nl", "shop", "bikes", "suppression.unsubscribed", "one_click", NOW - timedelta(days=2))
    )
    consent_id = int(next(c for c in (await s.store.consent.find_consents(["holding"], ["anna@example.nl"]))["anna@example.nl"]).id)
    await s.store.decisions.record(
        [DecisionRecord("r-1", "deliver", NOW - timedelta(days=5), "<m1@shop.example>", "shop", "newsletter")],
        [
            DeliveryRecord(
                7, "r-1", "shop", "newsletter", "anna@example.nl", "delivered", NOW - timedelta(days=5),
                "<m1@shop.example>", "holding", "newsletter", consent_id,
            )
        ],
    )
    yield s
    await s.store.close()


async def test_proof_json_has_exact_provenance(services: Services) -> None:
    proof = await build_proof(services, "ANNA@example.nl", "shop")
    assert proof["email"] == "anna@example.nl" and proof["account"] == "shop"
    by_scope = {c["scope"]: c for c in proof["consents"]}
    stored = by_scope["holding"]
    for name in ("topic", "basis", "source", "source_url", "source_ip", "statement_text", "frequency_disclosed", "prechecked"):
        assert stored[name] == getattr(RECORD, name), name
    assert datetime.fromisoformat(stored["collected_at"]) == RECORD.collected_at
    assert datetime.fromisoformat(stored["confirmed_at"]) == RECORD.confirmed_at
    assert by_scope["shop"]["customer_relationship"] == CUSTOMER.customer_relationship
    assert set(stored) >= {
        "email", "scope", "topic", "basis", "source", "collected_at", "source_url", "source_ip", "confirmed_at",
        "statement_text", "co_registration_partners", "prechecked", "frequency_disclosed", "customer_relationship",
        "last_purchase_at", "informed_at_collection", "objection_offered", "email_contact_announced",
        "last_interaction_at", "revoked_at", "revoked_via", "created_at", "updated_at", "id",
    }
    assert [(s["reason"], s["topic"]) for s in proof["suppressions"]] == [("suppression.unsubscribed", "bikes")]
    assert proof["deliveries"] == [
        {
            "relay_id": "r-1",
            "message_id": "<m1@shop.example>",
            "stream": "newsletter",
            "delivered_at": (NOW - timedelta(days=5)).isoformat(timespec="microseconds"),
            "consent_id": stored["id"],
            "status": "delivered",
            "scope": "holding",
            "topic": "newsletter",
        }
    ]
    json.dumps(proof)


async def test_proof_text_answers_the_complaint_questions(services: Services) -> None:
    text = render_proof_text(await build_proof(services, "anna@example.nl", "shop"))
    for expected in (
        "When was the address collected?            2025-11-03 14:21:07 UTC",
        "a signup form on the sender's website",
        "Through a third party?                     no",
        "https://shop.example/nieuwsbrief?utm=x",
        "2001:db8::42",
        "double opt-in",
        "Confirmed (double opt-in) at:              2025-11-03 14:25:51 UTC",
        "Ja, stuur mij elke vrijdag de nieuwsbrief van Shop B.V.",
        "Sending frequency disclosed:               yes",
        "bought a city bike (order 1234)",
        "Offered an (immediate) objection:          yes",
        "unsubscribed on 2026-03-13 12:00:00 UTC via one_click, scope shop, topic bikes",
        "message-id <m1@shop.example>",
    ):
        assert expected in text, expected
    consent_id = next(c["id"] for c in (await build_proof(services, "anna@example.nl", "shop"))["consents"] if c["scope"] == "holding")
    assert f"under consent #{consent_id}" in text


def test_proof_cli_formats(tmp_path: Path, services: Services, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/relay.db"\n'
        '[unsubscribe]\nsecrets = ["unsubscribe-secret-for-tests-0123456789"]\n'
        '[[accounts]]\nid = "shop"\nparent = "holding"\ndomains = ["shop.example"]\ndefault_stream = "newsletter"\n'
        '[[accounts.streams]]\nid = "newsletter"\nkind = "marketing"\n'
    )
    assert cli.main(["consent", "proof", "anna@example.nl", "--account", "shop", "-c", str(cfg), "--format", "json"]) == 0
    proof = json.loads(capsys.readouterr().out)
    assert {c["source_ip"] for c in proof["consents"]} == {"2001:db8::42", ""}
    assert cli.main(["consent", "proof", "anna@example.nl", "--account", "shop", "-c", str(cfg)]) == 0
    assert "IP address of the address's owner:         2001:db8::42" in capsys.readouterr().out
