"""Log lines are JSON, one object a line, recipients hashed unless configured plain; a library's own
warnings (aiosmtpd's "mail.log") come out as JSON lines too, never as a bare text line."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timezone
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


def test_a_logger_kept_from_before_follows_each_new_configuration(buffer: io.StringIO) -> None:
    """get_logger's logger keeps what it built only while structlog's configuration stays: a logger
    taken before a new configuration (a new stream, a level, capture_logs' processors) follows it."""
    log = get_logger()
    configure_logging("info", stream=buffer)
    log.info("first")
    other = io.StringIO()
    configure_logging("warning", stream=other)
    log.info("quiet")
    log.warning("second")
    assert [json.loads(line)["event"] for line in buffer.getvalue().splitlines()] == ["first"]
    assert [json.loads(line)["event"] for line in other.getvalue().splitlines()] == ["second"]
    assert not log.is_enabled_for(logging.INFO) and log.is_enabled_for(logging.WARNING)
    with structlog.testing.capture_logs() as captured:
        log.warning("captured", n=1)
    assert captured == [{"event": "captured", "n": 1, "log_level": "warning"}]
    structlog.reset_defaults()
    with structlog.testing.capture_logs() as captured:
        log.info("after_reset")
    assert [c["event"] for c in captured] == ["after_reset"]


def test_a_decision_filtered_out_hashes_no_recipient(buffer: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.engine import decisions
    from relay.store.records import DecisionRecord

    hashed: list[str] = []
    monkeypatch.setattr(decisions, "recipient_labels", lambda rcpts: hashed.extend(rcpts) or [])
    recorder = decisions.DecisionRecorder(None)  # type: ignore[arg-type]
    record = DecisionRecord(relay_id="r1", outcome="delivered", created_at=datetime.now(timezone.utc), account="shop", recipients=("a@example.nl",))
    configure_logging("warning", stream=buffer)
    recorder.record(record)
    assert hashed == [] and buffer.getvalue() == ""
    configure_logging("info", stream=buffer)
    recorder.record(record)
    assert hashed == ["a@example.nl"] and json.loads(buffer.getvalue())["event"] == "decision"
