"""`[smtp] workers = N` (default "auto": one per usable core): a parent that holds the listening
sockets and the state lock, and keeps N worker processes serving on them, as Postfix's master or
gunicorn's arbiter do.

- A worker that dies is replaced (same index: worker 0 also serves HTTP), with a growing pause
  when workers die soon after starting, so a crash loop does not spin.
- The parent exits only on SIGTERM/SIGINT (after the workers drained) or when the relay cannot
  start: a listener or the lock it cannot take (before any worker exists), or a worker that fails
  before every worker has started once.
- Each worker has a socket pair to its parent: it says when it has started, and reads end of file
  when the parent is gone, killed or not, and then drains and exits: no orphan keeps serving.
- Workers run in their own session: a Ctrl-C on the terminal reaches the parent only, which passes
  a SIGTERM on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from relay.config import Config
from relay.log import get_logger
from relay.process.balance import LoadBoard
from relay.process.listeners import KINDS, Listeners
from relay.process.state_lock import StateLock

# A worker that lived less than this died "soon": the next start after two such deaths in a row waits.
STEADY_SECONDS = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


def backoff(fast_deaths: int) -> float:
    """The pause before the next start after `fast_deaths` deaths in a row, each soon after its
    start: the first is replaced at once, then BACKOFF_FIRST, doubling up to BACKOFF_MAX."""
    return 0.0 if fast_deaths <= 1 else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (fast_deaths - 2))


@dataclass
class WorkerLink:
    """A worker's end: its inherited listeners and the socket to its parent."""

    listeners: Listeners
    parent: socket.socket | None
    board: LoadBoard | None = None  # the workers' session counts (relay.process.balance)

    @classmethod
    def from_spec(cls, spec: str) -> WorkerLink:
        data = json.loads(spec)
        listeners = Listeners.inherited(json.dumps({k: v for k, v in data.items() if k in KINDS}))
        parent = socket.socket(fileno=data["parent"]) if "parent" in data else None
        if parent is not None:
            parent.setblocking(False)
        # data["lock"] is only held open (inherited): the state lock lasts while any worker lives.
        board = LoadBoard.inherited(data["board"]) if "board" in data else None
        return cls(listeners, parent, board)

    def watch_parent(self, on_gone: Callable[[], None]) -> None:
        if self.parent is None:
            return
        parent = self.parent
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = parent.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(parent.fileno())
                get_logger().warning("parent_gone", pid=os.getpid(), hint="draining and exiting")
                on_gone()

        loop.add_reader(parent.fileno(), readable)

    def started(self) -> None:
        if self.parent is not None:
            try:
                self.parent.send(b"R")
            except OSError:
                pass  # the parent is gone: watch_parent stops us


