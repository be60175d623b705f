"""Complaints against a real relay (docs/SPEC.md §9): feedback reports by mail to fbl@, by the API and by
the CLI; mapping to the delivered copy, immediate suppression, the forward to the abuse contact
through a real upstream, the 24 h deadline driven by an injected clock, the complaint rate at its
boundary, and `account resume`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import smtplib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import aiohttp
import pytest
import structlog
from conftest import (
    BODY_FOOTER,
    PASSWORD,
    Clocked,
    RecordingUpstream,
    asend,
    base_account,
    config_dict,
    message,
    until,
    write_config,
)

from policies.facts import ConsentRecord
from relay.accounts import change_account_state
from relay.cli import main as cli
from relay.config import load_config
from relay.passwords import hash_password
from relay.store.records import DecisionRecord, DeliveryRecord

# relay/http/admin.py stores the admin label under a str request key; aiohttp warns once per process.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

T0 = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
SECRET = "complaint-test-secret-0123456789"
TOKEN = "admin-token-for-complaint-tests"
TOKEN_HASH = hash_password(TOKEN)
APP = ("shop", PASSWORD)
ANNA, BOB = "anna@example.nl", "bob@example.nl"
BOUNDARY = "fbl-boundary-7"


@pytest.fixture
def clocked() -> Clocked:
    return Clocked(T0)


def relay_config(
    tmp_path: Path,
    upstream: RecordingUpstream,
    store_url: str,
    *,
    accounts: Sequence[dict[str, Any]] = (),
    trusted_networks: Sequence[str] = (),
    account: dict[str, Any] | None = None,
    **complaints: Any,
) -> Path:
    data = config_dict(
        tmp_path,
        upstream.port,
        store={"url": store_url},
        smtp={"auth_require_tls": False},
        http={"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "alice", "hash": TOKEN_HASH}]},
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
        # The application authenticates: a feedback loop's MTA is no trusted client of any account.
        account={"trusted_networks": list(trusted_networks), **(account or {})},
        complaints={
            "ack_deadline_hours": 24, "rate_threshold": 0.01, "rate_min_complaints": 3,
            # The feedback loop's MTA: reports from 127.0.0.1 are verified (docs/SPEC.md §16); 127.0.0.2 is a stranger.
            "sources": [{"name": "isp", "networks": ["127.0.0.1/32"]}],
            **complaints,
        },
    )
    data["accounts"] += [dict(a) for a in accounts]
    return write_config(tmp_path, data)


@pytest.fixture
async def relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    # store_url first: its schema is dropped only after the relay stopped and flushed its decisions
    relay = await start_relay(load_config(relay_config(tmp_path, upstream, store_url)), clock=clocked.clock())
    await give_consent(relay, ANNA, BOB, "carl@example.nl", "dora@example.nl")
    return relay


async def give_consent(relay: Any, *emails: str) -> None:
    await relay.services.store.consent.upsert_consents(
        [
            ConsentRecord(
                email=e, scope="shop", topic="*", basis="double_opt_in", source="signup_form",
                collected_at=T0 - timedelta(days=10), confirmed_at=T0 - timedelta(days=10),
                source_url="https://shop.example/signup", source_ip="198.51.100.4",
                statement_text="Yes, send me the Shop newsletter every Friday", frequency_disclosed=True,
            )
            for e in emails
        ],
        now=T0,
    )


def newsletter(subject: str = "De zomercollectie is binnen") -> bytes:
    return message(
        sender="news@shop.example",
        subject=subject,
        stream="newsletter",
        body="Beste lezer,\r\n\r\nDe zomercollectie is binnen.\r\n\r\nAfmelden: {{unsubscribe_url}}",
    )


async def send_newsletter(relay: Any, *rcpts: str) -> Any:
    return await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=list(rcpts), login=APP)


def arf(
    original: bytes,
    *,
    feedback_type: str = "abuse",
    rcpt_to: str | None = None,
    headers_only: bool = False,
) -> bytes:
    """A feedback report as a mailbox provider sends it, about one copy the upstream received."""
    fields = f"Feedback-Type: {feedback_type}\r\nUser-Agent: ExampleFBL/2.1\r\nVersion: 1\r\n"
    if rcpt_to:
        fields += f"Original-Rcpt-To: <{rcpt_to}>\r\n"
    fields += "Arrival-Date: Sun, 15 Mar 2026 12:00:30 +0000\r\nSource-IP: 192.0.2.25\r\n"
    if headers_only:
        original = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    kind = "text/rfc822-headers" if headers_only else "message/rfc822"
    return (
        b"From: <feedback@isp.example>\r\nTo: <fbl@relay.test>\r\nSubject: Complaint about message\r\n"
        b"MIME-Version: 1.0\r\n"
        + f'Content-Type: multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"\r\n\r\n'.encode()
        + f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\r\n".encode()
        + f"--{BOUNDARY}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n".encode()
        + f"--{BOUNDARY}\r\nContent-Type: {kind}\r\nContent-Disposition: inline\r\n\r\n".encode()
        + original
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def copy_to(upstream: RecordingUpstream, rcpt: str) -> bytes:
    return next(m.content for m in reversed(upstream.messages) if m.rcpt_tos == [rcpt])


def forwards(upstream: RecordingUpstream) -> list[Any]:
    return [m for m in upstream.messages if m.rcpt_tos == ["abuse@shop.example"]]


async def report_by_mail(relay: Any, raw: bytes, to: str = "fbl@relay.test") -> Any:
    # Any client may write to the feedback address: no AUTH, no trusted network.
    return await asend(relay.smtp_port, raw, mail_from="feedback@isp.example", rcpts=[to])


def mail_from_reply(port: int) -> tuple[int, str]:
    """What the application's mail gets now: the account rules decide at its first recipient that
    is not one of the relay's own addresses (docs/SPEC.md §15), MAIL FROM itself is taken."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=15)
    try:
        client.ehlo("app.test")
        client.login(*APP)
        code, text = client.mail("news@shop.example")
        assert code == 250, (code, text)
        code, text = client.rcpt("anna@example.nl")
        return code, text.decode()
    finally:
        client.quit()


