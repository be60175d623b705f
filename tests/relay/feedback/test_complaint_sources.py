"""Verified complaint sources (docs/SPEC.md §16) against a real relay: reports by mail from a configured
feedback loop's network count and can pause an account; the same reports forged from anywhere else
suppress the recipients they name but never pause, never start the 24 h clock, and wait for an
admin to verify them (API and CLI, audited). Spam-trap hits pause at once."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import Clocked, RecordingUpstream, asend
from test_complaints import (  # noqa: F401 (fixtures)
    ANNA,
    BOB,
    Admin,
    admin,
    arf,
    clocked,
    complaints_feature,
    copy_to,
    forwards,
    give_consent,
    mail_from,
    relay_config,
    send_newsletter,
)

from relay.cli import main as cli
from relay.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

FBL, STRANGER = "127.0.0.1", "127.0.0.2"
READERS = [f"reader{i}@example.nl" for i in range(25)]


@pytest.fixture
async def relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    config = load_config(relay_config(
        tmp_path, upstream, store_url,
        sources=[{"name": "isp", "networks": [f"{FBL}/32"]}, {"name": "traps", "networks": ["127.0.0.3/32"], "spamtrap": True}],
    ))
    relay = await start_relay(config, clock=clocked.clock())
    await give_consent(relay, ANNA, BOB, *READERS)
    return relay


async def report_from(relay: Any, source: str, raw: bytes) -> Any:
    return await asend(relay.smtp_port, raw, mail_from="fbl@isp.example", rcpts=["fbl@relay.test"], source=source)


async def state(relay: Any) -> str:
    return str((await relay.services.store.accounts.get("shop")).state)


async def test_forged_reports_from_an_unlisted_network_never_pause_the_account(
    relay: Any, upstream: RecordingUpstream, clocked: Clocked
) -> None:
    # policy: mailpro M-onmiddellijk-opgeschort (account.complaint_rate) — only verified reports count
    assert (await send_newsletter(relay, *READERS)).code == 250
    sent = len(upstream.messages)
    # 25 made-up reports quoting the X-Relay-Id of real copies, from a stranger without AUTH.
    for reader in READERS:
        out = await report_from(relay, STRANGER, arf(copy_to(upstream, reader), rcpt_to=reader))
        assert out.code == 250 and out.text.endswith("(open, unverified)"), out
    assert await state(relay) == "active"
    assert (await mail_from(relay))[0] == 250
    assert len(upstream.messages) == sent  # nobody's abuse contact was bothered
    complaints = await relay.services.store.complaints.list()
    assert len(complaints) == 25 and not any(c.verified or c.deadline for c in complaints)
    # Still suppressed: cheap and safe.
    found = await relay.services.store.consent.find_suppressions(["shop"], READERS)
    assert all({s.reason for s in found[r]} == {"suppression.complaint"} for r in READERS)
    # No 24 h clock either.
    clocked.advance(hours=25)
    assert await complaints_feature(relay).service.enforce_deadlines() == []
    assert await state(relay) == "active"


async def test_the_same_reports_from_a_source_network_pause_the_account(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: mailpro M-onmiddellijk-opgeschort (account.complaint_rate)
    assert (await send_newsletter(relay, *READERS)).code == 250
    replies = [await report_from(relay, FBL, arf(copy_to(upstream, r), rcpt_to=r)) for r in READERS[:4]]
    assert all(o.code == 250 and o.text.endswith("(open)") for o in replies), replies
    assert await state(relay) == "paused"  # 4 of 25 delivered is over 1 % with at least 3
    code, text = await mail_from(relay)
    assert code == 451 and "[account.paused]" in text and "account.complaint_rate" in text
    assert len(forwards(upstream)) == 4


async def test_an_admin_verifies_a_report_by_api_and_cli(
    relay: Any, upstream: RecordingUpstream, admin: Admin, capsys: pytest.CaptureFixture[str]
) -> None:
    # policy: mailpro M-violation (account.complaint_unanswered) — the clock starts when an admin verifies
    assert (await send_newsletter(relay, ANNA, BOB)).code == 250
    for who in (ANNA, BOB):
        assert (await report_from(relay, STRANGER, arf(copy_to(upstream, who), rcpt_to=who))).code == 250
    status, body = await admin.call("GET", "/api/complaints")
    assert status == 200 and [(c["email"], c["verified"], c["deadline"]) for c in body["items"]] == [
        (BOB, False, None), (ANNA, False, None)
    ]
    status, verified = await admin.call("POST", "/api/complaints/1/verify", json={"note": "Yahoo's new FBL address"})
    assert status == 200 and verified["verified"] is True and verified["deadline"], verified
    assert verified["forwarded_to"] == "abuse@shop.example" and len(forwards(upstream)) == 1
    status, again = await admin.call("POST", "/api/complaints/1/verify", json={})
    assert status == 409 and again["error"] == "verified_already"
    assert (await admin.call("POST", "/api/complaints/99/verify", json={}))[0] == 404
    audit = await relay.services.store.audit.list(target="complaint:1")
    assert [(e.actor, e.action, e.note) for e in audit][0] == ("alice", "complaint.verified", "Yahoo's new FBL address")

    cfg = str(relay.config.path)
    assert await asyncio.to_thread(cli.main, ["complaint", "verify", "2", "--note", "seen in the FBL portal", "-c", cfg]) == 0
    assert re.search(r"(?m)^complaint 2: verified by cli, respond before \S+ \S+ UTC$", capsys.readouterr().out)
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(cli.main, ["complaint", "verify", "2", "-c", cfg])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith("complaint 2 is verified already")
    assert await asyncio.to_thread(cli.main, ["complaint", "list", "--json", "-c", cfg]) == 0
    assert [c["verified"] for c in json.loads(capsys.readouterr().out)] == [True, True]


async def test_a_spam_trap_hit_pauses_at_once(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: mailpro M-onmiddellijk-opgeschort (account.complaint_rate: "or a spam-trap hit")
    assert (await send_newsletter(relay, *READERS)).code == 250
    # A report calling itself a trap hit, from a stranger: suppresses, nothing more.
    trap = arf(copy_to(upstream, READERS[0]), rcpt_to=READERS[0]).replace(
        b"Subject: Complaint about message", b"Subject: Spamtrap hit for your IP"
    )
    assert (await report_from(relay, STRANGER, trap)).code == 250
    assert await state(relay) == "active"
    # One abuse report from the source marked spamtrap = true pauses at once (1 of 25 is far below 1 %).
    out = await report_from(relay, "127.0.0.3", arf(copy_to(upstream, READERS[1]), rcpt_to=READERS[1]))
    assert out.code == 250, out
    assert await state(relay) == "paused"
    (complaint,) = [c for c in await relay.services.store.complaints.list() if c.email == READERS[1]]
    assert complaint.spam_trap and complaint.verified
    code, text = await mail_from(relay)
    assert code == 451 and "spam-trap hit" in text, text


async def test_a_trap_report_from_a_verified_source_pauses_too(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: mailpro M-onmiddellijk-opgeschort (account.complaint_rate)
    assert (await send_newsletter(relay, *READERS)).code == 250
    trap = arf(copy_to(upstream, READERS[0]), rcpt_to=READERS[0]).replace(
        b"Subject: Complaint about message", b"Subject: Spamtrap hit for your IP"
    )
    assert (await report_from(relay, FBL, trap)).code == 250
    assert await state(relay) == "paused"


def dkim_key() -> tuple[bytes, bytes]:
    """A private key (PEM) and its DNS TXT record, made here: no DNS is asked."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture
