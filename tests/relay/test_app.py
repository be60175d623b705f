"""relay/app.py: one relay process's start-up (docs/SPEC.md §12)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import structlog

import relay.app
from conftest import RelayFactory, make_config


async def test_a_slow_start_up_says_which_step_it_waits_on(
    tmp_path: Path, start_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that accepts and never greets holds the start-up in its probe for `upstream.timeout`;
    meanwhile the relay says so (relay_start_slow), rather than nothing until it gives up."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setattr(relay.app, "_START_SLOW_SECONDS", 0.2)
    config = make_config(tmp_path, silent.getsockname()[1], upstream={"timeout": 1})
    try:
        with structlog.testing.capture_logs() as captured:
            started = await start_relay(config)
    finally:
        silent.close()
    slow: list[dict[str, Any]] = [e for e in captured if e["event"] == "relay_start_slow"]
    assert slow and {e["step"] for e in slow} == {"upstream_probe"}, captured
    assert [e["waited"] for e in slow] == sorted(e["waited"] for e in slow)  # one line every few seconds
    assert started.upstream_ok is False  # the probe gave up; the relay started and answers 451 until it is back
    events = [e["event"] for e in captured]
    assert events.index("relay_started") > events.index(slow[-1]["event"])
    # after relay_started the watcher is gone: no more lines
    assert "relay_start_slow" not in events[events.index("relay_started"):]
