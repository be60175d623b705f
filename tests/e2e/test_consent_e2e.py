"""Consent enforcement over SMTP (docs/SPEC.md §4-5): refusals at RCPT when the stream is known early,
at end of DATA otherwise, with the partial-delivery reply; parent scopes; address comparison."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp

from policies.engine import Engine
from policies.facts import ConsentRecord, Suppression
from policies.findings import ReliedConsent, Verdict
from policies.registry import ALL_RULES
from relay.consent.proof import build_proof
from relay.passwords import hash_password
from relay.unsubscribe.tokens import TokenCodec
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


class RelyingOnTheWidestConsent(Engine):
    """The relay's engine, but its outcome names, for each permitted recipient, the recipient's
    every-topic consent rather than the one covering_consent picks (the stream's own topic)."""

    def __init__(self, profile: Any, widest: dict[str, ReliedConsent]) -> None:
        super().__init__(ALL_RULES, profile)
        self.widest = widest

    def message(self, facts: Any, recipients: Any, *, skip: Any = ()) -> Verdict:
        verdict = super().message(facts, recipients, skip=skip)
        return replace(verdict, relied_on={r: self.widest[r] for r in verdict.relied_on})


async def test_the_delivery_record_and_the_copy_take_the_consent_from_the_engines_outcome(
    tmp_path: Path, upstream: Any, start_relay: Any
) -> None:
    # policy: mailpro M-aantoonbaar (the proof names the consent the decision relied on)
    relay = await start_relay(make_config(
        tmp_path, upstream.port, smtp={"helper_process": False},  # the verdict comes from services.engine
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"}, account={"streams": STREAMS},
    ))
    for address in ("anna@example.nl", "bob@example.nl"):
        await seed(relay, consent(address, topic="newsletter"), consent(address, topic="*"))
    found = await relay.services.store.consent.find_consents(["shop"], ["anna@example.nl", "bob@example.nl"])
    ids = {(c.email, c.topic): c.id for rows in found.values() for c in rows}
    codec = TokenCodec(relay.services.config.unsubscribe.secrets)

    def unsubscribe_claims(address: str) -> tuple[str, str]:
        (copy,) = [m for m in upstream.messages if m.rcpt_tos == [address]]
        value = " ".join(str(message_from_bytes(copy.content)["List-Unsubscribe"]).split())
        claims = codec.verify(value.split("/u/", 1)[1].split(">", 1)[0])
        assert claims is not None
        return claims.scope, claims.topic

    # The engine's own outcome: the consent for the stream's topic, as the record always showed.
    out = await asend(relay.smtp_port, newsletter(to="anna@example.nl"), mail_from="news@shop.example", rcpts=["anna@example.nl"])
    assert out.code == 250, out.text
    await relay.recorder.flush()
    (delivery,) = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
    assert (delivery.consent_id, delivery.scope, delivery.topic) == (int(ids["anna@example.nl", "newsletter"]), "shop", "newsletter")
    assert unsubscribe_claims("anna@example.nl") == ("shop", "newsletter")

    # An outcome naming another consent: the record, the proof and the unsubscribe follow it (the
    # shell no longer picks a consent of its own).
    widest = {"bob@example.nl": ReliedConsent(ids["bob@example.nl", "*"], "shop", "*")}
    relay.services.engine = RelyingOnTheWidestConsent(relay.services.engine.profile, widest)
    out = await asend(relay.smtp_port, newsletter(to="bob@example.nl"), mail_from="news@shop.example", rcpts=["bob@example.nl"])
    assert out.code == 250, out.text
    await relay.recorder.flush()
    (delivery,) = await relay.services.store.decisions.deliveries_to("bob@example.nl", ["shop"])
    assert (delivery.consent_id, delivery.scope, delivery.topic) == (int(ids["bob@example.nl", "*"]), "shop", "*")
    proof = await build_proof(relay.services, "bob@example.nl", "shop")
    assert [d["consent_id"] for d in proof["deliveries"]] == [ids["bob@example.nl", "*"]]
    assert unsubscribe_claims("bob@example.nl") == ("shop", "*")