async def dkim_relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    config = load_config(relay_config(
        tmp_path, upstream, store_url, sources=[{"name": "bigmail", "dkim_domains": ["fbl.bigmail.example"]}],
    ))
    relay = await start_relay(config, clock=clocked.clock())
    await give_consent(relay, ANNA, BOB)
    return relay


async def test_a_report_signed_by_a_sources_dkim_domain_is_verified(dkim_relay: Any, upstream: RecordingUpstream) -> None:
    # policy: mailpro M-onmiddellijk-opgeschort (account.complaint_rate) — a source known by its DKIM d=
    import dkim

    relay = dkim_relay
    pem, record = dkim_key()
    complaints_feature(relay).service.dns_txt = (
        lambda name, timeout=5: record if name == b"s1._domainkey.fbl.bigmail.example." else None
    )
    assert (await send_newsletter(relay, ANNA, BOB)).code == 250
    signed = [
        dkim.sign(arf(copy_to(upstream, who), rcpt_to=who), b"s1", b"fbl.bigmail.example", pem,
                  include_headers=[b"from", b"to", b"subject", b"content-type"]) + arf(copy_to(upstream, who), rcpt_to=who)
        for who in (ANNA, BOB)
    ]
    assert (await report_from(relay, STRANGER, signed[0])).text.endswith("(open)")
    # The same signature over altered bytes verifies nothing: unverified.
    tampered = signed[1].replace(b"This is an abuse report.", b"This is an abuse report!")
    assert (await report_from(relay, STRANGER, tampered)).text.endswith("(open, unverified)")
    by_email = {c.email: c.verified for c in await relay.services.store.complaints.list()}
    assert by_email == {ANNA: True, BOB: False}


