"""Outbox drain after an upstream outage under load (issue 20): the live rate, the outbox filled
during the outage, the drain rate once the upstream is back, the relay's RSS over time, and every
promised copy counted at the sink (lost / duplicated).

    python -m bench.drain                    # the full run: a 600 s outage
    python -m bench.drain --outage 120       # a quick one
    python -m bench.drain --postgres         # the store on PostgreSQL (a throw-away schema)

Phases, against `consent-relay serve` (`[smtp] workers = --workers`, SQLite, or with --postgres a
fresh schema in that PostgreSQL database, dropped at the end; marketing stream with consent, 10 recipients a message, so 10 personalised copies a message):

1. live: a closed loop of --concurrency clients for --live seconds; the live rate is the copies a
   second the sink takes (the relay's capacity on this machine at that moment).
2. outage (--outage seconds): the load goes on at --rate messages a second while the upstream takes
   only the first copy of each message and defers every other recipient (450 at RCPT). A total stop
   would not fill the outbox: with nothing accepted the relay answers 451 and the client keeps its
   mail (docs/SPEC.md §3); the copies that wait in the outbox are the rest of messages the upstream
   failed part-way. --outage-kind stop closes the sink instead (the client's 451s are retried after).
3. drain: the upstream takes everything again. The load goes on at --rate for --load-after seconds
   (the drain rate "with load"), then stops (the drain rate "after the load stopped") until the
   outbox is empty and the sink holds every promised copy.
4. settle: --settle seconds more, for the RSS after.

The sink (a small SMTP server in its own process) counts every copy by its message's X-Bench
header and recipient. The relay's RSS (all its processes) and the outbox depth (read from the
store) are sampled every second into OUT/drain.csv. Prints one JSON summary; exits 1 on a
lost copy or a duplicate the relay did not report as uncertain.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.relay_config import recipients, uncertain_copies, write_consent_csv, write_relay_config
from bench.throughput import POSTGRES_URL, postgres_schema

REPO = Path(__file__).resolve().parents[1]
MESSAGE = REPO / "bench" / "message.eml"
SENDER = "news@shop.example"
FIRST_RECIPIENT = "rcpt@example.net"
PY_SPY = "/work/main/.venv/bin/py-spy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the sink (its own process) -----------------------------------------------------------------


class _SinkSession(asyncio.Protocol):
    def __init__(self, sink: _SinkState) -> None:
        self.sink = sink
        self.buf = b""
        self.data: list[bytes] | None = None
        self.rcpts: list[str] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sink.sessions.add(self)
        transport.write(b"220 sink ESMTP\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.sessions.discard(self)

    def data_received(self, chunk: bytes) -> None:
        self.buf += chunk
        out: list[bytes] = []
        while True:
            if self.data is not None:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    # Keep the last 4 bytes: the end marker may be split across reads.
                    self.data.append(self.buf[:-4])
                    self.buf = self.buf[-4:]
                    break
                self.data.append(self.buf[: end + 2])
                self.buf = self.buf[end + 5 :]
                out.append(self._message(b"".join(self.data)))
                self.data = None
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            line, self.buf = self.buf[:nl], self.buf[nl + 2 :]
            out.append(self._command(line))
            if self.transport is None or self.transport.is_closing():
                return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000\r\n"
        if verb == b"HELO":
            return b"250 sink\r\n"
        if verb == b"MAIL":
            self.rcpts = []
            return b"250 2.1.0 Ok\r\n"
        if verb == b"RCPT":
            rcpt = line[line.find(b"<") + 1 : line.rfind(b">")].decode("utf-8", "replace").lower()
            if self.sink.mode == "partial" and rcpt != FIRST_RECIPIENT:
                self.sink.deferred += 1
                return b"450 4.2.1 Mailbox busy, try later\r\n"
            self.rcpts.append(rcpt)
            return b"250 2.1.5 Ok\r\n"
        if verb == b"DATA":
            if not self.rcpts:
                return b"503 5.5.1 No valid recipients\r\n"
            self.data = []
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self.rcpts = []
            return b"250 2.0.0 Ok\r\n"
        if verb == b"NOOP":
            return b"250 2.0.0 Ok\r\n"
        if verb == b"QUIT":
            assert self.transport is not None
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.close()
            return b""
        return b"502 5.5.2 Command not recognized\r\n"

    def _message(self, content: bytes) -> bytes:
        start = content.find(b"\nX-Bench: ")
        key = content[start + 10 : content.find(b"\r\n", start + 1)].decode() if start >= 0 else "?"
        for rcpt in self.rcpts:
            self.sink.counts[(key, rcpt)] += 1
        self.sink.copies[key[0]] += len(self.rcpts)
        self.rcpts = []
        return b"250 2.0.0 Ok: queued\r\n"


@dataclass
class _SinkState:
    mode: str = "up"  # up | partial (only the first recipient of a message) | stop (not listening)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    copies: Counter[str] = field(default_factory=Counter)  # by the phase letter of the X-Bench id
    deferred: int = 0
    sessions: set[_SinkSession] = field(default_factory=set)


def _sink_main(port: int, control: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    state = _SinkState()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server: asyncio.AbstractServer | None = await loop.create_server(lambda: _SinkSession(state), "127.0.0.1", port, backlog=1024)
        done = loop.create_future()

        def on_command() -> None:
            nonlocal server
            try:
                command, arg = control.recv()
            except EOFError:
                done.set_result(None) if not done.done() else None
                return
            if command == "mode":
                if arg == "stop" and server is not None:
                    server.close()
                    server = None
                    for session in list(state.sessions):
                        if session.transport is not None:
                            session.transport.abort()
                elif arg != "stop" and server is None:
                    loop.create_task(_restart())
                state.mode = arg
                control.send(True)
            elif command == "stats":
                control.send({"copies": dict(state.copies), "deferred": state.deferred})
            elif command == "counts":
                control.send(dict(state.counts))
            elif command == "exit":
                control.send(True)
                done.set_result(None)

        async def _restart() -> None:
            nonlocal server
            server = await loop.create_server(lambda: _SinkSession(state), "127.0.0.1", port, backlog=1024)

        loop.add_reader(control.fileno(), on_command)
        await done

    asyncio.run(main())


class Sink:
    def __init__(self) -> None:
        self.port = free_port()
        parent, child = multiprocessing.Pipe()
        self.control = parent
        self.proc = multiprocessing.get_context("fork").Process(target=_sink_main, args=(self.port, child), daemon=True)
        self.proc.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def call(self, command: str, arg: Any = None) -> Any:
        self.control.send((command, arg))
        return self.control.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.call("exit")
            except (OSError, EOFError):
                pass
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()


# --- the load ------------------------------------------------------------------------------------


class Load:
    """SMTP clients on kept-open connections, commands pipelined. Every message gets an id in its
    X-Bench header: its phase's letter and a number; `promised` holds each (id, recipient) the relay
    answered 250 for. A message answered 4xx is kept for `retry` (an MTA would try it again)."""

    def __init__(self, port: int, rcpts: list[str]) -> None:
        self.port = port
        self.rcpts = rcpts
        raw = MESSAGE.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.body = raw.replace(b".\r\n", b"..\r\n") if raw.startswith(b".") else raw
        self.promised: set[tuple[str, str]] = set()
        self.answers: Counter[str] = Counter()  # 2xx / 4xx / 5xx / error
        self.retry: list[str] = []
        self.tempfailed: set[str] = set()  # ids answered 4xx at least once (sent again later)
        self.seq = 0
        self.envelope = (f"MAIL FROM:<{SENDER}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n").encode()

    def next_id(self, phase: str) -> str:
        self.seq += 1
        return f"{phase}{self.seq}"

    def content(self, bench_id: str) -> bytes:
        payload = f"X-Bench: {bench_id}\r\n".encode() + self.body
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        # Dot-stuffing: a line that starts with "." gets a second one.
        return payload.replace(b"\r\n.", b"\r\n..") + b".\r\n"

    async def client(self, ids: asyncio.Queue[str | None]) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            bench_id = await ids.get()
            if bench_id is None:
                break
            try:
                if writer is None or writer.is_closing():
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    await _reply(reader)
                    writer.write(b"EHLO bench.example\r\n")
                    await _reply(reader)
                assert reader is not None
                writer.write(self.envelope)
                code = await _reply(reader)  # MAIL
                accepted = []
                for rcpt in self.rcpts:
                    if (await _reply(reader)) == 250:
                        accepted.append(rcpt)
                code = await _reply(reader)  # DATA
                if code != 354:
                    self.answers["data-refused"] += 1
                    writer.write(b"RSET\r\n")
                    await _reply(reader)
                    continue
                writer.write(self.content(bench_id))
                code = await _reply(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.answers["error"] += 1
                self.retry.append(bench_id)
                if writer is not None:
                    writer.close()
                writer = None
                continue
            if code == 250:
                self.answers["2xx"] += 1
                self.promised.update((bench_id, r) for r in accepted)
            elif 400 <= code < 500:
                self.answers["4xx"] += 1
                self.retry.append(bench_id)
                self.tempfailed.add(bench_id)
            else:
                self.answers["5xx"] += 1
        if writer is not None:
            writer.write(b"QUIT\r\n")
            writer.close()


async def _reply(reader: asyncio.StreamReader) -> int:
    """The code of one (possibly multi-line) reply."""
    while True:
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 600)
        if len(line) < 4:
            raise ValueError(f"bad reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


# --- measuring the relay -------------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def tree_cpu_ticks(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(x) for x in stat[stat.rindex(b")") + 2 :].split()[11:13])
    return total


_DEPTH = "SELECT count(*) FROM outbox WHERE status='pending'"


class OutboxDepth:
    """The copies waiting in the relay's outbox: read from the SQLite file, or on one connection of
    its own to the PostgreSQL schema (`store_url`); -1 when the store does not answer."""

    def __init__(self, db: Path, store_url: str | None = None) -> None:
        self.db = db
        self.store_url = store_url
        self._conn: Any = None
        self._lock = asyncio.Lock()  # the sampler and the phases share the one connection

    async def __call__(self) -> int:
        if self.store_url is None:
            try:
                with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as conn:
                    return int(conn.execute(_DEPTH).fetchone()[0])
            except sqlite3.Error:
                return -1
        import asyncpg

        try:
            async with self._lock:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.store_url, timeout=10)
                return int(await self._conn.fetchval(_DEPTH, timeout=10))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return -1

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


@dataclass
class Sample:
    t: float
    phase: str
    rss_kib: int
    depth: int
    at_sink: int
    from_outage: int  # copies of outage-phase messages at the sink
    promised: int
    cpu_ticks: int


# --- the run -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, store_url: str | None = None) -> dict[str, Any]:
    """One run; the store is SQLite, or the PostgreSQL schema `store_url` selects."""
    work = Path(tempfile.mkdtemp(prefix="drain-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exe = str(Path(args.relay or REPO) / ".venv" / "bin" / "consent-relay")
    sink = Sink()
    smtp = free_port()
    rcpts = recipients(FIRST_RECIPIENT, args.recipients)
    config = write_relay_config(
        work / "relay.toml", smtp_port=smtp, upstream_port=sink.port, admin_port=free_port(), public_port=free_port(),
        store_path=work / "relay.db", store_url=store_url, workers=args.workers, stream_kind="marketing", log_level="warning",
        overrides=json.loads(args.overrides) if args.overrides else None,
    )
    subprocess.run(
        [exe, "-c", str(config), "consent", "import", str(write_consent_csv(work / "consent.csv", rcpts)), "--account", "shop"],
        check=True, capture_output=True, cwd=work, timeout=120,
    )
    relay_log = open(work / "relay.log", "wb")
    proc = subprocess.Popen([exe, "-c", str(config), "serve"], cwd=work, stdout=subprocess.DEVNULL, stderr=relay_log, start_new_session=True)
    load = Load(smtp, rcpts)
    samples: list[Sample] = []
    backlog: dict[str, int] = {}  # per paced phase: the most messages waiting for a client
    marks: dict[str, float] = {}
    phase = "start"
    profile: subprocess.Popen[bytes] | None = None
    outbox_depth = OutboxDepth(work / "relay.db", store_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", smtp), 1) as s:
                    if s.recv(4).startswith(b"220"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the relay did not start: {(work / 'relay.log').read_text()[-2000:]}")
            await asyncio.sleep(0.2)
        start = time.monotonic()

        def stats() -> tuple[int, int]:
            copies = sink.call("stats")["copies"]
            return sum(copies.values()), copies.get("o", 0)

        async def sampler() -> None:
            next_at = 0.0
            while True:
                at_sink, from_outage = stats()
                samples.append(Sample(
                    round(time.monotonic() - start, 2), phase, tree_rss_kib(proc.pid), await outbox_depth(), at_sink, from_outage,
                    len(load.promised), tree_cpu_ticks(proc.pid),
                ))
                next_at += 1.0
                await asyncio.sleep(max(0.0, next_at - (time.monotonic() - start)))

        sampling = asyncio.create_task(sampler())

        async def closed_loop(letter: str, seconds: float) -> None:
            ids: asyncio.Queue[str | None] = asyncio.Queue(maxsize=args.concurrency)
            clients = [asyncio.create_task(load.client(ids)) for _ in range(args.concurrency)]
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                await ids.put(load.next_id(letter))
            for _ in clients:
                await ids.put(None)
            await asyncio.gather(*clients)

        async def paced(letter: str, rate: float, stop: asyncio.Event, retries: bool = False) -> None:
            ids: asyncio.Queue[str | None] = asyncio.Queue()
            clients = [asyncio.create_task(load.client(ids)) for _ in range(args.paced_clients)]
            t0, n = time.monotonic(), 0
            while not stop.is_set():
                due = int((time.monotonic() - t0) * rate)
                while n < due:
                    n += 1
                    ids.put_nowait(load.next_id(letter))
                if retries and load.retry:
                    batch, load.retry = load.retry, []
                    for bench_id in batch:
                        ids.put_nowait(bench_id)
                backlog[letter] = max(backlog.get(letter, 0), ids.qsize())  # the relay fell behind the rate
                try:
                    await asyncio.wait_for(stop.wait(), 0.05)
                except TimeoutError:
                    pass
            for _ in clients:
                ids.put_nowait(None)
            await asyncio.gather(*clients)

        # 1. live: the relay's capacity (a warm-up first, not counted)
        phase = "warmup"
        await closed_loop("w", args.warmup)
        phase = "live"
        marks["live_start"] = time.monotonic() - start
        live_from = stats()[0]
        t0 = time.monotonic()
        await closed_loop("l", args.live)
        live_seconds = time.monotonic() - t0
        await asyncio.sleep(1)  # the last answers' copies are at the sink: each 250 followed its copies
        live_copies = stats()[0] - live_from
        live_rate = live_copies / live_seconds
        marks["live_end"] = time.monotonic() - start

        # 2. the outage, under a paced load
        rate = args.rate or math.ceil(args.target / ((len(rcpts) - 1) * args.outage))
        phase = "outage"
        sink.call("mode", "partial" if args.outage_kind == "partial" else "stop")
        marks["outage_start"] = time.monotonic() - start
        stop = asyncio.Event()
        outage_load = asyncio.create_task(paced("o", rate, stop))
        await asyncio.sleep(args.outage)
        stop.set()
        await outage_load
        outage_promised = sum(1 for key, _ in load.promised if key.startswith("o"))
        queued_at_end = await outbox_depth()

        # 3. the upstream is back: the drain, first with the load going on, then without
        sink.call("mode", "up")
        back = time.monotonic()
        marks["upstream_back"] = back - start
        sink_at_back, from_outage_at_back = stats()
        if args.profile:
            profile = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(proc.pid), "--subprocesses", "--rate", "100", "--duration", str(args.profile),
                 "--nonblocking", "--format", args.profile_format,
                 "--output", str(out / ("drain-profile.svg" if args.profile_format == "flamegraph" else "drain-profile.txt"))],
                stdout=subprocess.DEVNULL, stderr=open(work / "py-spy.log", "wb"),
            )
        phase = "drain+load"

        async def drained() -> float:
            # From the upstream's return, not from the load's stop: a drain that ends while the load goes
            # on is timed where it ends (a check after the load window only would cap the rate at
            # queued / --load-after, as the 10-minute run of session 17 was: 102,591 / 30 s = 3,419).
            while True:
                if stats()[1] >= outage_promised and await outbox_depth() == 0:
                    return time.monotonic()
                await asyncio.sleep(0.2)

        drain_end = asyncio.create_task(drained())
        stop = asyncio.Event()
        drain_load = asyncio.create_task(paced("d", rate, stop, retries=True))
        await asyncio.sleep(args.load_after)
        stop.set()
        await drain_load
        load_window_seconds = with_load_seconds = time.monotonic() - back
        sink_at_load_stop, from_outage_at_load_stop = stats()
        if drain_end.done():  # drained before the load stopped: the window with load ends there
            with_load_seconds = drain_end.result() - back
        from_outage_with_load = from_outage_at_load_stop - from_outage_at_back
        all_with_load = sink_at_load_stop - sink_at_back
        depth_at_load_stop = await outbox_depth()
        phase = "drain"
        load_stopped = time.monotonic()
        marks["load_stopped"] = load_stopped - start
        from_outage_at_stop = stats()[1]
        while load.retry:  # the 451s of a full stop, sent again now, without new mail
            ids: asyncio.Queue[str | None] = asyncio.Queue()
            for bench_id in load.retry:
                ids.put_nowait(bench_id)
            load.retry = []
            clients = [asyncio.create_task(load.client(ids)) for _ in range(args.paced_clients)]
            for _ in clients:
                ids.put_nowait(None)
            await asyncio.gather(*clients)
        drained_at: float | None = None
        try:
            drained_at = await asyncio.wait_for(asyncio.shield(drain_end), args.drain_timeout)
        except TimeoutError:
            drain_end.cancel()
        from_outage_after_stop = stats()[1] - from_outage_at_stop
        marks["drained"] = (drained_at or time.monotonic()) - start
        after_stop_seconds = max(0.0, (drained_at or time.monotonic()) - load_stopped)

        # 4. settle
        phase = "settle"
        await asyncio.sleep(args.settle)
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        counts = Counter(sink.call("counts"))
    finally:
        if profile is not None:
            try:
                profile.wait(args.profile + 60)
            except subprocess.TimeoutExpired:
                profile.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        relay_log.close()
        sink.stop()
        await outbox_depth.close()
    lost = sum(1 for key in load.promised if counts[key] == 0)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    # A 451 after part of the message went upstream and the rest could not be kept (the store's write
    # lock timed out): the client sends it again, and the part already delivered arrives twice. The
    # relay logs it (store_unavailable, stage outbox) and docs/faults-smtp.md names it.
    after_451 = sum(n - 1 for (key, _), n in counts.items() if n > 1 and key in load.tempfailed)
    unpromised = sum(1 for key in counts if key not in load.promised)
    uncertain = uncertain_copies(work / "relay.log")

    def median(values: list[int]) -> float:
        return sorted(values)[len(values) // 2] if values else float("nan")

    def mib(kib: float) -> float:
        return round(kib / 1024, 1)

    rss = {
        "baseline": median([s.rss_kib for s in samples if s.phase == "live"]),
        "outage_first_minute": median([s.rss_kib for s in samples if s.phase == "outage" and s.t < marks["outage_start"] + 60]),
        "outage_last_minute": median([s.rss_kib for s in samples if s.phase == "outage" and s.t >= marks["upstream_back"] - 60]),
        "peak": max(s.rss_kib for s in samples),
        "peak_drain": max((s.rss_kib for s in samples if s.phase.startswith("drain")), default=0),
        "after": median([s.rss_kib for s in samples if s.phase == "settle"]),
    }
    peak_depth = max(s.depth for s in samples)
    drain_with_load = from_outage_with_load / with_load_seconds
    drain_after_stop = from_outage_after_stop / after_stop_seconds if after_stop_seconds > 0 else float("nan")
    drain_total_seconds = (drained_at - back) if drained_at else None
    queued_copies = outage_promised - sum(1 for key, r in load.promised if key.startswith("o") and r == FIRST_RECIPIENT)
    summary = {
        "command": "python -m bench.drain " + " ".join(sys.argv[1:]), "relay": str(args.relay or REPO),
        "workers": args.workers, "recipients": len(rcpts), "concurrency": args.concurrency, "outage_s": args.outage,
        "outage_kind": args.outage_kind, "rate_msg_s": rate, "store": "postgresql" if store_url else "sqlite",
        "live_copies_s": round(live_rate, 1),
        "queued_copies": queued_copies, "outbox_depth_peak": peak_depth, "outbox_depth_at_upstream_back": queued_at_end,
        "drain_with_load_copies_s": round(drain_with_load, 1), "drain_with_load_window_s": round(with_load_seconds, 1),
        "sink_with_load_copies_s": round(all_with_load / load_window_seconds, 1),  # the outbox's and the new mail's
        "outbox_depth_at_load_stop": depth_at_load_stop,
        "drain_after_load_copies_s": round(drain_after_stop, 1), "drain_after_load_window_s": round(after_stop_seconds, 1),
        "drain_overall_copies_s": round(queued_copies / drain_total_seconds, 1) if drain_total_seconds else None,
        "drained_in_s": round(drain_total_seconds, 1) if drain_total_seconds else None,
        "ratio_after_load": round(drain_after_stop / live_rate, 2),
        "ratio_with_load": round(drain_with_load / live_rate, 2),
        "ratio_overall": round(queued_copies / drain_total_seconds / live_rate, 2) if drain_total_seconds else None,
        "rss_mib": {k: mib(v) for k, v in rss.items()},
        "promised_copies": len(load.promised), "copies_at_sink": sum(counts.values()),
        "lost": lost, "duplicated": duplicated, "unpromised_at_sink": unpromised, "reported_uncertain": uncertain,
        "duplicated_after_a_451": after_451,
        "silent_duplicates": max(0, duplicated - uncertain - after_451), "answers": dict(load.answers),
        "outage_messages_sent": sum(1 for _ in {key for key, _ in load.promised if key.startswith("o")}),
        "paced_backlog_max": backlog,
        "marks_s": {k: round(v, 1) for k, v in marks.items()}, "work": str(work),
    }
    with (out / "drain.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seconds", "phase", "rss_kib", "outbox_depth", "copies_at_sink", "outage_copies_at_sink", "promised", "cpu_ticks"])
        writer.writerows([s.t, s.phase, s.rss_kib, s.depth, s.at_sink, s.from_outage, s.promised, s.cpu_ticks] for s in samples)
    (out / "drain.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=600, help="seconds the upstream is away (default 600)")
    parser.add_argument("--outage-kind", choices=("partial", "stop"), default="partial")
    parser.add_argument("--target", type=int, default=100_000, help="copies to queue; sets the rate unless --rate (default 100000)")
    parser.add_argument("--rate", type=float, default=0, help="messages a second during the outage and the drain")
    parser.add_argument("--workers", type=int, default=2, help="[smtp] workers (default 2)")
    parser.add_argument("--recipients", type=int, default=10, help="recipients a message (default 10)")
    parser.add_argument("--concurrency", type=int, default=10, help="clients of the live phase (default 10)")
    parser.add_argument("--paced-clients", type=int, default=20, help="clients that share the paced load (default 20)")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--live", type=float, default=60, help="seconds of the live phase (default 60)")
    parser.add_argument("--load-after", type=float, default=30, help="seconds the load goes on once the upstream is back (default 30)")
    parser.add_argument("--drain-timeout", type=float, default=3600)
    parser.add_argument("--settle", type=float, default=30, help="seconds after the drain for the RSS after (default 30)")
    parser.add_argument("--profile", type=int, default=0, help="py-spy the relay for this many seconds from the upstream's return (OUT/drain-profile.svg)")
    parser.add_argument("--profile-format", choices=("flamegraph", "raw"), default="flamegraph",
                        help="py-spy's output: a flame graph (OUT/drain-profile.svg) or collapsed stacks (OUT/drain-profile.txt)")
    parser.add_argument(
        "--postgres", nargs="?", const=POSTGRES_URL, default=None, metavar="URL",
        help=f"the store in a fresh schema of this PostgreSQL database, dropped at the end (default URL {POSTGRES_URL})",
    )
    parser.add_argument("--relay", metavar="CHECKOUT", help="run that checkout's consent-relay (its .venv) under this bench: an A/B of the relay")
    parser.add_argument("--overrides", default="", help="JSON deep-merged over the relay config")
    parser.add_argument("--out", default=str(REPO / "var" / "bench" / "drain"))
    args = parser.parse_args(argv)
    with ExitStack() as schemas:  # the PostgreSQL schema, dropped once the relay has stopped
        store_url = postgres_schema(args.postgres, schemas) if args.postgres else None
        summary = asyncio.run(run(args, store_url))
    print(json.dumps(summary))
    return 0 if summary["lost"] == 0 and summary["silent_duplicates"] == 0 and summary["unpromised_at_sink"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
