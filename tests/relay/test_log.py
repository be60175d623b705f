"""Log lines are JSON, one object a line, recipients hashed unless configured plain; a library's own
warnings (aiosmtpd's "mail.log") come out as JSON lines too, never as a bare text line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
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


def test_an_info_line_rendered_without_structlog_is_the_line_structlog_writes(buffer: io.StringIO) -> None:
    """_Logger.info renders a line itself under configure_logging's configuration (the decision
    line of every message): the same fields in the same order, the same JSON, as structlog's
    processors write it (the timestamp aside, which differs by the moment)."""
    configure_logging("info", stream=buffer)
    log = get_logger()
    fields = {
        "relay_id": "18c2a3b4c5d6e7f8a9b", "rules": ["content.x"], "recipients": ["sha256:e5b7b7ecbb4249a2"],
        "count": 3, "ratio": 0.5, "none": None, "nested": {"a": [1, "é"]}, "at": datetime(2026, 1, 2, tzinfo=timezone.utc),
    }
    log.info("decision", **fields)
    assert log._own_out is not None  # the line above did not go through structlog's chain
    log._current().info("decision", **fields)  # structlog's own chain of processors
    ours, theirs = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert list(ours) == list(theirs) == [*fields, "event", "level", "timestamp"]
    assert ours.pop("timestamp").endswith("Z") and theirs.pop("timestamp").endswith("Z")
    assert ours == theirs
    ours_line, theirs_line = (line.split(', "timestamp"')[0] for line in buffer.getvalue().splitlines())
    assert ours_line == theirs_line
    configure_logging("warning", stream=buffer)
    log.info("quiet")
    assert len(buffer.getvalue().splitlines()) == 2


_WRITER = """
import sys
from relay.log import configure_logging, get_logger
configure_logging("info")
log = get_logger()
for i in range(int(sys.argv[1])):
    log.info("line", writer=sys.argv[2], n=i)
    log.warning("other", writer=sys.argv[2], n=i)
"""


def test_processes_logging_to_one_pipe_never_share_a_line() -> None:
    """Workers of `[smtp] workers = N` write to one inherited stderr. Each JSON line must reach it in one
    write: a line written as its text and then its newline (print's two writes) was split by another
    process's line, and the reader (a log shipper, the tests' ServeProcess) lost both."""
    rfd, wfd = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, "3000", str(w)], stderr=wfd) for w in range(4)]
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        data = pipe.read()
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    lines = data.decode().splitlines()
    broken = [line for line in lines if not (line.startswith("{") and line.endswith("}"))]
    assert not broken, broken[:3]
    assert len([json.loads(line) for line in lines]) == 4 * 3000 * 2
