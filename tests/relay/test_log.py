"""Log lines are JSON, one object a line, recipients hashed unless configured plain; a library's own
warnings (aiosmtpd's "mail.log") come out as JSON lines too, never as a bare text line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from relay.log import configure_logging, get_logger, recipient_label


@pytest.fixture
def buffer() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    structlog.reset_defaults()
    library = logging.getLogger("mail.log")
    library.handlers.clear()
    library.propagate = True
    configure_logging.__globals__["_PLAIN"] = False


def test_library_warnings_are_json_and_its_info_is_quiet(buffer: io.StringIO) -> None:
    configure_logging("info", stream=buffer)
    logging.getLogger("mail.log").info("%r EHLO %s", ("192.0.2.1", 4242), "client.test")
    logging.getLogger("mail.log").warning("%r unrecognised: %s", ("192.0.2.1", 4242), "X" * 1000)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["event"] == "library_log" and entry["level"] == "warning" and entry["logger"] == "mail.log"
    assert len(entry["message"]) <= 300


def test_recipients_hashed_unless_plain(buffer: io.StringIO) -> None:
    configure_logging("info", stream=buffer)
    get_logger().info("decision", recipients=[recipient_label("Anna@Example.nl")])
    line = json.loads(buffer.getvalue())
    assert line["recipients"][0].startswith("sha256:") and "anna" not in buffer.getvalue().lower()
    assert recipient_label("anna@example.nl") == recipient_label("ANNA@example.nl")
    configure_logging("info", "plain", stream=buffer)
    assert recipient_label("anna@example.nl") == "anna@example.nl"