async def mail_from(relay: Any) -> tuple[int, str]:
    return await asyncio.to_thread(mail_from_reply, relay.smtp_port)


def metric(relay: Any, name: str, **labels: str) -> float | None:
    return relay.services.metrics.registry.get_sample_value(name, labels)


class Admin:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            return response.status, await response.json()


@pytest.fixture
async def admin(relay: Any) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, f"http://127.0.0.1:{relay.admin_port}")


def complaints_feature(relay: Any) -> Any:
    from relay.feedback.complaints_feature import ComplaintsFeature

    return next(f for f in relay.features if isinstance(f, ComplaintsFeature))


# --- by mail ----------------------------------------------------------------------------------


async def test_report_by_mail_suppresses_forwards_and_records(relay: Any, upstream: RecordingUpstream) -> None:
    out = await send_newsletter(relay, ANNA, BOB)
    assert out.code == 250, out
    anna_copy = copy_to(upstream, ANNA)
    assert b"unsubscribe+" in anna_copy  # the per-recipient mailto token maps the report to this copy

    reply = await report_by_mail(relay, arf(anna_copy))
    assert reply.code == 250, reply
    assert reply.text == "2.0.0 Complaint 1 recorded for account shop, recipient a***@example.nl (open)"

    (stored,) = await relay.services.store.complaints.list()
    assert (stored.account, stored.email, stored.status, stored.source) == ("shop", ANNA, "open", "mail")
    assert stored.mapped_by == "mailto_token" and stored.stream == "newsletter" and stored.delivery_id
    assert stored.deadline == T0 + timedelta(hours=24)
    assert stored.reporter == "ExampleFBL/2.1"
    assert stored.arrived_at == datetime(2026, 3, 15, 12, 0, 30, tzinfo=timezone.utc)

    # Suppressed at once, at the account's scope, for every topic.
    found = await relay.services.store.consent.find_suppressions(["shop"], [ANNA])
    assert [(s.reason, s.scope, s.topic, s.via) for s in found[ANNA]] == [("suppression.complaint", "shop", "*", "complaint")]

    # Forwarded to the abuse contact through the upstream: account, headers, masked recipient, deadline.
    (forward,) = forwards(upstream)
    assert forward.mail_from == "<>"  # null sender: no bounces or auto-replies back to the relay
    parsed = email.message_from_bytes(forward.content, policy=email.policy.default)
    assert parsed["From"] == "consent-relay complaints <complaints@relay.test>"
    assert parsed["Subject"] == "Complaint 1 about mail from account shop: respond before 2026-03-16 12:00 UTC"
    assert parsed["Auto-Submitted"] == "auto-generated"
    text = parsed.get_content()
    assert "Account:        shop" in text and "Recipient:      a***@example.nl" in text
    assert "Respond before: 2026-03-16 12:00 UTC" in text
    assert "Subject: De zomercollectie is binnen" in text
    assert ANNA not in forward.content.decode() and "unsubscribe+" not in text
    assert (await relay.services.store.complaints.get(1)).forwarded_to == "abuse@shop.example"
    assert metric(relay, "consent_relay_complaints_total", account="shop") == 1

    # The next newsletter is refused for Anna and still goes to Bob.
    out = await send_newsletter(relay, ANNA, BOB)
    assert out.code == 250, out
    assert "Delivered to 1 of 2 recipients; refused: anna@example.nl [suppression.complaint]" in out.text
    assert [m.rcpt_tos for m in upstream.messages[-1:]] == [[BOB]]

    # The same report again changes nothing: no second complaint, no second forward.
    again = await report_by_mail(relay, arf(anna_copy))
    assert again.code == 250 and "already recorded" in again.text
    assert len(await relay.services.store.complaints.list()) == 1 and len(forwards(upstream)) == 1


