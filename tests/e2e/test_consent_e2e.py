"""Consent enforcement over SMTP (docs/SPEC.md §4-5): refusals at RCPT when the stream is known early,
at end of DATA otherwise, with the partial-delivery reply; parent scopes; address comparison."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

from policies.facts import ConsentRecord, Suppression
from relay.passwords import hash_password
from tests.conftest import RecordingUpstream, asend, make_config, message

SECRET = "unsubscribe-secret-for-tests-0123456789"


def consent(email: str, *, scope: str = "shop", topic: str = "*", days_ago: int = 30) -> ConsentRecord:
    at = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return ConsentRecord(
        email=email, scope=scope, topic=topic, basis="double_opt_in", source="signup_form",
        collected_at=at, confirmed_at=at, source_url="https://shop.example/signup", source_ip="192.0.2.10",
        statement_text="Ja, stuur mij de wekelijkse nieuwsbrief van Shop", frequency_disclosed=True,
    )


STREAMS = [
    {"id": "orders", "kind": "transactional"},
    {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "envelope_from": ["news@shop.example"]},
]


def config(tmp_path: Path, port: int, **account: Any) -> Any:
    return make_config(
        tmp_path, port,
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
        account={"streams": STREAMS, **account},
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


async def test_rcpt_time_refusals_for_an_all_marketing_account_without_envelope_from(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: mailpro M-prior-consent ; policy: clang E-direct-en-permanent
    # docs/SPEC.md §4: no envelope_from, but every stream is marketing: suppression and "no consent at all
    # for this scope" are final at RCPT; the topic is only known from the header at DATA.
    streams = [
        {"id": "newsletter", "kind": "marketing", "topic": "newsletter"},
        {"id": "offers", "kind": "marketing", "topic": "offers"},
    ]
    relay = await start_relay(
        make_config(
            tmp_path, upstream.port,
            unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
            account={"streams": streams, "default_stream": "newsletter"},
        )
    )
    await seed(relay, consent("anna@example.nl"), consent("carol@example.nl", topic="offers"), consent("dirk@example.nl"))
    await relay.services.store.consent.add_suppression(
        Suppression("dirk@example.nl", "shop", "*", "suppression.unsubscribed", "admin", datetime.now(timezone.utc))
    )
    out = await asend(
        relay.smtp_port, newsletter(sender="orders@shop.example"), mail_from="orders@shop.example",
        rcpts=["anna@example.nl", "bob@example.nl", "carol@example.nl", "dirk@example.nl"],
    )
    assert out.rcpts[0][0] == 250
    assert out.rcpts[1][0] == 550 and "[consent.missing]" in out.rcpts[1][1], out.rcpts
    assert out.rcpts[2][0] == 250  # a consent of this scope, for another topic: decided at DATA
    assert out.rcpts[3][0] == 550 and "[suppression.unsubscribed]" in out.rcpts[3][1], out.rcpts
    assert out.data is not None and out.code == 250
    assert out.text.startswith("2.0.0 Delivered to 1 of") and "carol@example.nl [consent.missing]" in out.text
    assert upstream.recipients() == ["anna@example.nl"]


ADMIN_TOKEN = "consent-admin-token-0123456789"


async def test_consent_for_a_unicode_domain_covers_mail_to_its_ascii_form(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: mailpro M-prior-consent (the same mailbox, however its domain is spelled)
    relay = await start_relay(
        make_config(
            tmp_path, upstream.port,
            unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
            http={"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "ops", "hash": hash_password(ADMIN_TOKEN)}]},
            account={"streams": STREAMS},
        )
    )
    at = (datetime.now(timezone.utc) - timedelta(days=30)).isoformat()
    record = {
        "account": "shop", "email": "Jan@Bücher.Example", "basis": "double_opt_in", "source": "signup_form",
        "collected_at": at, "confirmed_at": at, "source_url": "https://shop.example/signup", "source_ip": "192.0.2.10",
        "statement_text": "Ja, stuur mij de wekelijkse nieuwsbrief van Shop", "frequency_disclosed": True,
    }
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with http.post(f"http://127.0.0.1:{relay.admin_port}/api/consent", json=record) as response:
            assert response.status == 201, await response.text()
    out = await asend(
        relay.smtp_port, newsletter(to="jan@xn--bcher-kva.example"), mail_from="news@shop.example",
        rcpts=["JAN@xn--bcher-kva.example", "piet@xn--bcher-kva.example"],
    )
    assert out.rcpts[0][0] == 250, out.rcpts
    assert out.rcpts[1][0] == 550 and "[consent.missing]" in out.rcpts[1][1]
    assert out.code == 250, out.text
    assert [r.lower() for r in upstream.recipients()] == ["jan@xn--bcher-kva.example"]


async def test_consent_for_an_ascii_domain_covers_a_unicode_recipient_over_smtputf8(tmp_path: Path, start_relay: Any) -> None:
    # policy: mailpro M-prior-consent (the same mailbox, however its domain is spelled)
    upstream = RecordingUpstream(enable_SMTPUTF8=True).start()
    try:
        relay = await start_relay(config(tmp_path, upstream.port))
        await seed(relay, consent("jan@xn--bcher-kva.example"))
        out = await asend(
            relay.smtp_port, newsletter(to="jan@bücher.example"), mail_from="news@shop.example",
            rcpts=["jan@bücher.example", "piet@bücher.example"], mail_options=["SMTPUTF8"],
        )
        assert out.rcpts[0][0] == 250, out.rcpts
        assert out.rcpts[1][0] == 550 and "[consent.missing]" in out.rcpts[1][1]
        assert out.code == 250, out.text
        assert len(upstream.recipients()) == 1 and upstream.recipients()[0].startswith("jan@")
        await relay.recorder.flush()
        (delivery,) = await relay.services.store.decisions.deliveries_to("jan@xn--bcher-kva.example", ["shop"])
        assert delivery.consent_id is not None
    finally:
        upstream.stop()


async def test_transactional_mail_needs_no_consent(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(config(tmp_path, upstream.port))
    out = await asend(relay.smtp_port, message(stream="orders"), rcpts=["stranger@example.org"])
    assert out.code == 250, out.text
