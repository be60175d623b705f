"""A real Postfix as the application's MTA (relayhost = the relay, SPEC §15): a recipient the relay
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
from conftest import RecordingUpstream, free_port, make_config, message, until

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

    def start(relay_port: int) -> PostfixRelay:
        mta = PostfixRelay(base / "postfix", free_port(), relay_port)
        instances.append(mta)
        mta.start()
        mta.wait_master()
        return mta

    yield start
    for mta in instances:
        mta.stop()
    shutil.rmtree(base, ignore_errors=True)


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
    assert f"to=<{APP_SENDER}>" in log and "status=sent" in log.split(f"to=<{APP_SENDER}>", 1)[1].splitlines()[0], log