async def test_headers_only_report_maps_by_message_id_with_redacted_recipient(relay: Any, upstream: RecordingUpstream) -> None:
    await send_newsletter(relay, BOB)
    headers = b"\r\n".join(
        line for line in copy_to(upstream, BOB).split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if not line.lower().startswith((b"list-unsubscribe", b"x-relay-id", b" "))
    )
    reply = await report_by_mail(relay, arf(headers + b"\r\n\r\n", rcpt_to="redacted@example.nl", headers_only=True))
    assert reply.code == 250, reply
    (stored,) = await relay.services.store.complaints.list()
    assert stored.email == BOB and stored.mapped_by == "message_id"


async def test_not_spam_report_is_recorded_without_suppression(relay: Any, upstream: RecordingUpstream) -> None:
    await send_newsletter(relay, ANNA)
    reply = await report_by_mail(relay, arf(copy_to(upstream, ANNA), feedback_type="not-spam"))
    assert reply.code == 250 and "(informational)" in reply.text, reply
    (stored,) = await relay.services.store.complaints.list()
    assert stored.status == "informational" and stored.deadline is None
    assert await relay.services.store.consent.find_suppressions(["shop"], [ANNA]) == {}
    assert forwards(upstream) == [] and metric(relay, "consent_relay_complaints_total", account="shop") is None
    assert await relay.services.store.complaints.list(open_only=True) == []


async def test_malformed_report_by_mail_is_refused_with_its_reason_and_kept(relay: Any) -> None:
    reply = await report_by_mail(relay, message(subject="I want to complain", body="This is spam!"))
    assert reply.code == 550, reply
    assert reply.text.startswith("5.6.0 Feedback report refused: Content-Type is text/plain, expected multipart/report")
    (kept,) = await relay.services.store.complaints.list_rejected(with_report=True)
    assert kept.source == "mail" and "expected multipart/report" in kept.reason
    assert b"This is spam!" in kept.report


async def test_unmappable_report_is_refused_and_kept(relay: Any) -> None:
    original = message(sender="news@elsewhere.example", to="x@example.nl")
    reply = await report_by_mail(relay, arf(original))
    assert reply.code == 550 and "cannot tell which recipient complained" in reply.text, reply
    reply = await report_by_mail(relay, arf(original, rcpt_to="x@example.nl"))
    # docs/SPEC.md §16: the one clear line for a report about nobody the relay delivered to.
    assert reply.code == 550 and "names no recipient that the relay delivered to (x***@example.nl)" in reply.text, reply
    assert len(await relay.services.store.complaints.list_rejected()) == 2


async def test_only_the_fbl_address_is_open_to_anyone(relay: Any, upstream: RecordingUpstream) -> None:
    await send_newsletter(relay, ANNA)
    raw = arf(copy_to(upstream, ANNA))
    for address in ("abuse@relay.test", "fbl@other.example", "fbl+x@relay.test"):
        reply = await report_by_mail(relay, raw, to=address)
        assert reply.code == 550 and "[relay.denied]" in reply.text, (address, reply)
    assert await relay.services.store.complaints.list() == []


# --- mapping a report to the copy it quotes ---------------------------------------------------


