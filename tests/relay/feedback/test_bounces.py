"""VERP and DSNs against a real relay (docs/SPEC.md §15): marketing copies leave with bounce+ID@, genuine
DSNs written by others (tests/corpus/feedback/dsn, origins in SOURCES) sent to that address from
any client are matched to their delivery, hard bounces suppress at the next RCPT with 550 5.1.1,
soft ones are counted; listed, counted in metrics, shown in the proof, forwarded, liftable."""

from __future__ import annotations

import asyncio
import email
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Clocked, RecordingUpstream, asend, message
from test_complaints import (  # noqa: F401 (fixtures)
    ANNA,
    APP,
    T0,
    Admin,
    admin,
    clocked,
    copy_to,
    give_consent,
    metric,
    relay_config,
)

from policies.dsn import parse_dsn
from relay.cli import main as cli
from relay.config import load_config
from relay.store.records import DecisionRecord, DeliveryRecord

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

DSN = sorted((Path(__file__).resolve().parents[2] / "corpus" / "feedback" / "dsn").glob("*.eml"))
NEWS = "news@shop.example"
# file -> kind recorded for the delivery it names (first of a row of permanent failures: soft)
EXPECTED = {
    "bounceparser-exchange.unknown.eml": "hard",  # Exchange "Unknown Recipient", no status code
    "bounceparser-hotmail-via-sendmail.unknown.eml": "hard",
    "bounceparser-postfix-smtp-550.eml": "soft",  # 5.0.0: permanent, not yet a dead mailbox
    "bounceparser-quota.eml": "soft",
    "flufl-aol_01.eml": "soft",
    "flufl-dsn_01.eml": "soft",
    "flufl-dsn_05.eml": "soft",  # delayed 4.4.1
    "flufl-dsn_09.eml": "soft",
    "flufl-exim_01.eml": "hard",
    "flufl-groupwise_01.eml": "soft",
    "flufl-hotpop_01.eml": "soft",
    "flufl-microsoft_01.eml": "hard",
    "flufl-postfix_01.eml": "hard",
    "flufl-qmail_01.eml": "soft",
    "flufl-sendmail_01.eml": "soft",
    "flufl-simple_01.eml": "soft",
    "sisimai-lhost-exchange2007-01.eml": "hard",
    "sisimai-lhost-gmail-01.eml": "hard",
    "sisimai-lhost-outlook-01.eml": "soft",  # 5.2.2 mailbox full
    "sisimai-lhost-postfix-01.eml": "hard",
    "sisimai-lhost-yahoo-01.eml": "unknown",  # nothing a detector can read: kept for review
}


@pytest.fixture
async def relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    streams = [
        {"id": "orders", "kind": "transactional"},
        {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "envelope_from": [NEWS]},
    ]
    path = relay_config(tmp_path, upstream, store_url, account={"bounce_forward": "bounces@shop.example", "streams": streams})
    relay = await start_relay(load_config(path), clock=clocked.clock())
    await give_consent(relay, ANNA)
    return relay


def newsletter(to: str = ANNA) -> bytes:
    return message(sender=NEWS, to=to, subject="De zomercollectie",
                   body="Beste lezer,\r\n\r\nDe zomercollectie is binnen.\r\n\r\nAfmelden: {{unsubscribe_url}}")


async def send_newsletter(relay: Any, to: str = ANNA) -> Any:
    return await asend(relay.smtp_port, newsletter(to), mail_from=NEWS, rcpts=[to], login=APP)


async def dsn_to(relay: Any, address: str, raw: bytes) -> Any:
    # A remote MTA: no AUTH, no trusted network, the null sender.
    return await asend(relay.smtp_port, raw, mail_from="", rcpts=[address], source="127.0.0.2")


def verp_of(upstream: RecordingUpstream, rcpt: str) -> str:
    return next(m.mail_from for m in reversed(upstream.messages) if m.rcpt_tos == [rcpt])


def codec(relay: Any) -> Any:
    from relay.feedback.bounces_feature import BouncesFeature

    return next(f for f in relay.features if isinstance(f, BouncesFeature)).codec


# --- VERP -------------------------------------------------------------------------------------


