"""Runs one smtp-source load against each target and measures end-to-end msg/s, CPU and peak RSS.

Targets: direct (source → sink), forwarder (bench/forwarder.py), postfix (private instance),
relay (consent-relay's default config: `[smtp] workers = "auto"`, one worker per usable core, and so
no helper process), relay1 (`workers = 1` with the helper process "auto" gives when a core is spare:
the default before issue 20) and relay2 (`workers = 2`). The sink is Postfix's smtp-sink.

Variants of `relay`, each compared with `relay` in the same run (column "vs relay"); the feature
variants run the default config plus their feature:
relay-inline and relay2-inline (`[smtp] helper_process = false` with 1 and 2 workers: policy and
signing on the event loop of each worker),
relay-nocontent (every content.* rule off), relay-dkim (RSA-2048 DKIM signature on every copy),
relay-1m (1,000,000 consent records in the store; implies a marketing stream with consent),
relay-webhooks (a webhook for every event type, `delivered` included: an event written with each
copy's decision and POSTed to bench/webhook_receiver.py on 127.0.0.1, answering 204),
relay-webhooks-default (the same webhook with the default types: every one but `delivered`; after the
last row the run waits for the receiver and reports the events received of those the relay wrote),
forwarder-uvloop (the baseline forwarder on uvloop, the event loop consent-relay runs on), and the
scale-out pair (docs/SPEC.md §14), one worker each: relay-pg (one instance on PostgreSQL instead of the SQLite file) and
relay-pg2 (two relay processes on their own ports sharing one PostgreSQL schema, as two hosts behind
a load balancer would; the load is split over two smtp-source processes, one per instance), compared
with relay-pg in the same run (column "vs relay-pg"). Each PostgreSQL target gets a fresh schema,
dropped when the run ends.

A target may be listed again (`--targets relay,relay-webhooks,relay,relay-webhooks`): each listing is
its own process with its own directory and store, labelled `relay (2)`…, and `relay-webhooks (2)`
is compared with `relay (2)`: alternating pairs on a noisy machine.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from bench.postfix_relay import PostfixRelay
from bench.relay_config import ACCOUNT, recipients, write_consent_csv, write_relay_config
from policies.registry import ALL_RULES
from relay.event_types import DEFAULT_WEBHOOK_EVENTS, EVENT_TYPES

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MESSAGE = BENCH_DIR / "message.eml"
OUT_DIR = BENCH_DIR / "out"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SENDER = "news@shop.example"
RECIPIENT = "rcpt@example.net"
DEFAULT_TARGETS = ("direct", "forwarder", "postfix", "relay", "relay1", "relay2")
VARIANTS = (
    "relay-inline", "relay2-inline", "relay-nocontent", "relay-dkim", "relay-1m", "forwarder-uvloop", "relay-pg", "relay-pg2",
    "relay-webhooks", "relay-webhooks-default",
    "relay-noverp",  # [bounces] verp = false: with --consent, VERP on (relay) / off (this) in the same run
)
# Targets with a fixed number of workers; every other relay target runs the default ("auto").
FIXED_WORKERS = {"relay1": 1, "relay2": 2, "relay-inline": 1, "relay2-inline": 2, "relay-pg": 1, "relay-pg2": 1}
# relay-webhooks: a webhook asking for every event type, `delivered` included (one POST per copy).
WEBHOOK_SECRET = "whsec_YmVuY2htYXJrLXdlYmhvb2stc2VjcmV0LTAx"
ALL_TARGETS = DEFAULT_TARGETS + VARIANTS
# relay-nocontent turns off every content rule the registry has.
CONTENT_RULES = tuple(rule.id for rule in ALL_RULES if rule.id.startswith("content."))
MILLION = 1_000_000
# relay-pg / relay-pg2: the server to make their schemas in (trust auth on this project's machines).
POSTGRES_URL = os.environ.get("RELAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
STALL_TIMEOUT = 30.0  # no new delivery at the sink for this long after the source finished
WEBHOOK_CATCH_UP = 60.0  # after the last row: give up when the receiver gets no new event for this long
POLL = 0.005


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_banner(port: int, timeout: float, alive: Any = None) -> None:
    """Returns once a 220 greeting arrives on 127.0.0.1:port; raises after `timeout`."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("process exited before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(2)
                banner = s.recv(512)
                s.sendall(b"QUIT\r\n")
                if banner.startswith(b"220"):
                    return
                last = banner.decode("latin-1").strip()
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"port {port} gave no 220 within {timeout}s ({last})")