def quoted(copy: bytes, *, drop: Sequence[str] = (), add: Sequence[tuple[str, str]] = ()) -> bytes:
    """A copy's header block as a feedback loop quotes it: some fields left out, some rewritten."""
    head = copy.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    fields = re.split(r"\r\n(?![ \t])", head)
    kept = [f for f in fields if f.split(":", 1)[0].strip().lower() not in drop]
    kept += [f"{name}: {value}" for name, value in add]
    return "\r\n".join(kept).encode("utf-8") + b"\r\n\r\n"


async def test_report_maps_by_the_relay_id_of_the_copy(relay: Any, upstream: RecordingUpstream) -> None:
    # One transactional copy for two recipients; the application's own X-Relay-Id does not survive.
    out = await asend(relay.smtp_port, message(headers=("X-Relay-Id: forged-by-the-app",)), rcpts=[ANNA, BOB], login=APP)
    assert out.code == 250, out
    relay_id = re.search(r"Delivered as (\w+)", out.text).group(1)  # type: ignore[union-attr]
    (copy,) = [m.content for m in upstream.messages]
    assert email.message_from_bytes(copy, policy=email.policy.default).get_all("X-Relay-Id") == [relay_id]

    # Nothing else in the quoted headers maps: no Message-ID, no list headers (transactional).
    reply = await report_by_mail(relay, arf(quoted(copy, drop=("message-id",)), rcpt_to=BOB, headers_only=True))
    assert reply.code == 250, reply
    (stored,) = await relay.services.store.complaints.list()
    assert (stored.account, stored.email, stored.mapped_by, stored.relay_id) == ("shop", BOB, "relay_id", relay_id)
    deliveries = await relay.services.store.complaints.deliveries_for_relay_id(relay_id)
    assert stored.delivery_id == next(d.id for d in deliveries if d.email == BOB)
    assert stored.stream == "orders"
    found = await relay.services.store.consent.find_suppressions(["shop"], [ANNA, BOB])
    assert list(found) == [BOB]  # the complainer only, not everyone the copy went to


async def test_report_maps_by_the_unsubscribe_url_token(relay: Any, upstream: RecordingUpstream) -> None:
    await send_newsletter(relay, ANNA, BOB)
    bob_copy = copy_to(upstream, BOB)
    assert len(re.findall(rb"(?m)^X-Relay-Id: \w+\r$", bob_copy)) == 1  # marketing copies name their transaction too
    url = re.search(rb"<(https?://[^>\s]+/u/[^>\s]+)>", bob_copy).group(1).decode()  # type: ignore[union-attr]
    # The feedback loop kept only the HTTPS link of List-Unsubscribe: no mailto token, relay id or Message-ID.
    original = quoted(
        bob_copy,
        drop=("list-unsubscribe", "list-unsubscribe-post", "x-relay-id", "message-id"),
        add=[("List-Unsubscribe", f"<{url}>")],
    )
    assert b"unsubscribe+" not in original and b"X-Relay-Id" not in original
    reply = await report_by_mail(relay, arf(original, headers_only=True))
    assert reply.code == 250, reply
    (stored,) = await relay.services.store.complaints.list()
    assert (stored.account, stored.email, stored.mapped_by) == ("shop", BOB, "unsubscribe_token")
    (delivered,) = await relay.services.store.decisions.deliveries_to(BOB, ["shop"])
    assert stored.delivery_id == delivered.id and stored.stream == "newsletter"
    assert list(await relay.services.store.consent.find_suppressions(["shop"], [ANNA, BOB])) == [BOB]


async def test_report_maps_by_original_rcpt_to_and_the_sender_domain(relay: Any, upstream: RecordingUpstream) -> None:
    await send_newsletter(relay, ANNA)
    # A message the relay cannot find (another Message-ID, no relay id, no tokens), from shop's domain.
    original = message(sender="news@shop.example", to=ANNA, subject="An older campaign")
    reply = await report_by_mail(relay, arf(original, rcpt_to=ANNA))
    assert reply.code == 250, reply
    assert reply.text == "2.0.0 Complaint 1 recorded for account shop, recipient a***@example.nl (open)"
    (stored,) = await relay.services.store.complaints.list()
    assert (stored.account, stored.email, stored.mapped_by) == ("shop", ANNA, "original_rcpt_to")
    (latest,) = await relay.services.store.decisions.deliveries_to(ANNA, ["shop"])
    assert stored.delivery_id == latest.id  # linked to the last copy Anna got from this account
    found = await relay.services.store.consent.find_suppressions(["shop"], [ANNA])
    assert [(s.reason, s.scope) for s in found[ANNA]] == [("suppression.complaint", "shop")]
    assert len(forwards(upstream)) == 1


