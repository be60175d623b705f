"""More real faults: a worker killed with `kill -9` in the middle of an outbox drain (its copies
come back after one short lease, none lost, any second copy counted as "maybe"), an upstream that
accepts and never answers (451 within the configured timeouts, never 250), and a PostgreSQL
server stopped and started under the relay (451 4.3.0 while down, recovery without a restart) on
a throwaway cluster of the test's own."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import RecordingUpstream, ServeProcess, asend, free_port, make_config, until
from tests.e2e.test_outbox_faults import copies, depth, enqueue
from tests.e2e.test_supervisor import worker_pids
from tests.relay.test_multi_instance import Instance, counter, instance_config


# --- kill -9 of a worker during a slow drain ---------------------------------------------------------


async def test_kill_9_of_a_worker_mid_drain_loses_nothing_and_its_copies_wait_one_short_lease(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    upstream.handler.delay = 0.1
    lease = 1.0
    (tmp_path / "var").mkdir()
    url = f"sqlite:///{tmp_path}/var/relay.db"
    items = copies(30)
    await enqueue(url, items)
    relay = ServeProcess(
        instance_config(
            tmp_path, upstream.port, "relay.toml", url, smtp={"listen": f"127.0.0.1:{free_port()}", "workers": 2},
            outbox={"lease_seconds": lease, "retry_initial_seconds": 0.2, "retry_max_seconds": 0.5},
        )
    )
    expected = {r for item in items for r in item.rcpt_tos}
    try:
        started = await relay.start(started=2)
        await until(lambda: len(upstream.recipients()) >= 10, timeout=30, what="the drain under way")
        os.kill(started[1]["pid"], signal.SIGKILL)  # it holds a claim, maybe a send in flight
        await until(lambda: expected <= set(upstream.recipients()), timeout=60, what="every copy at the sink")

        async def drained() -> bool:
            return await depth(url) == 0

        await until(drained, timeout=20, what="an empty outbox")
        # The drain may end before the replacement has started (lanes): its start is awaited, not assumed.
        await until(lambda: len(worker_pids(relay)) == 3, timeout=30, what="the killed worker replaced")
        admin = max(e["admin"] for e in started)  # worker 0's, the same socket after a replacement
        uncertain = await counter(Instance(relay, 0, admin, 0), "consent_relay_outbox_uncertain_total")
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()
    counts = Counter(upstream.recipients())
    assert set(counts) == expected  # 0 lost
    twice = {r for r, n in counts.items() if n > 1}
    # A second copy only for a send the killed worker had in flight, and then counted as "maybe".
    assert all(counts[r] == 2 for r in twice) and len(twice) <= uncertain * 2, (twice, uncertain)
    maybe = relay.events("outbox_maybe_delivered")
    assert len(maybe) == uncertain and len(worker_pids(relay)) == 3


# --- an upstream that accepts and never answers --------------------------------------------------------


class SilentUpstream:
    """Accepts TCP connections and never says a word (a wedged MTA, a black-holing firewall)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accept_all(self) -> None:
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentUpstream]:
    s = SilentUpstream()
    try:
        yield s
    finally:
        s.close()


class HangAfterData:
    """An upstream that takes MAIL, RCPT and the message, then never answers the end of DATA."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        await asyncio.Event().wait()  # for ever (the relay hangs up first)
        return "250 never"


async def test_an_upstream_that_never_answers_costs_the_timeout_and_gives_451(
    tmp_path: Path, silent: SilentUpstream, start_relay: Any
) -> None:
    timeout = 1.0
    relay = await start_relay(make_config(tmp_path, silent.port, upstream={"timeout": timeout, "starttls": "off"}))
    began = time.monotonic()
    out = await asend(relay.smtp_port)
    took = time.monotonic() - began
    assert out.code == 451 and out.text.startswith("4.4.1"), out
    assert took < 10 * timeout  # the configured timeout bounds it, not the silent host


async def test_an_upstream_that_hangs_after_the_message_gives_451_and_counts_it_uncertain(
    tmp_path: Path, start_relay: Any
) -> None:
    from aiosmtpd.controller import Controller

    handler = HangAfterData()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    try:
        relay = await start_relay(make_config(tmp_path, port, upstream={"timeout": 1, "starttls": "off"}))
        out = await asend(relay.smtp_port)
        assert out.code == 451, out  # never 250: the upstream did not confirm
        assert handler.received == 1
        metrics = relay.services.metrics.registry
        assert metrics.get_sample_value("consent_relay_upstream_uncertain_total") == 1
    finally:
        controller.stop()


# --- PostgreSQL stopped and started under the relay ---------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"{name} of PostgreSQL not found under /usr/lib/postgresql"
    return found[-1]


def _as_postgres(*argv: str) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


class ThrowawayCluster:
    """A PostgreSQL cluster of this test alone, on a free 127.0.0.1 port, in a temp dir."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        os.chmod(self.dir, 0o777)
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        _as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} -c fsync=off"
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        _as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[ThrowawayCluster]:
    c = ThrowawayCluster()
    try:
        c.start()
        yield c
    finally:
        c.remove()


async def test_postgresql_down_gives_451_4_3_0_and_the_relay_recovers_without_restart(
    tmp_path: Path, upstream: RecordingUpstream, cluster: ThrowawayCluster
) -> None:
    relay = ServeProcess(instance_config(tmp_path, upstream.port, "relay.toml", cluster.url, store={"timeout": 2}))
    try:
        (started,) = await relay.start()
        port = started["smtp"]
        assert (await asend(port, rcpts="before@example.nl")).code == 250
        await asyncio.to_thread(cluster.stop)
        down = [await asend(port, rcpts=f"down{i}@example.nl") for i in range(3)]
        for out in down:
            assert out.code == 451 and out.final[1].startswith("4.3.0"), out
        await asyncio.to_thread(cluster.start)

        async def recovered() -> bool:
            return (await asend(port, rcpts="after@example.nl")).code == 250

        await until(recovered, timeout=30, what="mail accepted again once PostgreSQL is back")
        assert relay.proc is not None and relay.proc.returncode is None  # the same process, not restarted
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()
    recipients = upstream.recipients()
    assert "before@example.nl" in recipients and "after@example.nl" in recipients
    assert not [r for r in recipients if r.startswith("down")]  # 451 means not sent
