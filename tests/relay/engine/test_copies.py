"""The copies that go upstream name their transaction: one X-Relay-Id field, the relay's own."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conftest import RecordingUpstream, asend, message

from relay.delivery.carrier import PARALLEL_COPIES
from relay.engine.copies import COPY_WINDOW, with_relay_id
from tests.e2e.test_unsubscribe_e2e import consent, newsletter, relay_config


def test_relay_id_goes_first_with_the_messages_own_line_ends() -> None:
    assert with_relay_id(b"Subject: hi\r\n\r\nbody\r\n", "abc123") == b"X-Relay-Id: abc123\r\nSubject: hi\r\n\r\nbody\r\n"
    assert with_relay_id(b"Subject: hi\n\nbody\n", "abc123") == b"X-Relay-Id: abc123\nSubject: hi\n\nbody\n"


def test_an_applications_own_relay_id_is_replaced() -> None:
    raw = b"X-Relay-Id: forged\r\nSubject: hi\r\nx-relay-id: again\r\n  folded\r\n\r\nX-Relay-Id: in the body stays\r\n"
    out = with_relay_id(raw, "abc123")
    assert out == b"X-Relay-Id: abc123\r\nSubject: hi\r\n\r\nX-Relay-Id: in the body stays\r\n"


async def test_every_copy_carries_the_relay_id_of_its_transaction(relay: Any, upstream: RecordingUpstream) -> None:
    out = await asend(relay.smtp_port, message(headers=("X-Relay-Id: forged",)), rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.code == 250, out
    relay_id = re.search(r"Delivered as (\w+)", out.text).group(1)  # type: ignore[union-attr]
    (copy,) = upstream.messages
    parsed = email.message_from_bytes(copy.content, policy=email.policy.default)
    assert parsed.get_all("X-Relay-Id") == [relay_id]


async def test_a_message_to_many_recipients_holds_a_window_of_copies_not_one_per_recipient(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any
) -> None:
    """Issue 20: per-recipient copies are made (rendered, signed) a window at a time as they are
    carried (a few at once), so a message's memory follows its size, not its number of recipients."""
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    rcpts = [f"reader{i}@example.nl" for i in range(2 * COPY_WINDOW + 3)]
    await relay.services.store.consent.upsert_consents([consent(r) for r in rcpts], now=datetime.now(timezone.utc))
    maker, carrier = relay.pipeline.copies, relay.pipeline.upstream
    made, sent, ahead, flying, most = 0, 0, [], 0, 0
    sign, send = maker.signer.sign, carrier.send

    async def counting_sign(messages: Any) -> Any:
        nonlocal made
        made += len(messages)
        return await sign(messages)

    async def counting_send(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent, flying, most
        ahead.append(made - sent)  # copies made and not yet carried, as this one goes
        sent += 1
        flying += 1
        most = max(most, flying)
        try:
            return await send(*args, **kwargs)
        finally:
            flying -= 1

    maker.signer.sign, carrier.send = counting_sign, counting_send  # the test's probes, not wiring
    out = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=rcpts)
    assert out.code == 250, out.text
    assert sorted(r for m in upstream.messages for r in m.rcpt_tos) == sorted(rcpts)
    assert made == sent == len(rcpts)
    assert max(ahead) <= COPY_WINDOW + PARALLEL_COPIES, ahead  # a window made, and those in flight
    assert 1 < most <= PARALLEL_COPIES  # not one round trip after another, and not all at once