# --- process accounting -------------------------------------------------------------------


def _proc_table() -> dict[int, int]:
    """pid → ppid for every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        table[int(entry.name)] = int(fields[1])
    return table


def process_tree(roots: Sequence[int]) -> list[int]:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime+stime+cutime+cstime summed: live processes plus every descendant they reaped."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15])
    return total


def hwm_kb(pids: Sequence[int]) -> int:
    return sum(hwm_each_kb(pids).values())


def hwm_each_kb(pids: Sequence[int]) -> dict[int, int]:
    """pid → VmHWM (peak RSS, kB) of each live process."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        out[pid] = int(line.split()[1])
                        break
        except OSError:
            continue
    return out


def reset_hwm(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        except OSError:
            pass


# --- the sink -----------------------------------------------------------------------------

_COUNTER = re.compile(rb"mesg=(\d+)")


class Sink:
    """smtp-sink with `-c` (transactions completed) and `-D` (a dump to count recipients)."""

    def __init__(self, workdir: Path, stack: ExitStack) -> None:
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dump = self.dir / "dump"
        self.counter = self.dir / "counter"
        self.stderr = self.dir / "stderr"
        user: list[str] = []
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root; the dump directory must be writable by postfix.
            import pwd

            pw = pwd.getpwnam("postfix")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            user = ["-u", "postfix"]
        self.proc = start_process(
            [SMTP_SINK, *user, "-c", "-D", str(self.dump), f"127.0.0.1:{self.port}", "1024"],
            stack,
            stdout=self.counter,
            stderr=self.stderr,
        )
        wait_banner(self.port, START_TIMEOUT, alive=lambda: self.proc.poll() is None)
        self._offset = 0
        self._tail = b""
        self.transactions = 0
        self.recipients = 0
        self.reset()

    def _mesg(self) -> int:
        with open(self.counter, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 256))
            found = _COUNTER.findall(f.read())
        return int(found[-1]) if found else 0

    def reset(self) -> None:
        """Start counting from zero; call only when no transaction is in flight."""
        self.refresh()
        if self.dump.exists():
            # smtp-sink opens the dump per transaction in append mode: truncating is safe.
            os.truncate(self.dump, 0)
        self._offset, self._tail = 0, b""
        self.transactions = self.recipients = 0
        self._mesg_base = self._mesg()

    def refresh(self) -> None:
        """Reads what the sink appended to its dump since the last call."""
        try:
            f = open(self.dump, "rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(self._offset)
            while True:
                chunk = f.read(16 << 20)
                if not chunk:
                    break
                self._offset += len(chunk)
                data = self._tail + chunk
                # Count markers only once: a marker split across reads is completed by the next.
                self.transactions += data.count(b"X-Client-Addr: ") - self._tail.count(b"X-Client-Addr: ")
                self.recipients += data.count(b"X-Rcpt-Args: ") - self._tail.count(b"X-Rcpt-Args: ")
                self._tail = data[-16:]

    def completed(self) -> int:
        """Transactions whose final '.' the sink has answered (the dump may run slightly ahead)."""
        return self._mesg() - self._mesg_base


# --- child processes ----------------------------------------------------------------------


def start_process(
    argv: Sequence[str], stack: ExitStack, *, stdout: Path | None = None, stderr: Path | None = None, **kw: Any
) -> subprocess.Popen[bytes]:
    """Starts a child in its own session and registers its cleanup (TERM, then KILL) on `stack`."""
    out: IO[bytes] | int = open(stdout, "wb") if stdout else subprocess.DEVNULL
    err: IO[bytes] | int = open(stderr, "wb") if stderr else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True, **kw)
    finally:
        for f in (out, err):
            if not isinstance(f, int):
                f.close()
    stack.callback(stop_process, proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """TERM the child's process group (its own session, so only what it started), then KILL."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# --- targets ------------------------------------------------------------------------------


class Target(Protocol):
    name: str
    port: int

    def roots(self) -> list[int]: ...


@dataclass
class Direct:
    sink: Sink
    name: str = "direct"

    @property
    def port(self) -> int:
        return self.sink.port

    def roots(self) -> list[int]:
        return []


@dataclass
class Forwarder:
    sink: Sink
    stack: ExitStack
    workdir: Path
    name: str = "forwarder"
    uvloop: bool = False
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        log = self.workdir / f"{self.name}.log"
        self.proc = start_process(
            [
                sys.executable,
                "-m",
                "bench.forwarder",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--upstream",
                f"127.0.0.1:{self.sink.port}",
                *(["--uvloop"] if self.uvloop else []),
            ],
            self.stack,
            stdout=log,
            stderr=log.with_suffix(".err"),
            cwd=REPO,
        )
        proc = self.proc
        wait_banner(self.port, START_TIMEOUT, alive=lambda: proc.poll() is None)

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc else []


@dataclass
class Postfix:
    sink: Sink
    stack: ExitStack
    workdir: Path
    name: str = "postfix"
    port: int = 0
    relay: PostfixRelay | None = None

    def start(self) -> None:
        self.port = free_port()
        self.relay = PostfixRelay(self.workdir / "postfix", self.port, self.sink.port)
        self.stack.callback(self.relay.stop)
        self.relay.start(timeout=START_TIMEOUT)
        self.relay.wait_master(timeout=START_TIMEOUT)
        wait_banner(self.port, START_TIMEOUT)

    def roots(self) -> list[int]:
        pid = self.relay.master_pid() if self.relay else None
        return [pid] if pid else []


@dataclass
class Relay:
    sink: Sink
    stack: ExitStack
    workdir: Path
    workers: int | None  # None: the relay's default ("auto")
    name: str
    consent: bool = False
    consent_csv: Path | None = None
    max_rcpts: int = 10
    stream_kind: str = "transactional"
    overrides: dict[str, Any] = field(default_factory=dict)
    filler_consents: int = 0  # extra consent records for other addresses (relay-1m)
    webhooks: list[dict[str, Any]] = field(default_factory=list)  # relay-webhooks
    store_url: str | None = None  # PostgreSQL; the SQLite file in the work dir otherwise
    instances: int = 1  # separate `serve` processes on their own ports, sharing the store
    port: int = 0
    ports: list[int] = field(default_factory=list)  # one per instance; the load is split over them
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    command: str = ""
    load_before: str = ""
    hook_port: int = 0  # bench/webhook_receiver.py, for the webhooks variants
    hook_types: tuple[str, ...] = ()
    first_event: int = 0  # the account's events before `serve` started (none reach a webhook)
    home: Path = Path()

    def start(self) -> None:
        home = self.home = self.workdir / self.name
        home.mkdir(parents=True, exist_ok=True)
        exe = str(REPO / ".venv" / "bin" / "consent-relay")
        configs: list[tuple[Path, Path]] = []
        for i in range(self.instances):
            where = home if self.instances == 1 else home / f"instance{i + 1}"
            where.mkdir(parents=True, exist_ok=True)
            self.ports.append(free_port())
            config = write_relay_config(
                where / "relay.toml",
                smtp_port=self.ports[-1],
                upstream_port=self.sink.port,
                admin_port=free_port(),
                public_port=free_port(),
                store_path=home / "relay.db",
                store_url=self.store_url,
                workers=self.workers,
                stream_kind="marketing" if self.consent else self.stream_kind,
                overrides=self.overrides,
                webhooks=self.webhooks,
            )
            check = subprocess.run(
                [exe, "-c", str(config), "check-config"], capture_output=True, text=True, timeout=START_TIMEOUT, cwd=where
            )
            if check.returncode != 0:
                raise RuntimeError(f"check-config: {(check.stderr or check.stdout).strip()}")
            configs.append((where, config))
        self.port = self.ports[0]
        where, config = configs[0]
        consent_csv = self.consent_csv
        if self.consent and consent_csv is None:
            addresses: Iterable[str] = recipients(RECIPIENT, self.max_rcpts)
            if self.filler_consents:
                filler = (f"reader{i}@example.org" for i in range(self.filler_consents))
                addresses = itertools.chain(addresses, filler)
            consent_csv = write_consent_csv(home / "consent.csv", addresses)
        if consent_csv is not None:  # once: the instances share the store
            imported = subprocess.run(
                [exe, "-c", str(config), "consent", "import", str(consent_csv), "--account", "shop"],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
                cwd=where,
            )
            if imported.returncode != 0:
                raise RuntimeError(f"consent import: {(imported.stderr or imported.stdout).strip()}")
        self.command = "` and `".join(f"{exe} -c {config} serve" for _, config in configs)
        self.first_event = self._last_event_seq()
        # All instances start at once, as a deployment's would (their migrations race on the store).
        for where, config in configs:
            self.procs.append(
                start_process(
                    [exe, "-c", str(config), "serve"], self.stack,
                    stdout=where / "relay.log", stderr=where / "relay.err", cwd=where,
                )
            )
        for (where, _), port, proc in zip(configs, self.ports, self.procs):
            try:
                wait_banner(port, START_TIMEOUT, alive=lambda proc=proc: proc.poll() is None)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}; stderr: {tail(where / 'relay.err')}") from exc

    def roots(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def _last_event_seq(self) -> int:
        if self.store_url is not None or not (self.home / "relay.db").exists():
            return 0
        rows = self._query("SELECT last FROM event_seq WHERE account = ?", ACCOUNT)
        return int(rows[0][0]) if rows else 0

    def events_written(self, types: Sequence[str]) -> int:
        """The account's events of these types since `serve` started (SQLite store only)."""
        marks = ",".join("?" * len(types))
        rows = self._query(
            f"SELECT count(*) FROM events WHERE account = ? AND seq > ? AND type IN ({marks})",
            ACCOUNT, self.first_event, *types,
        )
        return int(rows[0][0]) if rows else 0

    def _query(self, sql: str, *params: Any) -> list[Any]:
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(f"file:{self.home / 'relay.db'}?mode=ro", uri=True, timeout=10)) as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError:  # no such table yet
                return []


