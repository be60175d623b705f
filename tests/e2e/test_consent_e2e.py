"""Consent enforcement over SMTP (SPEC §4-5): refusals at RCPT when the stream is known early,
at end of DATA otherwise, with the partial-delivery reply; parent scopes; address comparison."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from policies.facts import ConsentRecord, Suppression
from tests.conftest import asend, make_config, message

SECRET = "unsubscribe-secret-for-tests-0123456789"


def consent(email: str, *, scope: str = "shop", topic: str = "*", days_ago: int = 30) -> ConsentRecord:
    at = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return ConsentRecord(
        email=email, scope=scope, topic=topic, basis="double_opt_in", source="signup_form",
        collected_at=at, confirmed_at=at, source_url="https://shop.example/signup", source_ip="192.0.2.10",
        statement_text="Ja, stuur mij de wekelijkse nieuwsbrief van Shop", frequency_disclosed=True,
    )


def config(tmp_path: Path, port: int, **account: Any) -> Any:
    streams = [
        {"id": "orders", "kind": "transactional"},
        {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "envelope_from": ["news@shop.example"]},
    ]
    return make_config(
        tmp_path, port,
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
        account={"streams": streams, **account},
    )


def newsletter(to: str = "anna@example.nl", sender: str = "news@shop.example") -> bytes:
    return message(sender=sender, to=to, subject="Nieuwe collectie", stream="newsletter", body="Afmelden: {{unsubscribe_url}}")


async def seed(relay: Any, *records: ConsentRecord) -> None:
    await relay.services.store.consent.upsert_consents(list(records), now=datetime.now(timezone.utc))


async def test_rcpt_time_refusals_when_the_envelope_sender_names_the_stream(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: mailpro M-prior-consent ; policy: clang E-direct-en-permanent
    relay = await start_relay(config(tmp_path, upstream.port))
    await seed(relay, consent("anna@example.nl"), consent("dirk@example.nl"))
    await relay.services.store.consent.add_suppression(
        Suppression("dirk@example.nl", "shop", "*", "suppression.unsubscribed", "admin", datetime.now(timezone.utc))
    )
    out = await asend(
        relay.smtp_port, newsletter(), mail_from="news@shop.example",
        rcpts=["anna@example.nl", "bob@example.nl", "dirk@example.nl"],
    )
    codes = [(c, t.split("]")[0] + "]" if "[" in t else t) for c, t in out.rcpts]
    assert codes[0][0] == 250
    assert codes[1][0] == 550 and "[consent.missing]" in out.rcpts[1][1]
    assert codes[2][0] == 550 and "[suppression.unsubscribed]" in out.rcpts[2][1]
    assert out.data is not None and out.data[0] == 250
    assert upstream.recipients() == ["anna@example.nl"]
    await relay.recorder.flush()
    rows = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
    assert rows and rows[0].consent_id is not None  # the proof knows which consent it relied on


async def test_data_time_refusals_give_the_partial_delivery_reply(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: clang E-who-not ("24 maanden") ; policy: mailpro M-prior-consent
    relay = await start_relay(config(tmp_path, upstream.port))
    await seed(relay, consent("anna@example.nl"), consent("carol@example.nl", days_ago=800))
    # orders@ is not in envelope_from: the stream is only known from the header at DATA.
    out = await asend(
        relay.smtp_port, newsletter(sender="orders@shop.example"), mail_from="orders@shop.example",
        rcpts=["anna@example.nl", "bob@example.nl", "carol@example.nl"],
    )
    assert [c for c, _ in out.rcpts] == [250, 250, 250]
    assert out.code == 250
    assert out.text.startswith("2.0.0 Delivered to 1 of 3 recipients; refused:")
    assert "bob@example.nl [consent.missing]" in out.text
    assert "carol@example.nl [consent.stale]" in out.text
    assert upstream.recipients() == ["anna@example.nl"]


async def test_every_recipient_refused_at_data_is_a_550_naming_the_first_rule(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(config(tmp_path, upstream.port))
    out = await asend(
        relay.smtp_port, newsletter(sender="orders@shop.example"), mail_from="orders@shop.example",
        rcpts=["bob@example.nl", "eve@example.nl"],
    )
    assert out.code == 550 and out.text.startswith("5.7.1 [consent.missing]")
    assert upstream.messages == []


async def test_parent_scope_consent_covers_the_account(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: clang E-subscription-level
    relay = await start_relay(config(tmp_path, upstream.port, parent="holding"))
    await seed(relay, consent("anna@example.nl", scope="holding"), consent("bob@example.nl", scope="other-org"))
    out = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.rcpts[0][0] == 250
    assert out.rcpts[1][0] == 550 and "[consent.missing]" in out.rcpts[1][1]
    assert upstream.recipients() == ["anna@example.nl"]


async def test_topic_consent_covers_only_its_stream(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(config(tmp_path, upstream.port))
    await seed(relay, consent("anna@example.nl", topic="newsletter"), consent("bob@example.nl", topic="promotions"))
    out = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.rcpts[0][0] == 250 and out.rcpts[1][0] == 550


async def test_addresses_compare_case_insensitively_with_idna_and_tags_distinct(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(config(tmp_path, upstream.port))
    await seed(relay, consent("anna@example.nl"), consent("jan@xn--bcher-kva.example"))
    out = await asend(
        relay.smtp_port, newsletter(), mail_from="news@shop.example",
        rcpts=["Anna@EXAMPLE.nl", "anna+promo@example.nl", "jan@xn--bcher-kva.example"],
    )
    assert [c for c, _ in out.rcpts] == [250, 550, 250]


async def test_transactional_mail_needs_no_consent(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(config(tmp_path, upstream.port))
    out = await asend(relay.smtp_port, message(stream="orders"), rcpts=["stranger@example.org"])
    assert out.code == 250, out.text
