"""The relay as a real process: a fresh start from config.example.toml, `kill -9` with copies in the
outbox then a restart (each delivered once), SIGTERM draining a session that is inside DATA."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import smtplib
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from conftest import RecordingUpstream, ServeProcess, asend, config_dict, free_port, message, until, write_config

REPO = Path(__file__).resolve().parents[2]


class RelayProcess(ServeProcess):
    """conftest's ServeProcess, with the calls these tests make: the first line of an event, the
    exit code without sending anything, a signal of the test's choosing."""

    async def start(self, *, started: int = 1) -> dict[str, Any]:  # type: ignore[override]
        return (await super().start(started=started))[0]

    def event(self, name: str) -> dict[str, Any] | None:
        found = self.events(name)
        return found[0] if found else None

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


async def http_get(port: int, path: str) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()


async def test_fresh_start_from_example_config_without_upstream(tmp_path: Path) -> None:
    """`make run` on a fresh machine: no MTA on the upstream port, the relay still starts and says why."""
    text = (REPO / "config.example.toml").read_text()
    smtp, admin, public, dead = free_port(), free_port(), free_port(), free_port()
    text = text.replace('listen = "127.0.0.1:2525"', f'listen = "127.0.0.1:{smtp}"', 1)
    text = text.replace('admin_listen = "127.0.0.1:8025"', f'admin_listen = "127.0.0.1:{admin}"', 1)
    text = text.replace('public_listen = "127.0.0.1:8080"', f'public_listen = "127.0.0.1:{public}"', 1)
    text = re.sub(r"(\[upstream\][^\[]*?\nport = )\d+\b", rf"\g<1>{dead}", text, count=1)
    assert f":{smtp}" in text and f"port = {dead}" in text
    config = tmp_path / "config.example.toml"
    config.write_text(text)
    relay = RelayProcess(config)
    workers = len(os.sched_getaffinity(0))  # the example's `workers = "auto"`: one per usable core
    try:
        started = await ServeProcess.start(relay, started=workers)
        assert {line["smtp"] for line in started} == {smtp}  # every worker serves the SMTP port
        assert [line["admin"] for line in started if line["admin"]] == [admin]  # one serves the admin listener
        assert (tmp_path / "var" / "relay.db").exists()  # SQLite store under ./var, created on first start
        warnings = relay.events("upstream_unreachable")  # warned once per worker
        assert len(warnings) == workers, warnings
        assert all(w["level"] == "warning" and str(dead) in w["error"] for w in warnings)

        out = await asend(smtp)  # 127.0.0.1 is trusted for account "shop" in the example
        assert out.code == 451 and out.text.startswith("4.4.1"), out
        status, body = await http_get(admin, "/readyz")
        assert status == 503
        ready = json.loads(body)
        assert ready["ready"] is False and ready["store"]["ok"] is True
        assert ready["upstream"]["ok"] is False and str(dead) in ready["upstream"]["detail"]
        assert len(relay.events("upstream_unreachable")) == workers  # not once per message or probe

        relay.signal(signal.SIGTERM)
        assert await relay.wait() == 0
    finally:
        await relay.ensure_stopped()
    assert all(line.lstrip().startswith(b"{") for line in relay.raw if line.strip()), relay.raw[:5]


def _outbox_rows(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM outbox WHERE status='pending'").fetchall()
    finally:
        conn.close()


async def test_kill_9_with_outbox_then_restart_delivers_each_once(tmp_path: Path, upstream: RecordingUpstream) -> None:
    data = config_dict(tmp_path, upstream.port)
    data["outbox"] = {"retry_initial_seconds": 1, "retry_max_seconds": 2, "poll_seconds": 0.1}
    config = write_config(tmp_path, data)
    db = tmp_path / "var" / "relay.db"
    later = [f"bob{i}@example.nl" for i in range(5)]
    for rcpt in later:
        upstream.answer_rcpt(rcpt, "450 4.2.1 Mailbox busy, try later")

    first = RelayProcess(config)
    try:
        started = await first.start()
        for rcpt in later:
            out = await asend(started["smtp"], rcpts=["anna@example.nl", rcpt])
            assert out.code == 250 and "queued for retry" in out.text, out
        assert upstream.recipients() == ["anna@example.nl"] * 5

        # Kill while no copy is leased and none is due within half a second, so no attempt is in flight.
        def quiet() -> bool:
            rows = _outbox_rows(db)
            now = time.time()
            return len(rows) == 5 and all(r["lease_owner"] == "" and r["next_attempt_at"] > now + 0.5 for r in rows)

        await until(quiet, timeout=20, what="an idle outbox")
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    finally:
        await first.ensure_stopped()
    assert len(_outbox_rows(db)) == 5  # the copies survived the kill

    for rcpt in later:
        upstream.answer_rcpt(rcpt, None)
    second = RelayProcess(config)
    try:
        await second.start()
        await until(lambda: set(later) <= set(upstream.recipients()), timeout=20, what="outbox delivered after restart")
        await until(lambda: not _outbox_rows(db), what="empty outbox")
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
    finally:
        await second.ensure_stopped()
    counts = {r: upstream.recipients().count(r) for r in later}
    assert counts == {r: 1 for r in later}  # exactly once
    assert upstream.recipients().count("anna@example.nl") == 5


def _start_data(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=15)
    client.ehlo("client.test")
    assert client.mail("orders@shop.example")[0] == 250
    assert client.rcpt("anna@example.nl")[0] == 250
    code, _ = client.docmd("DATA")
    assert code == 354
    return client


async def test_sigterm_drains_session_inside_data_and_exits_0(tmp_path: Path, upstream: RecordingUpstream) -> None:
    data = config_dict(tmp_path, upstream.port)
    data["smtp"]["shutdown_grace"] = 20
    relay = RelayProcess(write_config(tmp_path, data))
    try:
        started = await relay.start()
        port = started["smtp"]
        client = await asyncio.to_thread(_start_data, port)
        content = message()
        head, body = content[: len(content) // 2], content[len(content) // 2 :]
        await asyncio.to_thread(client.send, head)
        relay.signal(signal.SIGTERM)
        await until(lambda: relay.event("relay_draining"), what="drain started")

        def refused() -> bool:  # new connections are no longer accepted
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=2).close()
            except OSError:
                return True
            return False

        assert await asyncio.to_thread(refused)
        await asyncio.to_thread(client.send, body + b".\r\n")
        code, text = await asyncio.to_thread(client.getreply)
        assert code == 250, text
        client.close()
        assert await relay.wait() == 0
    finally:
        await relay.ensure_stopped()
    assert len(upstream.messages) == 1
    assert relay.event("relay_stopped") is not None


async def test_check_config_rejects_bad_file_without_starting(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    shutil.copy(REPO / "config.example.toml", config)
    config.write_text(config.read_text().replace("max_recipients = 1000", 'max_recipients = "many"'))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli.main", "serve", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env={**os.environ},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "smtp.max_recipients" in lines[0], lines
    assert not (tmp_path / "var").exists()
