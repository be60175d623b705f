"""The copies that go upstream name their transaction: one X-Relay-Id field, the relay's own."""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any

from conftest import RecordingUpstream, asend, message

from relay.engine.copies import with_relay_id


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