async def test_complaint_forwards_are_dkim_signed_with_the_relays_domain_key(
    store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked
) -> None:
    import dkim

    pem, record = dkim_key()
    key_file = tmp_path / "relay.test.pem"
    key_file.write_bytes(pem)
    path = relay_config(tmp_path, upstream, store_url, sources=[{"name": "isp", "networks": [f"{FBL}/32"]}])
    path.write_text(path.read_text() + f'[dkim]\n"keys" = [{{ "domain" = "relay.test", "selector" = "fbl", "private_key" = "{key_file}" }}]\n')
    relay = await start_relay(load_config(path), clock=clocked.clock())
    await give_consent(relay, ANNA)
    assert (await send_newsletter(relay, ANNA)).code == 250
    assert (await report_from(relay, FBL, arf(copy_to(upstream, ANNA), rcpt_to=ANNA))).code == 250
    (forward,) = forwards(upstream)
    assert forward.content.startswith(b"DKIM-Signature:") and b"d=relay.test" in forward.content.split(b"\r\n\r\n")[0]
    assert dkim.verify(forward.content, dnsfunc=lambda name, timeout=5: record if name == b"fbl._domainkey.relay.test." else None)


async def test_a_report_naming_two_recipients_of_one_message_records_both(relay: Any, upstream: RecordingUpstream) -> None:
    # docs/SPEC.md §16: several Original-Rcpt-To, each recorded and suppressed, even when the quoted copy
    # (with its own unsubscribe token) is only one of theirs
    assert (await send_newsletter(relay, ANNA, BOB)).code == 250
    raw = arf(copy_to(upstream, ANNA), rcpt_to=ANNA).replace(
        f"Original-Rcpt-To: <{ANNA}>\r\n".encode(), f"Original-Rcpt-To: <{ANNA}>\r\nOriginal-Rcpt-To: <{BOB}>\r\n".encode()
    )
    out = await report_from(relay, FBL, raw)
    assert out.code == 250 and "and 1 more recipient(s)" in out.text, out
    assert sorted(c.email for c in await relay.services.store.complaints.list()) == sorted([ANNA, BOB])
    found = await relay.services.store.consent.find_suppressions(["shop"], [ANNA, BOB])
    assert {e: {s.reason for s in found[e]} for e in (ANNA, BOB)} == {e: {"suppression.complaint"} for e in (ANNA, BOB)}