def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to a worker that may have ended already (one in its fork dies of a terminal's Ctrl-C)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)


class Supervisor:
    def __init__(self, config: Config, listeners: Listeners, lock: StateLock, stop: asyncio.Event) -> None:
        self.config = config
        self.listeners = listeners
        self.lock = lock
        self.stop = stop
        self.log = get_logger()
        self.metrics_dir = tempfile.mkdtemp(prefix="consent-relay-metrics-")
        self.board = LoadBoard.create(config.smtp.worker_count)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.all_started = asyncio.Event()
        self._ready: set[int] = set()
        self.failed: int | None = None

    async def run(self) -> int:
        n = self.config.smtp.worker_count
        slots = [asyncio.create_task(self._keep(i), name=f"worker-{i}") for i in range(n)]
        try:
            await self.stop.wait()
            if self.failed is None:
                self.log.info("relay_draining", grace=self.config.smtp.shutdown_grace, workers=len(self.procs))
            for proc in list(self.procs.values()):
                _terminate(proc)
            patience = self.config.smtp.shutdown_grace + self.config.upstream.timeout + 10
            done, pending = await asyncio.wait(slots, timeout=patience)
            for proc in list(self.procs.values()):
                if proc.returncode is None:
                    self.log.error("worker_killed", pid=proc.pid, after=patience)
                    proc.kill()
            codes = []
            for index, outcome in enumerate(await asyncio.gather(*slots, return_exceptions=True)):
                if isinstance(outcome, BaseException):
                    # A bug of ours in keeping that worker: say so, and do not call the stop clean.
                    self.log.error("worker_slot_failed", worker=index, error=repr(outcome))
                    codes.append(1)
                else:
                    codes.append(outcome)
        finally:
            for task in slots:
                task.cancel()
            self.listeners.close()
            self.board.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self.failed is not None:
            return self.failed
        # A worker still loading its modules when our SIGTERM came ends by it: a clean stop too. So
        # does one still in its fork when a terminal's Ctrl-C reached our process group: it takes its
        # own session only after the fork, and the SIGINT got it first.
        return 0 if all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes) else 1

    async def _keep(self, index: int) -> int:
        """Run worker `index` until the stop, replacing it when it dies; its last exit code."""
        fast_deaths = 0
        while True:
            if self.stop.is_set():  # stopped before this worker was started: none to stop
                return 0
            started = time.monotonic()
            proc, link = await self._spawn(index)
            try:
                ready = await self._await_ready(link, proc)
                code = await proc.wait()
            finally:
                link.close()  # only now: the worker reads our end's closing as the parent gone
            if self.stop.is_set():
                return code
            if not ready and not self.all_started.is_set():
                # The relay never came up: a start-up failure (the worker said why on stderr).
                self.log.error("worker_failed_to_start", worker=index, pid=proc.pid, returncode=code)
                self.failed = code if code and code > 0 else 1
                self.stop.set()
                return code
            self._forget(proc.pid)
            self.board.set(index, 0)  # its sessions died with it: the others need not wait for it
            fast_deaths = fast_deaths + 1 if time.monotonic() - started < STEADY_SECONDS else 0
            delay = backoff(fast_deaths)
            self.log.error("worker_exited", worker=index, pid=proc.pid, returncode=code, restart_in=delay)
            if delay:
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                    return code
                except TimeoutError:
                    pass

    async def _spawn(self, index: int) -> tuple[asyncio.subprocess.Process, socket.socket]:
        ours, theirs = socket.socketpair()
        kinds = KINDS if index == 0 else ("smtp", "tls")
        spec: dict[str, object] = dict(self.listeners.fds(kinds))
        spec["parent"] = theirs.fileno()
        spec["board"] = self.board.fd
        fds = [fd for numbers in self.listeners.fds(kinds).values() for fd in numbers] + [theirs.fileno(), self.board.fd]
        if self.lock.fd is not None:
            spec["lock"] = self.lock.fd
            fds.append(self.lock.fd)
        argv = [
            sys.executable, "-m", "relay.cli.main", "serve", "-c", str(self.config.path),
            "--worker-index", str(index), "--inherit", json.dumps(spec),
        ]
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self.metrics_dir)
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=env, pass_fds=fds, start_new_session=True)
        finally:
            theirs.close()
        self.procs[index] = proc
        self.log.info("worker_started", worker=index, pid=proc.pid)
        if self.stop.is_set():
            # The stop came while this worker was being started, after run() signalled the others.
            _terminate(proc)
        ours.setblocking(False)
        return proc, ours

    async def _await_ready(self, link: socket.socket, proc: asyncio.subprocess.Process) -> bool:
        loop = asyncio.get_running_loop()
        try:
            said = await loop.sock_recv(link, 1)
        except OSError:
            said = b""
        if said != b"R":
            return False
        index = next(i for i, p in self.procs.items() if p is proc)
        self._ready.add(index)
        if len(self._ready) == self.config.smtp.worker_count and not self.all_started.is_set():
            self.all_started.set()
            self.log.info("workers_started", pids=[p.pid for p in self.procs.values()])
        return True

    def _forget(self, pid: int) -> None:
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)
        except Exception:  # only the live gauges of a dead worker linger
            pass
