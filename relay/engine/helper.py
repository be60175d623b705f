"""The helper process: CPU-bound pure work — policy evaluation and DKIM's private-key step — taken
off the event loop onto a second core.

The relay's loop runs one Python thread; a thread pool would fight it for the GIL (measured slower
for signing). A child process has its own interpreter: the loop sends it a job as one frame over a
pipe and goes on serving other sessions until the answer frame comes back. Frames are a 4-byte
length and a pickle; only this process's own child reads them.

Nothing here may lose or hold up mail. A dead helper fails its jobs with HelperUnavailable and
the caller does the work inline; a wedged one is killed and its jobs fail with HelperTimeout
(verdicts then get a 451, signatures are made inline). The helper is started again on a later
call, at most once per RESTART_SECONDS.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import struct
import sys
import time
from typing import Any, Callable

from relay.log import get_logger

FRAME = struct.Struct(">I")
RESTART_SECONDS = 5.0


class HelperUnavailable(RuntimeError):
    """The helper process is not running, died, or did not answer in time: do the work inline."""


class HelperTimeout(HelperUnavailable):
    """No answer in time. The helper is killed (a wedged helper holds up every job behind it); a
    job that may be what wedged it is better refused for now than redone on the event loop."""


class HelperJobFailed(RuntimeError):
    """The job raised inside the helper; inline it would have raised the same."""


class Helper:
    """The parent's end: start the child, send jobs, match answers to waiting callers."""

    def __init__(self, setup: dict[str, Any], *, timeout: float = 30.0, on_restart: Callable[[], None] = lambda: None) -> None:
        self._setup = pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._started_at = -RESTART_SECONDS
        self._closed = False
        self.restarts = 0
        self.on_restart = on_restart
        self.log = get_logger()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._reader is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Spawn the child. Jobs sent before it has finished importing wait in the pipe."""
        self._started_at = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.engine.helper_child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C goes to the relay alone, which closes our pipe.
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(FRAME.pack(len(self._setup)) + self._setup)
        self._proc = proc
        self._pending = {}  # this child's jobs: a late exit of the one before must not fail them
        self._reader = asyncio.create_task(self._read(proc, self._pending), name="helper-reader")
        self.log.info("helper_started", pid=proc.pid)

    async def call(self, kind: str, *args: Any) -> Any:
        """Run `kind(*args)` in the child and return its result."""
        if not self.alive:
            await self._restart()
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        job_id = next(self._ids)
        body = pickle.dumps((job_id, kind, args), protocol=pickle.HIGHEST_PROTOCOL)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self._pending
        pending[job_id] = future
        try:
            proc.stdin.write(FRAME.pack(len(body)) + body)
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            pending.pop(job_id, None)
            raise HelperUnavailable(f"helper pipe closed: {exc}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            self.log.error("helper_timeout", job=kind, seconds=self.timeout, pid=proc.pid)
            self._kill()  # wedged: every job behind this one would wait as long
            raise HelperTimeout(f"helper gave no answer within {self.timeout:g} s") from None
        finally:
            pending.pop(job_id, None)

    async def _restart(self) -> None:
        if self._closed:
            raise HelperUnavailable("helper closed")
        if time.monotonic() - self._started_at < RESTART_SECONDS:
            raise HelperUnavailable("helper down; restart not due yet")
        self.restarts += 1
        self.on_restart()
        try:
            await self.start()
        except OSError as exc:
            raise HelperUnavailable(f"helper could not start: {exc}") from exc

    async def _read(self, proc: asyncio.subprocess.Process, pending: dict[int, asyncio.Future[Any]]) -> None:
        stdout = proc.stdout
        assert stdout is not None
        try:
            while True:
                (size,) = FRAME.unpack(await stdout.readexactly(FRAME.size))
                job_id, ok, result = pickle.loads(await stdout.readexactly(size))
                future = pending.get(job_id)
                if future is None or future.done():
                    continue  # its caller timed out
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(HelperJobFailed(result))
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError, EOFError):
            pass
        finally:
            if self._proc is proc:
                self._reader = None
            code = await proc.wait()
            if not self._closed:
                self.log.error("helper_exited", pid=proc.pid, returncode=code, pending=len(pending))
            for future in list(pending.values()):
                if not future.done():
                    future.set_exception(HelperUnavailable(f"helper exited with {code}"))

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def close(self) -> None:
        self._closed = True
        proc, reader = self._proc, self._reader
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()  # EOF: the child finishes its jobs and exits
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            self._kill()
            await proc.wait()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)


class Offload:
    """Whether CPU work goes to the helper now: only while other transactions are in DATA. A lone
    transaction would wait idle for the round trip, so its work is done on the loop. Shared by the
    pipeline (verdicts) and the copy signer (signatures)."""

    def __init__(self, helper: Helper | None, offload_from: int = 2) -> None:
        self.helper = helper  # None when [smtp] helper_process is off
        self.offload_from = offload_from  # transactions in DATA at which the helper takes the work
        self.busy = 0  # transactions between end of DATA and their reply (the pipeline counts them)

    def helper_now(self) -> Helper | None:
        return self.helper if self.busy >= self.offload_from else None
