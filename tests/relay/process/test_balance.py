"""relay.process.balance: with `[smtp] workers`, a worker that holds more SMTP sessions than
another lets that one accept the next connection (at most MAX_YIELD_SECONDS), so a burst of
connections is not taken 7 to 3 by whichever worker woke first.

In process: two BalancedServers on one listening socket stand for two workers (each its own fd,
as inherited sockets are), sharing one LoadBoard. With real `serve` workers: the board the
supervisor made holds what each worker has, and held sessions are spread evenly."""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import time
from pathlib import Path

import pytest

from relay.process.balance import MAX_YIELD_SECONDS, Balance, BalancedServer, LoadBoard
from tests.conftest import CertFiles, RecordingUpstream, ServeProcess, asend, free_port, until
from tests.e2e.test_supervisor import two_workers, worker_pids


class Held(asyncio.Protocol):
    """A session that counts itself on its worker while its connection is open."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.worker.sessions += 1
        self.worker.accepted_at.append(time.monotonic())
        self.worker.balance.publish()

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.sessions -= 1
        self.worker.balance.publish()


class Worker:
    def __init__(self, board: LoadBoard, index: int, listener: socket.socket, sessions: int = 0) -> None:
        self.sessions = sessions
        self.accepted_at: list[float] = []
        self.balance = Balance(board, index, sessions=lambda: self.sessions)
        self.balance.publish()
        self.sock = listener.dup()  # a worker's own fd for the shared accept queue
        self.server = BalancedServer(self.sock, lambda: Held(self), self.balance)

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        self.sock.close()


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def test_the_board_is_shared_through_its_file_descriptor() -> None:
    board = LoadBoard.create(3)
    other = LoadBoard.inherited(os.dup(board.fd))  # as a worker maps the fd it inherited
    try:
        assert other.workers == 3 and [other.get(i) for i in range(3)] == [0, 0, 0]
        board.set(2, 7)
        assert other.get(2) == 7
        other.set(0, 4)
        assert board.get(0) == 4
        assert board.fewer_elsewhere(2, 7) and not board.fewer_elsewhere(1, 0)
    finally:
        other.close()
        board.close()


async def test_the_worker_with_fewer_sessions_takes_the_connection(listener: socket.socket) -> None:
    board = LoadBoard.create(2)
    busy, idle = Worker(board, 0, listener, sessions=3), Worker(board, 1, listener)
    clients = []
    try:
        for _ in range(3):
            clients.append(await connect(listener.getsockname()[1]))
            await until(lambda: idle.sessions + busy.sessions == 3 + len(clients), timeout=5, what="an accept")
        # the idle worker took every one: each time it still held fewer than the busy one's three
        assert (busy.accepted_at, idle.sessions) == ([], 3)
        assert board.get(1) == 3
    finally:
        for c in clients:
            c.close()
        await busy.close()
        await idle.close()
        board.close()


async def test_a_worker_waits_for_a_less_busy_one_only_so_long(listener: socket.socket) -> None:
    board = LoadBoard.create(2)
    board.set(1, 0)  # a worker that says it is idle but does not accept (stuck, or being replaced)
    busy = Worker(board, 0, listener, sessions=5)
    try:
        sent = time.monotonic()
        client = await connect(listener.getsockname()[1])
        await until(lambda: busy.accepted_at, timeout=5, what="the busy worker's accept")
        assert busy.accepted_at[0] - sent >= MAX_YIELD_SECONDS
        client.close()
    finally:
        await busy.close()
        board.close()


async def test_held_sessions_end_up_evenly_spread(listener: socket.socket) -> None:
    board = LoadBoard.create(2)
    workers = [Worker(board, 0, listener), Worker(board, 1, listener)]
    clients = []
    try:
        for n in range(1, 11):
            clients.append(await connect(listener.getsockname()[1]))
            await until(lambda: sum(w.sessions for w in workers) == n, timeout=5, what=f"session {n}")
        assert [w.sessions for w in workers] == [5, 5]
        for c in clients[:4]:
            c.close()
        await until(lambda: sum(w.sessions for w in workers) == 6, timeout=5, what="four sessions ending")
        assert board.get(0) + board.get(1) == 6  # ends are published too
    finally:
        for c in clients:
            c.close()
        for w in workers:
            await w.close()
        board.close()


async def test_a_closed_server_accepts_nothing_more(listener: socket.socket) -> None:
    board = LoadBoard.create(1)
    worker = Worker(board, 0, listener)
    await worker.close()
    client = await connect(listener.getsockname()[1])  # queued by the kernel, never accepted here
    await asyncio.sleep(0.05)
    assert worker.sessions == 0 and worker.accepted_at == []
    client.close()
    board.close()


def established(pid: int, port: int) -> int:
    """The TCP connections process `pid` holds open whose local port is `port`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def supervisor_board(pid: int) -> list[int]:
    """The counts on the board the supervisor `pid` made, read through its fd in /proc."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if "consent-relay-sessions" in os.readlink(f"/proc/{pid}/fd/{fd}"):
            with open(f"/proc/{pid}/fd/{fd}", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                view = memoryview(m).cast("q")
                try:
                    return list(view)
                finally:
                    view.release()
    raise AssertionError("no session board among the supervisor's files")


async def test_serve_workers_spread_held_sessions_and_say_so_on_the_board(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    port = free_port()
    relay = ServeProcess(two_workers(tmp_path, upstream, port))
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await relay.start(started=2)
        assert relay.proc is not None
        pids = worker_pids(relay)
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220 ")
            clients.append((reader, writer))
        held = [established(pid, port) for pid in pids]
        assert sum(held) == 10 and max(held) - min(held) <= 2, held
        assert supervisor_board(relay.proc.pid) == held
        for _, writer in clients:
            writer.close()
        await until(lambda: supervisor_board(relay.proc.pid) == [0, 0], timeout=10, what="the board emptied")
        assert await relay.stop() == 0
    finally:
        for _, writer in clients:
            writer.close()
        await relay.ensure_stopped()


async def test_serve_workers_take_implicit_tls_and_starttls_sessions(
    tmp_path: Path, upstream: RecordingUpstream, tls_cert: CertFiles
) -> None:
    """The implicit-TLS listener's handshake runs in the balanced accept's own task."""
    port, tls_port = free_port(), free_port()
    smtp = {"tls_cert": str(tls_cert.cert), "tls_key": str(tls_cert.key), "tls_listen": f"127.0.0.1:{tls_port}"}
    relay = ServeProcess(two_workers(tmp_path, upstream, port, smtp=smtp))
    try:
        await relay.start(started=2)
        implicit = [await asend(tls_port, implicit_tls=True, rcpts=[f"i{n}@example.nl"]) for n in range(4)]
        starttls = [await asend(port, starttls=True, rcpts=[f"s{n}@example.nl"]) for n in range(4)]
        assert [o.code for o in implicit + starttls] == [250] * 8, implicit + starttls
        assert len(upstream.recipients()) == 8
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
            raw.sendall(b"EHLO not-tls\r\n")  # no handshake: the worker drops it and goes on
            said = b""
            while chunk := raw.recv(4096):  # a TLS alert at most, then the end (a timeout fails the test)
                said += chunk
            assert not said.startswith(b"220")
        assert (await asend(tls_port, implicit_tls=True, rcpts=["after@example.nl"])).code == 250
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()