# --- the examples of RFC 5965, end to end ------------------------------------------------------

ARF_CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "arf"
RFC_SENDER = "somespammer@example.net"
RFC_RECIPIENT = "user@example.com"
RFC_MESSAGE_ID = "<8787KJKJ3K4J3K4J3K4J3.mail@example.net>"  # the RFC quotes it without angle brackets


@pytest.fixture
async def rfc_relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    """An account sending as example.net (the RFC's sender) that delivered the message the examples report."""
    example = {
        **base_account(), "id": "example", "domains": ["example.net"], "trusted_networks": [],
        "abuse_contact": "abuse-desk@example.net",
    }
    config = load_config(relay_config(tmp_path, upstream, store_url, accounts=[example]))
    relay = await start_relay(config, clock=clocked.clock())
    raw = re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: " + RFC_MESSAGE_ID.encode(), message(sender=RFC_SENDER, to=RFC_RECIPIENT))
    out = await asend(relay.smtp_port, raw, mail_from=RFC_SENDER, rcpts=[RFC_RECIPIENT], login=("example", PASSWORD))
    assert out.code == 250, out
    await relay.recorder.flush()  # the delivery row is in the store before `complaint import` looks
    return relay


@pytest.mark.parametrize("channel", ["mail", "api", "cli"])
@pytest.mark.parametrize("example", ["rfc5965-b1-simple.eml", "rfc5965-b2-complete.eml"])
async def test_rfc5965_examples_end_to_end(
    rfc_relay: Any, upstream: RecordingUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str], example: str, channel: str
) -> None:
    raw = (ARF_CORPUS / example).read_bytes()  # as the RFC prints it: LF line ends, folded fields
    if channel == "mail":
        reply = await report_by_mail(rfc_relay, raw)
        assert reply.code == 250, reply
        assert reply.text == "2.0.0 Complaint 1 recorded for account example, recipient u***@example.com (open)"
    elif channel == "api":
        async with aiohttp.ClientSession() as session:
            api = Admin(session, f"http://127.0.0.1:{rfc_relay.admin_port}")
            status, body = await api.call("POST", "/api/complaints", data=raw, headers={"Content-Type": "message/rfc822"})
        assert (status, body) == (201, {"id": 1, "account": "example", "email": RFC_RECIPIENT, "status": "open"})
    else:
        report = tmp_path / example
        report.write_bytes(raw)
        cfg = str(rfc_relay.config.path)
        assert await asyncio.to_thread(cli.main, ["complaint", "import", str(report), "-c", cfg]) == 0
        assert "complaint 1 recorded: account example, recipient u***@example.com, open" in capsys.readouterr().out

    (stored,) = await rfc_relay.services.store.complaints.list()
    assert (stored.account, stored.email, stored.feedback_type, stored.status) == ("example", RFC_RECIPIENT, "abuse", "open")
    assert stored.source == channel and stored.reporter == "SomeGenerator/1.0"
    # B.1 names no recipient: its Message-ID finds the copy; B.2 also gives Original-Rcpt-To.
    assert stored.mapped_by == "message_id" and stored.message_id == RFC_MESSAGE_ID and stored.delivery_id is not None
    b2 = "b2" in example
    assert stored.arrived_at == (datetime(2005, 3, 8, 18, 0, tzinfo=timezone.utc) if b2 else None)  # 14:00 EDT
    found = await rfc_relay.services.store.consent.find_suppressions(["example"], [RFC_RECIPIENT])
    assert [(s.reason, s.scope, s.via) for s in found[RFC_RECIPIENT]] == [("suppression.complaint", "example", "complaint")]
    (forward,) = [m for m in upstream.messages if m.rcpt_tos == ["abuse-desk@example.net"]]
    assert forward.mail_from == "<>" and b"Subject: Earn money" in forward.content
    assert RFC_RECIPIENT not in forward.content.decode()  # masked in the forward
    assert await rfc_relay.services.store.complaints.list_rejected() == []


# --- by the API -------------------------------------------------------------------------------


