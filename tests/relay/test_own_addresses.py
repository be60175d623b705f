"""The relay's own addresses and null-sender mail (docs/SPEC.md §15) against a real relay and upstream:
unsubscribe+…@ and fbl@ take mail from every client whatever its envelope sender, and a bounce
from an account's MTA goes back to that account's own domains only."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import Clocked, RecordingUpstream, asend, message
from test_complaints import ANNA, APP, arf, clocked, copy_to, give_consent, relay_config, send_newsletter  # noqa: F401

from relay.accounts import change_account_state
from relay.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"


@pytest.fixture
async def relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    # The application's own MTA sits on 127.0.0.1, inside the account's trusted networks.
    config = load_config(relay_config(tmp_path, upstream, store_url, trusted_networks=[f"{TRUSTED}/32"]))
    relay = await start_relay(config, clock=clocked.clock())
    await give_consent(relay, ANNA)
    return relay


def mailto_address(copy: bytes) -> str:
    header = email.message_from_bytes(copy, policy=email.policy.default)["List-Unsubscribe"]
    found = re.search(r"mailto:(unsubscribe\+[^@>]+@[^>?]+)", str(header))
    assert found, header
    return found.group(1)


async def suppressed(relay: Any, address: str) -> set[str]:
    found = await relay.services.store.consent.find_suppressions(["shop"], [address])
    return {s.reason for s in found.get(address, [])}


# --- own addresses from anyone ----------------------------------------------------------------


@pytest.mark.parametrize("source", [TRUSTED, UNTRUSTED])
async def test_a_report_to_fbl_is_taken_whatever_the_envelope_sender(relay: Any, upstream: RecordingUpstream, source: str) -> None:
    assert (await send_newsletter(relay, ANNA)).code == 250
    report = arf(copy_to(upstream, ANNA), rcpt_to=ANNA)
    sent = len(upstream.messages)
    # The envelope sender is the feedback loop's, in no account's domains: the account's own rules
    # (identity.sender_not_authorized) are not asked, whoever the client is.
    out = await asend(relay.smtp_port, report, mail_from="fbl-reports@isp.example", rcpts=["fbl@relay.test"], source=source)
    assert out.mail[0] == 250 and out.rcpts == [(250, "2.1.5 Recipient ok")], out
    assert out.code == 250 and "Complaint 1 recorded for account shop" in out.text, out
    assert await suppressed(relay, ANNA) == {"suppression.complaint"}
    # Never treated as the account's outgoing mail: nothing went upstream but the abuse forward (only
    # for a verified report: 127.0.0.1 is the configured feedback loop, docs/SPEC.md §16).
    forwarded = [["abuse@shop.example"]] if source == TRUSTED else []
    assert [m.rcpt_tos for m in upstream.messages[sent:]] == forwarded


async def test_a_suspended_accounts_mta_still_passes_on_an_unsubscribe(relay: Any, upstream: RecordingUpstream) -> None:
    assert (await send_newsletter(relay, ANNA)).code == 250
    address = mailto_address(copy_to(upstream, ANNA))
    await change_account_state(relay.services, "shop", "suspend", reason="spam run", actor="test")
    # A local MTA inside the trusted network, passing on the recipient's unsubscribe mail (null sender).
    out = await asend(relay.smtp_port, b"Subject: unsubscribe\r\n\r\nplease\r\n", mail_from="", rcpts=[address], source=TRUSTED)
    assert out.mail[0] == 250 and out.rcpts[0][0] == 250 and out.code == 250, out
    assert await suppressed(relay, ANNA) == {"suppression.unsubscribed"}
    # The account's own mail is still refused, now at its recipient.
    own = await asend(relay.smtp_port, source=TRUSTED)
    assert own.final[0] == 554 and "[account.suspended]" in own.final[1], own


async def test_own_address_and_outgoing_recipient_in_one_transaction(relay: Any, upstream: RecordingUpstream) -> None:
    assert (await send_newsletter(relay, ANNA)).code == 250
    report = arf(copy_to(upstream, ANNA), rcpt_to=ANNA)
    sent = len(upstream.messages)
    out = await asend(
        relay.smtp_port, report, mail_from="someone@elsewhere.example", rcpts=["fbl@relay.test", "bob@example.nl"], login=APP
    )
    assert out.rcpts[0] == (250, "2.1.5 Recipient ok"), out
    assert out.rcpts[1][0] == 550 and out.rcpts[1][1].startswith("5.7.1 [identity.sender_not_authorized]"), out
    assert out.code == 250 and "Complaint 1 recorded" in out.text, out
    assert not any("bob@example.nl" in m.rcpt_tos for m in upstream.messages[sent:])


async def test_an_untrusted_client_still_cannot_relay(relay: Any, upstream: RecordingUpstream) -> None:
    out = await asend(relay.smtp_port, mail_from="", rcpts=["orders@shop.example"], source=UNTRUSTED)
    assert out.final[0] == 550 and out.final[1].startswith("5.7.1 [relay.denied]"), out
    assert upstream.messages == []


# --- null sender from an account ----------------------------------------------------------------


def bounce(to: str = "orders@shop.example", *, stream: str | None = None) -> bytes:
    headers = (f"X-Relay-Stream: {stream}",) if stream else ()
    text = (
        "From: MAILER-DAEMON@app-host.internal (Mail Delivery System)\r\n"
        f"To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Date: Sun, 15 Mar 2026 12:00:00 +0000\r\nMessage-ID: <bounce.1@app-host.internal>\r\n"
        + "".join(h + "\r\n" for h in headers)
        + "Auto-Submitted: auto-replied\r\nContent-Type: text/plain\r\n\r\n"
        "This is the mail system at host app-host.internal. Your message could not be delivered.\r\n"
    )
    return text.encode()


@pytest.mark.parametrize("how", ["trusted", "authenticated"])
async def test_a_bounce_to_the_accounts_own_domain_is_relayed_with_the_null_sender(
    relay: Any, upstream: RecordingUpstream, how: str
) -> None:
    # policy: platform — identity.null_sender: to the account's own domains a bounce is relayed
    kwargs: dict[str, Any] = {"source": TRUSTED} if how == "trusted" else {"login": APP, "source": UNTRUSTED}
    # The bounce quotes a marketing stream header: it is still relayed as transactional mail.
    out = await asend(relay.smtp_port, bounce(stream="newsletter"), mail_from="", rcpts=["orders@shop.example"], **kwargs)
    assert out.code == 250 and out.text.startswith("2.0.0"), out
    (got,) = upstream.messages
    assert got.mail_from in ("", "<>") and got.rcpt_tos == ["orders@shop.example"]
    assert b"List-Unsubscribe" not in got.content and b"X-Relay-Stream" not in got.content
    relay_id = out.text.split()[3].rstrip(";")
    await relay.recorder.flush()
    assert [(d.outcome, d.stream) for d in await relay.services.store.decisions.for_relay_id(relay_id)] == [("delivered", "orders")]


async def test_a_bounce_to_any_other_domain_is_refused_never_dropped(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: platform — identity.null_sender: outside the account's domains, refused with its rule
    out = await asend(relay.smtp_port, bounce(ANNA), mail_from="", rcpts=[ANNA, "orders@shop.example"], login=APP)
    assert out.rcpts[0][0] == 550 and out.rcpts[0][1].startswith("5.7.1 [identity.null_sender]"), out
    assert out.rcpts[1][0] == 250
    assert out.code == 250 and "1 of 2" in out.text and "[identity.null_sender]" in out.text, out
    assert [m.rcpt_tos for m in upstream.messages] == [["orders@shop.example"]]
