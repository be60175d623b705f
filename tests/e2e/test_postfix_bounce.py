"""A real Postfix as the application's MTA (relayhost = the relay, docs/SPEC.md §15): a recipient the relay
refuses at RCPT makes Postfix send its bounce from `<>` back through the relay, and that bounce
reaches the application's mailbox (the upstream sink) instead of being refused and dropped."""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import RecordingUpstream, free_port, make_config, message, send, until

from bench.postfix_relay import PostfixRelay
from policies.facts import ConsentRecord

pytestmark = pytest.mark.timeout(180)

APP_SENDER = "news@shop.example"
ANNA, NOBODY = "anna@example.nl", "nobody@example.nl"


@pytest.fixture
def postfix_mta() -> Iterator[Any]:
    """A private Postfix instance; its relayhost is set once the relay's port is known."""
    if os.geteuid() != 0:
        pytest.fail("a private Postfix instance needs root (it drops to the postfix user)")
    instances: list[PostfixRelay] = []
    # Not under pytest's tmp_path: its parents are 0700 and Postfix's daemons run as `postfix`.
    base = Path(tempfile.mkdtemp(prefix="consent-relay-postfix-"))
    base.chmod(0o755)

    def start(relay_port: int, extra_main_cf: str = "", listen_port: int | None = None) -> PostfixRelay:
        mta = _Postfix(base / f"postfix{len(instances)}", listen_port or free_port(), relay_port, extra_main_cf)
        instances.append(mta)
        mta.start()
        mta.wait_master()
        return mta

    yield start
    for mta in instances:
        mta.stop()
    shutil.rmtree(base, ignore_errors=True)


class _Postfix(PostfixRelay):
    def __init__(self, base: Path, listen_port: int, relay_port: int, extra_main_cf: str) -> None:
        super().__init__(base, listen_port, relay_port)
        self.extra_main_cf = extra_main_cf

    def write_config(self) -> None:
        super().write_config()
        with open(self.config_dir / "main.cf", "a", encoding="utf-8") as main_cf:
            main_cf.write(self.extra_main_cf)


def submit(port: int, content: bytes, rcpts: list[str]) -> dict[str, Any]:
    client = smtplib.SMTP("127.0.0.1", port, timeout=15)
    try:
        client.ehlo("app.test")
        return client.sendmail(APP_SENDER, rcpts, content)
    finally:
        client.quit()


async def test_postfix_bounce_for_a_refused_recipient_reaches_the_application(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, postfix_mta: Any
) -> None:
    # policy: platform — identity.null_sender: the application's own bounce is relayed to its domain
    account = {
        "trusted_networks": ["127.0.0.1/32"],  # Postfix connects from here, without AUTH
        "streams": [
            {"id": "orders", "kind": "transactional"},
            # The envelope sender selects the marketing stream: consent is decided at RCPT, where
            # Postfix sees the refusal of one recipient and bounces it.
            {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "envelope_from": [APP_SENDER]},
        ],
    }
    relay = await start_relay(make_config(tmp_path, upstream.port, account=account), background=True)
    await relay.services.store.consent.upsert_consents(
        [ConsentRecord(email=ANNA, scope="shop", topic="*", basis="double_opt_in", source="signup_form",
                       collected_at=relay.services.clock.now(), confirmed_at=relay.services.clock.now(),
                       source_url="https://shop.example/signup", source_ip="198.51.100.4",
                       statement_text="Yes, send me the Shop newsletter", frequency_disclosed=True)],
        now=relay.services.clock.now(),
    )
    mta = await asyncio.to_thread(postfix_mta, relay.smtp_port)
    newsletter = message(
        sender=APP_SENDER, subject="De zomercollectie", to=ANNA,
        body="Beste lezer,\r\n\r\nDe zomercollectie is binnen.\r\n\r\nAfmelden: {{unsubscribe_url}}",
    )
    refused = await asyncio.to_thread(submit, mta.listen_port, newsletter, [ANNA, NOBODY])
    assert refused == {}  # Postfix queued both; it learns of the refusal when it relays

    def bounce_arrived() -> Any:
        return next((m for m in upstream.messages if m.rcpt_tos == [APP_SENDER]), None)

    bounce = await until(bounce_arrived, timeout=60, what=f"Postfix's bounce to {APP_SENDER} (log: {mta.log_tail()})")
    assert bounce.mail_from in ("", "<>")
    text = bounce.content.decode("utf-8", "replace")
    assert "multipart/report" in text and "report-type=delivery-status" in text
    assert NOBODY in text and "[consent.missing]" in text, text[:2000]
    assert [m.rcpt_tos for m in upstream.messages if m.rcpt_tos != [APP_SENDER]] == [[ANNA]]
    log = mta.log_file.read_text(errors="replace")
    assert f"to=<{NOBODY}>" in log and "status=bounced" in log

    def bounce_logged_as_sent() -> bool:
        # Postfix writes its delivery line after the upstream has the message: under load, a moment later.
        log = mta.log_file.read_text(errors="replace")
        return f"to=<{APP_SENDER}>" in log and "status=sent" in log.split(f"to=<{APP_SENDER}>", 1)[1].splitlines()[0]

    await until(bounce_logged_as_sent, timeout=30, what=f"Postfix's log of the bounce as sent (log: {mta.log_tail()})")