async def test_api_raw_and_json_reports(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    await send_newsletter(relay, ANNA, BOB)
    status, body = await admin.call(
        "POST", "/api/complaints", data=arf(copy_to(upstream, ANNA)), headers={"Content-Type": "message/rfc822"}
    )
    assert status == 201 and body == {"id": 1, "account": "shop", "email": ANNA, "status": "open"}

    # A multipart/report body whose boundary is only in the request's Content-Type header.
    full = arf(copy_to(upstream, BOB))
    head, _, rest = full.partition(b"\r\n\r\n")
    content_type = f'multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"'
    status, body = await admin.call("POST", "/api/complaints", data=rest, headers={"Content-Type": content_type})
    assert status == 201 and body["email"] == BOB, body

    status, body = await admin.call(
        "POST", "/api/complaints",
        json={"account": "shop", "email": "Carl@Example.nl", "message_id": "<unknown@shop.example>",
              "feedback_type": "abuse", "arrived_at": "2026-03-15T11:00:00Z"},
    )
    assert status == 201
    assert {k: body[k] for k in ("id", "account", "email", "status")} == {
        "id": 3, "account": "shop", "email": "carl@example.nl", "status": "open",
    }
    assert body["account_paused"] is True  # 3 complaints on 2 delivered recipients: over the rate
    status, again = await admin.call(
        "POST", "/api/complaints",
        json={"account": "shop", "email": "carl@example.nl", "message_id": "<unknown@shop.example>",
              "feedback_type": "abuse", "arrived_at": "2026-03-15T11:00:00Z"},
    )
    assert status == 200 and again["id"] == 3 and again["duplicate"] is True
    status, body = await admin.call("POST", "/api/complaints", json={"email": "dora@example.nl", "feedback_type": "not-spam", "account": "shop"})
    assert status == 201 and body["status"] == "informational"

    status, listing = await admin.call("GET", "/api/complaints?open=1")
    assert status == 200 and [c["id"] for c in listing["items"]] == [3, 2, 1]
    assert listing["items"][2]["forwarded_to"] == "abuse@shop.example"
    status, one = await admin.call("GET", "/api/complaints/3")
    assert status == 200 and one["mapped_by"] == "api" and one["arrived_at"] == "2026-03-15T11:00:00+00:00"
    assert len(forwards(upstream)) == 3


async def test_api_refusals(relay: Any, admin: Admin) -> None:
    status, body = await admin.call(
        "POST", "/api/complaints", data=b"Subject: hi\r\n\r\nnot a report", headers={"Content-Type": "message/rfc822"}
    )
    assert status == 422 and body["error"] == "malformed_report"
    assert body["detail"] == "no Content-Type header: not a MIME multipart/report" and body["reject_id"] == 1
    status, body = await admin.call("POST", "/api/complaints", json={"account": "shop"})
    assert status == 422 and body["detail"] == "email: the complaining recipient's address is required"
    status, body = await admin.call("POST", "/api/complaints", json={"account": "nope", "email": ANNA})
    assert status == 422 and body["detail"] == "account: unknown account 'nope'"
    status, body = await admin.call("POST", "/api/complaints", json={"email": ANNA, "spam": True})
    assert status == 422 and body["detail"].startswith("spam: unknown field")
    status, body = await admin.call("POST", "/api/complaints", data=b"x", headers={"Content-Type": "text/plain"})
    assert status == 415 and body["error"] == "unsupported_media_type"
    status, body = await admin.call("POST", "/api/complaints", json={"account": "shop", "email": ANNA}, token=None)
    assert status == 401
    status, rejected = await admin.call("GET", "/api/complaints/rejected")
    assert status == 200 and [r["source"] for r in rejected["items"]] == ["api"] * 4
    assert await relay.services.store.complaints.list() == []


async def test_api_acknowledge(relay: Any, admin: Admin) -> None:
    status, body = await admin.call("POST", "/api/complaints", json={"account": "shop", "email": ANNA})
    assert status == 201
    status, err = await admin.call("POST", f"/api/complaints/{body['id']}/ack", json={})
    assert status == 422 and err["error"] == "invalid"
    status, done = await admin.call("POST", f"/api/complaints/{body['id']}/ack", json={"note": "list cleaned, form fixed"})
    assert status == 200 and done["status"] == "acknowledged" and done["acknowledged_by"] == "alice"
    assert done["note"] == "list cleaned, form fixed"
    status, err = await admin.call("POST", f"/api/complaints/{body['id']}/ack", json={"note": "again"})
    assert status == 409 and err["error"] == "not_open"
    status, err = await admin.call("POST", "/api/complaints/99/ack", json={"note": "x"})
    assert status == 404
    (entry,) = [a for a in await relay.services.store.audit.list() if a.action == "complaint.acknowledged"]
    assert entry.actor == "alice" and entry.target == f"complaint:{body['id']}"


# --- by the CLI -------------------------------------------------------------------------------


async def test_cli_import_list_and_ack(
    relay: Any, upstream: RecordingUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await send_newsletter(relay, ANNA)
    await relay.recorder.flush()  # the CLI is another process: it sees the delivery once it is written
    report = tmp_path / "report.eml"
    report.write_bytes(arf(copy_to(upstream, ANNA)))
    cfg = str(relay.config.path)
    assert await asyncio.to_thread(cli.main, ["complaint", "import", str(report), "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "\ncomplaint 1 recorded: account shop, recipient a***@example.nl, open, respond before " in "\n" + out
    assert len(forwards(upstream)) == 1  # the CLI forwards through the upstream too

    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"From: x@y.example\r\n\r\nhello\r\n")
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(cli.main, ["complaint", "import", str(bad), "-c", cfg])
    assert exited.value.code == 2
    assert "feedback report refused: no Content-Type header" in capsys.readouterr().err

    assert await asyncio.to_thread(cli.main, ["complaint", "list", "--open", "--json", "-c", cfg]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["id"] == 1 and item["email"] == ANNA and item["status"] == "open" and item["source"] == "cli"

    assert await asyncio.to_thread(cli.main, ["complaint", "ack", "1", "--note", "double opt-in added", "-c", cfg]) == 0
    assert "complaint 1: acknowledged by cli\n" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, ["complaint", "list", "--open", "--json", "-c", cfg]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert await asyncio.to_thread(cli.main, ["complaint", "rejected", "-c", cfg]) == 0
    assert "no Content-Type header" in capsys.readouterr().out


# --- the deadline -----------------------------------------------------------------------------


async def test_unanswered_complaint_suspends_after_24_hours(relay: Any, admin: Admin, clocked: Clocked) -> None:
    await admin.call("POST", "/api/complaints", json={"account": "shop", "email": ANNA})
    service = complaints_feature(relay).service
    clocked.advance(hours=23, minutes=59)
    assert await service.enforce_deadlines() == []
    assert (await mail_from(relay))[0] == 250

    clocked.advance(minutes=1)
    with structlog.testing.capture_logs() as logs:
        assert await service.enforce_deadlines() == ["shop"]
    assert await mail_from(relay) == (
        554,
        "5.7.1 [account.suspended] Account shop is suspended: "
        "account.complaint_unanswered: complaint 1 not acknowledged within 24 h",
    )
    changed = [e for e in logs if e["event"] == "account_state_changed"]
    assert changed and changed[0]["state"] == "suspended" and changed[0]["actor"] == "complaint-deadline"
    assert any(e["event"] == "account_enforced" and e.get("alert") for e in logs)
    assert metric(relay, "consent_relay_account_state", account="shop", state="suspended") == 1
    audit = [a for a in await relay.services.store.audit.list(target="shop")]
    assert audit[0].action == "account.suspended" and audit[0].note.startswith("account.complaint_unanswered")

    # Resume lifts it; the complaint that caused it does not suspend again.
    await change_account_state(relay.services, "shop", "resume", reason="customer answered by phone", actor="alice")
    clocked.advance(hours=1)
    assert await service.enforce_deadlines() == []
    assert (await mail_from(relay))[0] == 250


async def test_acknowledged_complaint_does_not_suspend(relay: Any, admin: Admin, clocked: Clocked) -> None:
    _, body = await admin.call("POST", "/api/complaints", json={"account": "shop", "email": ANNA})
    clocked.advance(hours=5)
    await admin.call("POST", f"/api/complaints/{body['id']}/ack", json={"note": "address removed"})
    clocked.advance(hours=48)
    assert await complaints_feature(relay).service.enforce_deadlines() == []
    assert (await relay.services.store.accounts.get("shop")).state == "active"


async def test_background_check_suspends_without_being_called(
    start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked, monkeypatch: pytest.MonkeyPatch,
    store_url: str,
) -> None:
    from relay.feedback.complaints_feature import ComplaintsFeature

    monkeypatch.setattr(ComplaintsFeature, "check_seconds", 0.01)
    relay = await start_relay(
        load_config(relay_config(tmp_path, upstream, store_url, ack_deadline_hours=2)), clock=clocked.clock(), background=True
    )
    feature = complaints_feature(relay)
    await feature.service.ingest_json({"account": "shop", "email": ANNA}, source="api")
    checks = await feature.wait_for_check(0)
    assert (await relay.services.store.accounts.get("shop")).state == "active"
    clocked.advance(hours=2)
    await feature.wait_for_check(checks)
    await feature.wait_for_check(checks + 1)  # one full pass after the clock moved
    state = await relay.services.store.accounts.get("shop")
    assert state.state == "suspended" and state.reason == "account.complaint_unanswered: complaint 1 not acknowledged within 2 h"


# --- the rate ---------------------------------------------------------------------------------


async def record_deliveries(relay: Any, count: int, at: datetime) -> None:
    """Deliveries as the pipeline records them (the rate's denominator), without sending 300 copies."""
    ids = await relay.services.store.decisions.reserve_ids("deliveries", count)
    await relay.services.store.decisions.record(
        [DecisionRecord("bulk", "delivered", at, "<bulk@shop.example>", "shop", "newsletter")],
        [
            DeliveryRecord(ids + i, "bulk", "shop", "newsletter", f"r{i}@example.org", "delivered", at, "<bulk@shop.example>", "shop", "newsletter")
            for i in range(count)
        ],
    )


async def test_complaint_rate_pauses_at_once_over_the_boundary(relay: Any, admin: Admin, clocked: Clocked) -> None:
    await record_deliveries(relay, 300, T0 - timedelta(hours=1))  # 1% of 300 = 3 complaints allowed
    for i in range(3):
        status, body = await admin.call("POST", "/api/complaints", json={"account": "shop", "email": f"r{i}@example.org"})
        assert status == 201 and "account_paused" not in body
    assert (await relay.services.store.accounts.get("shop")).state == "active"
    assert (await mail_from(relay))[0] == 250

    status, body = await admin.call("POST", "/api/complaints", json={"account": "shop", "email": "r3@example.org"})
    assert status == 201 and body["account_paused"] is True
    assert await mail_from(relay) == (
        451,
        "4.7.1 [account.paused] Account shop is paused: account.complaint_rate: 4 complaints on 300 delivered "
        "recipients in 24 h (1.33%, limit 1.00% with at least 3)",
    )
    assert metric(relay, "consent_relay_account_state", account="shop", state="paused") == 1
    assert metric(relay, "consent_relay_rule_hits_total", rule="account.complaint_rate", action="pause") == 1

    # `account resume` lifts the pause (the CLI, against the same store).
    cfg = str(relay.config.path)
    assert await asyncio.to_thread(cli.main, ["account", "resume", "shop", "--reason", "list cleaned", "-c", cfg]) == 0
    assert (await mail_from(relay))[0] == 250


async def test_complaint_rate_counts_only_its_window(relay: Any, admin: Admin, clocked: Clocked) -> None:
    for i in range(3):
        await admin.call("POST", "/api/complaints", json={"account": "shop", "email": f"old{i}@example.org"})
    assert (await relay.services.store.accounts.get("shop")).state == "paused"  # 3 complaints, nothing delivered
    await change_account_state(relay.services, "shop", "resume", reason="reviewed", actor="alice")
    clocked.advance(hours=25)
    status, body = await admin.call("POST", "/api/complaints", json={"account": "shop", "email": "new@example.org"})
    assert status == 201 and "account_paused" not in body
    assert (await relay.services.store.accounts.get("shop")).state == "active"


async def test_rate_does_not_downgrade_a_suspension(relay: Any, admin: Admin) -> None:
    await change_account_state(relay.services, "shop", "suspend", reason="manual", actor="alice")
    for i in range(4):
        await admin.call("POST", "/api/complaints", json={"account": "shop", "email": f"x{i}@example.org"})
    state = await relay.services.store.accounts.get("shop")
    assert state.state == "suspended" and state.reason == "manual"


# --- forwarding when the upstream is down -----------------------------------------------------


async def test_forward_goes_to_the_outbox_when_the_upstream_is_down(relay: Any, upstream: RecordingUpstream) -> None:
    upstream.stop()
    service = complaints_feature(relay).service
    result = await service.ingest_json({"account": "shop", "email": ANNA}, source="api")
    assert result.complaint.forwarded_at is None
    assert result.complaint.forward_error.startswith("queued for retry")
    assert await relay.services.store.outbox.depth() == 1
    upstream.start()
    assert await relay.outbox.run_once() == 1  # the outbox worker delivers it like any queued copy
    (forward,) = forwards(upstream)
    assert b"Complaint 1 about mail from account shop" in forward.content and forward.mail_from == "<>"