async def test_marketing_copies_leave_with_a_verp_sender_transactional_ones_do_not(relay: Any, upstream: RecordingUpstream) -> None:
    assert (await send_newsletter(relay)).code == 250
    sender = verp_of(upstream, ANNA)
    local, _, domain = sender.partition("@")
    assert domain == "relay.test" and local.startswith("bounce+") and len(local) <= 64 and local == local.lower(), sender
    await relay.recorder.flush()
    delivery = (await relay.services.store.decisions.deliveries_to(ANNA, ["shop"]))[0]
    assert codec(relay).verify_bounce(local[len("bounce+"):]) == delivery.id
    assert codec(relay).verify_mailto(local[len("bounce+"):]) is None  # not the unsubscribe token
    assert (await asend(relay.smtp_port, message(to="bob@example.nl"), rcpts=["bob@example.nl"], login=APP)).code == 250
    assert verp_of(upstream, "bob@example.nl") == "orders@shop.example"


async def test_verp_off_keeps_the_applications_sender(
    store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    path = relay_config(tmp_path, upstream, store_url)
    path.write_text(path.read_text() + "[bounces]\nverp = false\n")
    relay = await start_relay(load_config(path))
    await give_consent(relay, ANNA)
    out = await asend(relay.smtp_port, newsletter().replace(b"MIME-Version", b"X-Relay-Stream: newsletter\r\nMIME-Version"),
                      mail_from=NEWS, login=APP)
    assert out.code == 250, out
    assert verp_of(upstream, ANNA) == NEWS


async def test_verp_transactional_gives_each_recipient_its_own_sender(
    store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    path = relay_config(tmp_path, upstream, store_url)
    path.write_text(path.read_text() + "[bounces]\nverp_transactional = true\n")
    relay = await start_relay(load_config(path))
    out = await asend(relay.smtp_port, message(), rcpts=[ANNA, "bob@example.nl"], login=APP)
    assert out.code == 250, out
    senders = {m.rcpt_tos[0]: m.mail_from for m in upstream.messages}
    assert set(senders) == {ANNA, "bob@example.nl"} and len(set(senders.values())) == 2
    assert all(s.startswith("bounce+") and s.endswith("@relay.test") for s in senders.values()), senders
    # A bounce from the application's own MTA keeps its null sender.
    bounce = await asend(relay.smtp_port, message(sender="orders@shop.example"), mail_from="", rcpts=["orders@shop.example"], login=APP)
    assert bounce.code == 250 and upstream.messages[-1].mail_from in ("", "<>")


# --- DSNs ------------------------------------------------------------------------------------


def test_the_dsn_corpus_is_accounted_for() -> None:
    assert {p.name for p in DSN} == set(EXPECTED) and len(DSN) >= 10


async def seed_delivery(relay: Any, email_address: str) -> int:
    at = T0 - timedelta(hours=1)
    (delivery_id,) = [await relay.services.store.decisions.reserve_ids("deliveries", 1)]
    await relay.services.store.decisions.record(
        [DecisionRecord("r1", "delivered", at, "<m@shop.example>", "shop", "newsletter")],
        [DeliveryRecord(delivery_id, "r1", "shop", "newsletter", email_address, "delivered", at, "<m@shop.example>", "shop", "*")],
    )
    return int(delivery_id)


@pytest.mark.parametrize("path", DSN, ids=[p.name for p in DSN])
async def test_a_genuine_dsn_to_its_verp_address(relay: Any, upstream: RecordingUpstream, path: Path) -> None:
    # policy: mailpro M-18-maanden (list hygiene) — suppression.bounced for a dead mailbox
    raw = path.read_bytes()
    report = parse_dsn(raw)
    named = report.recipients[0].address if report.recipients and report.recipients[0].address else "someone@example.org"
    delivery_id = await seed_delivery(relay, named)
    out = await dsn_to(relay, f"bounce+{codec(relay).issue_bounce(delivery_id)}@relay.test", raw)
    kind = EXPECTED[path.name]
    assert out.code == 250 and out.text.endswith(f"recorded ({kind})"), out
    (bounce,) = await relay.services.store.bounces.list()
    assert (bounce.account, bounce.email, bounce.kind, bounce.delivery_id) == ("shop", named, kind, delivery_id)
    assert await relay.services.store.bounces.report(bounce.id) is not None
    found = await relay.services.store.consent.find_suppressions(["shop"], [named])
    assert {s.reason for s in found.get(named, [])} == ({"suppression.bounced"} if kind == "hard" else set())
    assert metric(relay, "consent_relay_bounces_total", account="shop", kind=kind) == 1


async def test_hard_bounce_end_to_end(relay: Any, upstream: RecordingUpstream, admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    # policy: mailpro M-18-maanden (list hygiene) — suppression.bounced at the next RCPT, 550 5.1.1
    assert (await send_newsletter(relay)).code == 250
    verp = verp_of(upstream, ANNA)
    genuine = (Path(DSN[0]).parent / "flufl-postfix_01.eml").read_bytes()  # 5.1.1 for another address
    out = await dsn_to(relay, verp, genuine)
    assert out.code == 250 and out.text.endswith("recorded (hard)"), out
    refused = await send_newsletter(relay)
    assert refused.rcpts == [(550, refused.rcpts[0][1])] and refused.rcpts[0][1].startswith("5.1.1 [suppression.bounced]"), refused
    # Transactional mail still reaches the address (the suppression is for marketing).
    assert (await asend(relay.smtp_port, message(to=ANNA), rcpts=[ANNA], login=APP)).code == 250

    status, body = await admin.call("GET", "/api/bounces?account=shop")
    assert status == 200 and [(b["email"], b["kind"], b["status"]) for b in body["items"]] == [(ANNA, "hard", "5.1.1")]
    assert (await admin.call("GET", "/api/bounces?kind=nonsense"))[0] == 422
    status, proof = await admin.call("GET", f"/api/consent/{ANNA}/proof?account=shop")
    assert status == 200 and [b["kind"] for b in proof["bounces"]] == ["hard"]
    assert "suppression.bounced" in {s["reason"] for s in proof["suppressions"]}

    forwarded = [m for m in upstream.messages if m.rcpt_tos == ["bounces@shop.example"]]
    assert len(forwarded) == 1 and forwarded[0].mail_from in ("", "<>")
    parsed = email.message_from_bytes(forwarded[0].content)
    assert parsed["Subject"] == "Bounce 1 (hard) about mail from account shop"

    cfg = str(relay.config.path)
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["bounce", "list", "--account", "shop", "--json", "-c", cfg]) == 0
    assert [b["kind"] for b in json.loads(capsys.readouterr().out)] == ["hard"]
    # An admin lifts it (audited); the next newsletter goes out.
    args = ["suppression", "remove", ANNA, "--account", "shop", "--reason", "bounced", "--note", "address fixed", "-c", cfg]
    assert await asyncio.to_thread(cli.main, args) == 0
    audit = await relay.services.store.audit.list(target="shop")
    assert any(e.action == "suppression.remove" and e.detail.get("reason") == "suppression.bounced" for e in audit)
    assert (await send_newsletter(relay)).code == 250


async def test_other_permanent_failures_become_hard_at_the_limit(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: mailpro M-18-maanden — hard_limit (3) other 5.x.x failures within window_days
    genuine = (Path(DSN[0]).parent / "bounceparser-postfix-smtp-550.eml").read_bytes()  # 5.0.0
    kinds = []
    for _ in range(3):
        assert (await send_newsletter(relay)).code == 250
        kinds.append((await dsn_to(relay, verp_of(upstream, ANNA), genuine)).text.rsplit("(", 1)[1])
    assert kinds == ["soft)", "soft)", "hard)"]
    assert (await send_newsletter(relay)).rcpts[0][0] == 550


@pytest.mark.parametrize("what", ["garbage", "huge", "zip bomb", "no headers"])
async def test_bad_dsns_get_a_clean_reply_and_are_kept(relay: Any, upstream: RecordingUpstream, what: str) -> None:
    import base64
    import io
    import zipfile

    assert (await send_newsletter(relay)).code == 250
    verp = verp_of(upstream, ANNA)
    if what == "garbage":
        raw = bytes(range(1, 256)) * 40  # NUL is refused at DATA by the SMTP layer itself
    elif what == "huge":
        raw = b"Subject: x\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n" + b"--b\r\n" * 200_000
    elif what == "zip bomb":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("bomb.txt", b"\0" * 50_000_000)
        raw = (b"Subject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n"
               b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(buffer.getvalue()) + b"\r\n--z--\r\n")
    else:
        raw = b"\r\njust a body line\r\n"
    out = await dsn_to(relay, verp, raw)
    assert out.code == 250 and out.text.endswith("recorded (unknown)"), out
    (bounce,) = await relay.services.store.bounces.list(kind="unknown")
    assert bounce.email == ANNA and await relay.services.store.bounces.report(bounce.id)
    assert (await send_newsletter(relay)).code == 250  # still serving, nothing suppressed


async def test_a_forged_verp_address_is_not_ours(relay: Any) -> None:
    out = await dsn_to(relay, "bounce+aaaaaaaaaaaaaaaaaaaaaaaaaaaa@relay.test", b"Subject: x\r\n\r\nx\r\n")
    assert out.final[0] == 550 and "[relay.denied]" in out.final[1], out