async def test_a_postfix_dsn_to_the_verp_address_suppresses_at_the_next_rcpt(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, postfix_mta: Any
) -> None:
    """Postfix as the relay's upstream MTA: the mailbox provider behind it refuses one recipient, Postfix
    bounces to the copy's VERP envelope sender, and its own DSN (routed to the relay's domain) makes a
    hard bounce: suppression.bounced at the next RCPT (docs/SPEC.md §15)."""
    # policy: mailpro M-18-maanden (list hygiene) — suppression.bounced from a real MTA's DSN
    gone = "gone@example.nl"
    upstream.answer_rcpt(gone, f"550 5.1.1 <{gone}>: Recipient address rejected: User unknown in virtual mailbox table")
    postfix_port = free_port()
    account = {"streams": [
        {"id": "orders", "kind": "transactional"},
        {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "envelope_from": [APP_SENDER]},
    ]}
    relay = await start_relay(
        make_config(tmp_path, postfix_port, account=account, unsubscribe={"mailto_domain": "relay.test"}), background=True
    )
    now = relay.services.clock.now()
    await relay.services.store.consent.upsert_consents(
        [ConsentRecord(email=e, scope="shop", topic="*", basis="double_opt_in", source="signup_form",
                       collected_at=now, confirmed_at=now, source_url="https://shop.example/signup",
                       source_ip="198.51.100.4", statement_text="Yes, send me the Shop newsletter", frequency_disclosed=True)
         for e in (ANNA, gone)],
        now=now,
    )
    # Postfix relays to the mailbox provider (the recording upstream) and routes the relay's own
    # domain, where its bounce goes, back to the relay.
    await asyncio.to_thread(
        postfix_mta, upstream.port, f"transport_maps = inline:{{relay.test=smtp:[127.0.0.1]:{relay.smtp_port}}}\n", postfix_port
    )
    newsletter = message(
        sender=APP_SENDER, subject="De zomercollectie", to=ANNA,
        body="Beste lezer,\r\n\r\nDe zomercollectie is binnen.\r\n\r\nAfmelden: {{unsubscribe_url}}",
    )
    first = await asyncio.to_thread(send, relay.smtp_port, newsletter, mail_from=APP_SENDER, rcpts=[ANNA, gone])
    assert first.code == 250, first  # Postfix queued both copies

    async def bounced() -> Any:
        return await relay.services.store.bounces.list(kind="hard")

    (bounce,) = await until(bounced, timeout=60, what="Postfix's DSN recorded as a hard bounce")
    assert (bounce.email, bounce.status) == (gone, "5.1.1") and "User unknown" in bounce.diagnostic
    second = await asyncio.to_thread(send, relay.smtp_port, newsletter, mail_from=APP_SENDER, rcpts=[ANNA, gone])
    assert second.rcpts[1][0] == 550 and second.rcpts[1][1].startswith("5.1.1 [suppression.bounced]"), second
    assert second.code == 250