def target_ports(target: Target) -> list[int]:
    """Where the load goes: every instance of a multi-instance target, else its one port."""
    return list(getattr(target, "ports", None) or [target.port])


def postgres_schema(url: str, stack: ExitStack) -> str:
    """A fresh schema on `url` for one target, dropped when the run ends; the URL that selects it."""
    import asyncio
    import secrets

    import asyncpg

    name = f"bench_{secrets.token_hex(6)}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(execute(f'CREATE SCHEMA "{name}"'))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise RuntimeError(f"PostgreSQL at {url}: {exc}") from exc
    # Registered before the relays start, so it runs after they have been stopped (LIFO).
    stack.callback(lambda: asyncio.run(execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')))
    return f"{url}{'&' if '?' in url else '?'}search_path={name}"


# --- one measurement ----------------------------------------------------------------------


@dataclass
class Result:
    target: str
    concurrency: int
    rcpts: int
    messages: int
    seconds: float = 0.0
    transactions: int = 0
    recipients: int = 0
    cpu_s: float | None = None
    rss_mb: float | None = None  # the tree's: the largest sum over its live processes
    rss_process_mb: float | None = None  # the largest of one process (a relay worker: issue 20's ≤ 120 MB)
    client_cpu_s: float | None = None  # user+sys of the smtp-source processes (the application's side)
    sink_cpu_s: float | None = None  # user+sys of smtp-sink (the upstream's side)
    error: str = ""

    @property
    def complete(self) -> bool:
        return not self.error and self.recipients >= self.messages * self.rcpts

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.complete and self.seconds > 0 else 0.0


@dataclass
class Load:
    messages: int
    concurrency: int
    rcpts: int
    message: Path = MESSAGE
    reuse: bool = False  # smtp-source -d: each session sends its messages over one connection

    def split(self, parts: int) -> list[Load]:
        """This load shared over `parts` smtp-source processes: the messages and the sessions
        (at least one session each, so concurrency 1 over two parts runs two sessions)."""
        if parts <= 1:
            return [self]
        out = []
        for i in range(parts):
            messages = self.messages // parts + (i < self.messages % parts)
            sessions = max(1, self.concurrency // parts + (i < self.concurrency % parts))
            if messages:
                out.append(Load(messages, sessions, self.rcpts, self.message, self.reuse))
        return out

    def argv(self, port: int) -> list[str]:
        return [
            SMTP_SOURCE,
            *(["-d"] if self.reuse else []),
            "-s",
            str(self.concurrency),
            "-m",
            str(self.messages),
            "-r",
            str(self.rcpts),
            "-f",
            SENDER,
            "-t",
            RECIPIENT,
            "-F",
            str(self.message),
            f"127.0.0.1:{port}",
        ]


def measure(target: Target, sink: Sink, load: Load, stack: ExitStack, workdir: Path) -> Result:
    """Runs smtp-source once and waits until the sink holds every recipient of every message."""
    result = Result(target.name, load.concurrency, load.rcpts, load.messages)
    expected = load.messages * load.rcpts
    sink.reset()
    tree = process_tree(target.roots())
    reset_hwm(tree)
    cpu0 = cpu_ticks(tree)
    sink0 = cpu_ticks([sink.proc.pid])
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    each = hwm_each_kb(tree)
    peak_kb, peak_one_kb = sum(each.values()), max(each.values(), default=0)
    ports = target_ports(target)
    parts = list(zip(load.split(len(ports)), ports))
    stem = f"source-{target.name}-{load.concurrency}-{load.rcpts}"
    err_paths = [workdir / (f"{stem}.err" if len(parts) == 1 else f"{stem}-{i + 1}.err") for i in range(len(parts))]
    deadline = time.monotonic() + max(120.0, expected * 0.02)
    t0 = time.monotonic()
    sources = [start_process(part.argv(port), stack, stderr=err) for (part, port), err in zip(parts, err_paths)]
    last_progress, last_seen, next_sample = t0, -1, t0
    source_rcs: list[int | None] = [None] * len(sources)
    while True:
        now = time.monotonic()
        sink.refresh()
        if sink.recipients >= expected and sink.completed() >= sink.transactions:
            result.seconds = now - t0
            break
        if sink.recipients != last_seen:
            last_seen, last_progress = sink.recipients, now
        for i, source in enumerate(sources):
            if source_rcs[i] is None:
                source_rcs[i] = source.poll()
                if source_rcs[i] not in (None, 0) and not result.error:
                    result.error = f"smtp-source exit {source_rcs[i]}: {tail(err_paths[i], 2)}"
        if now >= next_sample:
            # Postfix forks and reaps workers as it goes: sample the live tree, keep the peak.
            tree = process_tree(target.roots())
            each = hwm_each_kb(tree)
            peak_kb, peak_one_kb = max(peak_kb, sum(each.values())), max(peak_one_kb, *each.values(), 0)
            next_sample = now + 0.25
        if result.error and now - last_progress > 2:
            break
        if all(rc == 0 for rc in source_rcs) and now - last_progress > STALL_TIMEOUT:
            result.error = f"stalled: sink has {sink.recipients}/{expected} recipients"
            break
        if now > deadline:
            result.error = f"timeout: sink has {sink.recipients}/{expected} recipients"
            break
        time.sleep(POLL)
    tree = process_tree(target.roots()) or tree
    each = hwm_each_kb(tree)
    peak_kb, peak_one_kb = max(peak_kb, sum(each.values())), max(peak_one_kb, *each.values(), 0)
    if target.roots():
        # Reaped children are in their parent's cutime/cstime; exited roots are gone (None).
        result.cpu_s = (cpu_ticks(tree) - cpu0) / TICKS
        result.rss_mb = peak_kb / 1024
        result.rss_process_mb = peak_one_kb / 1024
    for source, err_path in zip(sources, err_paths):
        try:
            # The sink has everything; the source may still be saying QUIT.
            source.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_process(source, timeout=5)
            result.error = result.error or "smtp-source did not exit"
        if source.returncode not in (0, None) and not result.error:
            result.error = f"smtp-source exit {source.returncode}: {tail(err_path, 2)}"
    result.transactions, result.recipients = sink.transactions, sink.recipients
    result.sink_cpu_s = (cpu_ticks([sink.proc.pid]) - sink0) / TICKS
    if all(source.returncode is not None for source in sources):
        # smtp-source processes are the only children this process reaps while a row runs.
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result.client_cpu_s = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    return result


def wait_quiet(sink: Sink, seconds: float = 0.3, timeout: float = 30.0) -> None:
    """Waits until the sink receives nothing for `seconds` (late copies of a failed run)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        sink.refresh()
        if sink.recipients != last:
            last, since = sink.recipients, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.02)


# --- the whole run ------------------------------------------------------------------------


@dataclass
class Options:
    messages: int = 5000
    concurrency: tuple[int, ...] = (1, 10, 50)
    rcpts: tuple[int, ...] = (1, 10)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    warmup: int = 50
    consent: bool = False  # marketing stream plus consent records (generated unless consent_csv)
    consent_csv: Path | None = None
    postgres_url: str = POSTGRES_URL  # relay-pg, relay-pg2: a fresh schema each in this database
    keep: bool = False
    out: Path = OUT_DIR / "throughput.md"
    command: str = ""
    load_before: str = ""
    notes: list[str] = field(default_factory=list)


def check_tools() -> None:
    missing = [p for p in (SMTP_SOURCE, SMTP_SINK) if not os.access(p, os.X_OK)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install postfix")


@contextmanager
def _terminate_on_signals() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every child is stopped by the ExitStack."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    # A shell's background job starts with SIGINT ignored; Ctrl-C must still clean up.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def run(options: Options) -> list[Result]:
    check_tools()
    results: list[Result] = []
    with _terminate_on_signals(), ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="consent-relay-bench-"))
        os.chmod(workdir, 0o755)  # Postfix daemons run as the postfix user and must reach their dirs
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        sinkdir = Path(tempfile.mkdtemp(prefix="consent-relay-bench-sink-", dir=shm))
        if options.keep:
            print(f"# keeping {workdir} (configs, logs)", file=sys.stderr, flush=True)
        else:
            stack.callback(_rmtree, workdir)
        stack.callback(_rmtree, sinkdir)
        sink = Sink(sinkdir, stack)
        targets: list[Target] = []
        dirs: dict[str, Path] = {}
        labels = target_labels(options.targets)
        for i, (name, label) in enumerate(zip(options.targets, labels)):
            # A directory per target: one listed twice gets its own store, state lock and logs.
            dirs[label] = workdir / f"{i + 1}-{name}"
            dirs[label].mkdir()
            os.chmod(dirs[label], 0o755)
            try:
                target = _make_target(name, sink, stack, dirs[label], options)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"# {label}: cannot start: {exc}", file=sys.stderr, flush=True)
                options.notes.append(f"{label}: cannot start: {exc}")
                for c in options.concurrency:
                    for r in options.rcpts:
                        results.append(Result(label, c, r, options.messages, error="not started"))
                continue
            target.name = label
            if isinstance(target, Relay):
                options.notes.append(f"{label}: `{target.command}` (work dir removed at exit unless --keep)")
            if options.warmup:
                warm = measure(target, sink, Load(options.warmup, 10, 1), stack, dirs[label])
                wait_quiet(sink)
                if warm.error:
                    print(f"# {name}: warm-up failed: {warm.error}", file=sys.stderr, flush=True)
            targets.append(target)
        # Row by row, every target in turn: the ratios compare runs made close together in time,
        # so a change in the machine's background load skews them less.
        for c in options.concurrency:
            for r in options.rcpts:
                for target in targets:
                    res = measure(target, sink, Load(options.messages, c, r), stack, dirs[target.name])
                    results.append(res)
                    print(_progress(res), file=sys.stderr, flush=True)
                    if res.error:
                        wait_quiet(sink, seconds=1.0)
        last_row = time.monotonic()
        for target in targets:
            if isinstance(target, Relay) and target.hook_port:
                note = f"{target.name}: {webhooks_caught_up(target, last_row)}"
                print(f"# {note}", file=sys.stderr, flush=True)
                options.notes.append(note)
    order = {name: i for i, name in enumerate(labels)}
    results.sort(key=lambda r: (order[r.target], options.concurrency.index(r.concurrency), options.rcpts.index(r.rcpts)))
    return results


def target_labels(names: Sequence[str]) -> list[str]:
    """The row labels: a target listed again is `relay (2)`, `relay (3)`… (still compared with `relay`)."""
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return labels


def _make_target(name: str, sink: Sink, stack: ExitStack, workdir: Path, options: Options) -> Target:
    if name == "direct":
        return Direct(sink)
    if name == "forwarder":
        fwd = Forwarder(sink, stack, workdir)
        fwd.start()
        return fwd
    if name == "postfix":
        pf = Postfix(sink, stack, workdir)
        pf.start()
        return pf
    if name == "forwarder-uvloop":
        fwd = Forwarder(sink, stack, workdir, name=name, uvloop=True)
        fwd.start()
        return fwd
    if name in ("relay", "relay1", "relay2") or name.startswith(("relay-", "relay2-")):
        overrides: dict[str, Any] = {}
        if name in ("relay-inline", "relay2-inline"):
            overrides = {"smtp": {"helper_process": False}}
        if name == "relay-nocontent":
            overrides = {"policy": {"actions": {rule: "off" for rule in CONTENT_RULES}}}
        if name == "relay-dkim":
            overrides = {"dkim": {"keys": [dkim_key(workdir)]}}
        webhooks: list[dict[str, Any]] = []
        if name in ("relay-webhooks", "relay-webhooks-default"):
            hook_port = free_port()
            start_process(
                [sys.executable, "-m", "bench.webhook_receiver", str(hook_port)], stack,
                stdout=workdir / "webhook_receiver.log", stderr=workdir / "webhook_receiver.err", cwd=REPO,
            )
            webhooks = [{"url": f"http://127.0.0.1:{hook_port}/hooks", "secret": WEBHOOK_SECRET}]
            if name == "relay-webhooks":
                webhooks[0]["events"] = list(EVENT_TYPES)
        if name == "relay-noverp":
            overrides = {"bounces": {"verp": False}}
        store_url = postgres_schema(options.postgres_url, stack) if name in ("relay-pg", "relay-pg2") else None
        if store_url is not None:
            options.notes.append(
                f"{name}: store {store_url} (the schema is dropped at exit); CPU s and RSS count the relay "
                "processes only, not the PostgreSQL server's"
            )
        if name == "relay-pg2":
            options.notes.append(
                f"{name}: two relay processes on one schema; each row's messages and sessions are split over two "
                "smtp-source processes, one per instance (concurrency 1 runs one session on each)"
            )
        relay = Relay(
            sink,
            stack,
            workdir,
            workers=FIXED_WORKERS.get(name),
            name=name,
            consent=options.consent or name == "relay-1m",
            consent_csv=options.consent_csv,
            max_rcpts=max(options.rcpts),
            overrides=overrides,
            filler_consents=MILLION if name == "relay-1m" else 0,
            store_url=store_url,
            instances=2 if name == "relay-pg2" else 1,
            webhooks=webhooks,
        )
        relay.start()
        if webhooks:
            relay.hook_port = hook_port
            relay.hook_types = tuple(webhooks[0].get("events", DEFAULT_WEBHOOK_EVENTS))
        return relay
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(ALL_TARGETS)}")


def _receiver_count(port: int) -> dict[str, int]:
    """{"posts": N, "ids": M} from bench/webhook_receiver.py; {} when it does not answer."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as response:
            return dict(json.loads(response.read()))
    except (OSError, ValueError):
        return {}


def webhooks_caught_up(relay: Relay, since: float, patience: float = WEBHOOK_CATCH_UP) -> str:
    """Waits until the receiver holds every event the relay wrote for its webhook since it started
    (or `patience` seconds pass without a new one), and says how many arrived of how many."""
    expected, got, last_change, last_ids = 0, {}, time.monotonic(), -1
    while True:
        expected = relay.events_written(relay.hook_types)
        got = _receiver_count(relay.hook_port)
        ids = got.get("ids", 0)
        if ids != last_ids:
            last_ids, last_change = ids, time.monotonic()
        if ids >= expected or time.monotonic() - last_change > patience:
            break
        time.sleep(0.1)
    lag = time.monotonic() - since
    verdict = "every event" if got.get("ids", 0) >= expected else "MISSING EVENTS"
    return (
        f"webhook receiver: {got.get('ids', 0)} of {expected} events received (distinct webhook-ids; "
        f"{got.get('posts', 0)} POSTs), {verdict}, {lag:.1f} s after the last row"
    )


def dkim_key(workdir: Path) -> dict[str, str]:
    """An RSA-2048 key for the From domain of bench/message.eml, as a [[dkim.keys]] entry."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = workdir / "dkim-shop.example.pem"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return {"domain": "shop.example", "selector": "bench", "private_key": str(path)}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _progress(r: Result) -> str:
    status = f"{r.rate:8.0f} msg/s" if r.complete else f"FAILED ({r.error})"
    return f"# {r.target:9} c={r.concurrency:<3} r={r.rcpts:<3} {status}  txn={r.transactions} rcpt={r.recipients}"


# --- the report ---------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    by_key = {(r.target, r.concurrency, r.rcpts): r for r in results}

    def ratio(r: Result, base: str) -> str:
        # A target listed again, `relay-webhooks (2)`, is compared with the base of the same round, `relay (2)`.
        suffix = r.target[r.target.rfind(" (") :] if r.target.endswith(")") and " (" in r.target else ""
        b = by_key.get((base + suffix, r.concurrency, r.rcpts)) or by_key.get((base, r.concurrency, r.rcpts))
        if b is None or not b.complete or not r.complete or b.target == r.target:
            return "—"
        return f"{r.rate / b.rate:.2f}×"

    # One instance vs two on PostgreSQL: a column of its own when relay-pg ran.
    pg = any(r.target == "relay-pg" for r in results)
    rows = [
        "| target | concurrency | rcpts | msg/s | vs forwarder | vs postfix | vs relay |"
        + (" vs relay-pg |" if pg else "")
        + " CPU s | peak RSS MB | max RSS/process MB | sink txn / rcpts |",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if pg else "") + "---:|---:|---:|---:|",
    ]
    for r in results:
        rate = f"{r.rate:.0f}" if r.complete else f"failed: {r.error}".replace("|", "/")
        cpu = f"{r.cpu_s:.1f}" if r.cpu_s is not None else "—"
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else "—"
        rss_one = f"{r.rss_process_mb:.0f}" if r.rss_process_mb is not None else "—"
        vs_pg = (f" {ratio(r, 'relay-pg') if r.target.startswith('relay') else '—'} |") if pg else ""
        rows.append(
            f"| {r.target} | {r.concurrency} | {r.rcpts} | {rate} | {ratio(r, 'forwarder')} | "
            f"{ratio(r, 'postfix')} | {ratio(r, 'relay') if r.target.startswith('relay') else '—'} |{vs_pg} "
            f"{cpu} | {rss} | {rss_one} | {r.transactions} / {r.recipients} |"
        )
    return "\n".join(rows)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python {platform.python_version()}"


def load_average() -> str:
    """Other work on the machine skews every row: the report states how busy it was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: Sequence[Result], options: Options) -> str:
    size = len(MESSAGE.read_bytes().replace(b"\n", b"\r\n"))
    lines = [
        "# Throughput",
        "",
        f"Command: `{options.command}`",
        "",
        f"{options.messages} messages per row, {size} bytes each on the wire (bench/message.eml), "
        "a new connection per message (smtp-source without -d), smtp-sink as the final sink. "
        "msg/s = messages submitted / seconds from the start of smtp-source until the sink "
        "holds every recipient of every message. CPU s = user+sys of the middle process tree "
        "during the row; peak RSS = the largest sum of VmHWM over its live processes "
        "(reset before each row; shared pages count again in every process, which inflates Postfix's many-process figure); "
        "max RSS/process = the largest VmHWM of any one of its processes (for the relay: a worker, its helper or the supervisor). "
        "Rows run interleaved (each load against every target in turn), so ratios compare "
        "runs made close together in time.",
        f"Machine: {machine()}; source, middle process and sink share these CPUs. "
        f"Load average (1/5/15 min) before: {options.load_before}, after: {load_average()}.",
        "",
        table(results),
        "",
    ]
    lines += [f"- {n}" for n in options.notes]
    return "\n".join(lines).rstrip() + "\n"


def main(options: Options) -> int:
    options.load_before = load_average()
    results = run(options)
    text = report(results, options)
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text, encoding="utf-8")
    return 0 if all(r.complete for r in results) else 1


def command_line(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m bench", *(shlex.quote(a) for a in argv)])
