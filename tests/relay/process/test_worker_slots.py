"""relay/process/supervisor.py in process: what the parent makes of its worker slots' outcomes
(the real processes and faults are in tests/e2e/test_supervisor.py)."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import structlog

from conftest import make_config
from relay.process.listeners import bind_listeners
from relay.process.state_lock import StateLock
from relay.process.supervisor import Supervisor


class _NoListeners:
    def close(self) -> None:
        pass


class _OneSlotBroken(Supervisor):
    async def _keep(self, index: int) -> int:
        await self.stop.wait()
        if index == 1:
            raise RuntimeError("a bug while keeping worker 1")
        return 0


async def test_a_worker_slot_that_fails_is_logged_and_the_exit_is_not_clean(tmp_path: Path) -> None:
    """Its outcome was dropped from the exit codes, and the relay said 0 after a stop it never saw."""
    config = make_config(tmp_path, smtp={"workers": 2})
    stop = asyncio.Event()
    supervisor = _OneSlotBroken(config, _NoListeners(), StateLock(), stop)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as captured:
        running = asyncio.create_task(supervisor.run())
        await asyncio.sleep(0)
        stop.set()
        code = await asyncio.wait_for(running, 10)
    assert code == 1
    failed = [e for e in captured if e["event"] == "worker_slot_failed"]
    assert [(e["worker"], "a bug while keeping worker 1" in e["error"]) for e in failed] == [(1, True)]


async def test_workers_that_all_stop_cleanly_exit_0(tmp_path: Path) -> None:
    class _Clean(Supervisor):
        async def _keep(self, index: int) -> int:
            await self.stop.wait()
            return 0

    assert await _stopped(_Clean, tmp_path) == 0


async def test_a_worker_ended_by_the_terminals_ctrl_c_is_a_clean_stop(tmp_path: Path) -> None:
    """A worker still in its fork when Ctrl-C reached the process group dies of that SIGINT (it
    takes its own session only after the fork): the relay stopped as asked, exit 0."""

    class _Interrupted(Supervisor):
        async def _keep(self, index: int) -> int:
            await self.stop.wait()
            return -signal.SIGINT if index == 1 else -signal.SIGTERM

    assert await _stopped(_Interrupted, tmp_path) == 0


async def _stopped(kind: type[Supervisor], tmp_path: Path) -> int:
    """The exit code of a two-worker `kind` (its slots faked) stopped right after it started."""
    config = make_config(tmp_path, smtp={"workers": 2})
    stop = asyncio.Event()
    running = asyncio.create_task(kind(config, _NoListeners(), StateLock(), stop).run())  # type: ignore[arg-type]
    await asyncio.sleep(0)
    stop.set()
    return await asyncio.wait_for(running, 10)


class _StopDuringSpawn(Supervisor):
    """A Ctrl-C that lands while worker 1 is being started (after run() signalled the workers it had)."""

    async def _spawn(self, index: int) -> tuple[asyncio.subprocess.Process, socket.socket]:
        if index == 1:
            self.stop.set()
        return await super()._spawn(index)


async def test_a_stop_while_a_worker_is_being_started_stops_that_worker_too(tmp_path: Path) -> None:
    """That worker used to get no SIGTERM: it served on until the parent's patience ran out and
    was killed (exit 1 after shutdown_grace + upstream timeout + 10 s)."""
    config = make_config(tmp_path, smtp={"workers": 2, "listen": "127.0.0.1:0", "shutdown_grace": 1})
    listeners = bind_listeners(config, http=False)
    stop = asyncio.Event()
    supervisor = _StopDuringSpawn(config, listeners, StateLock(), stop)
    with structlog.testing.capture_logs() as captured:
        code = await asyncio.wait_for(supervisor.run(), 60)
    assert code == 0
    assert [e for e in captured if e["event"] == "worker_killed"] == []
    assert all(p.returncode is not None for p in supervisor.procs.values())


async def test_a_stop_before_any_worker_started_starts_none(tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp={"workers": 2, "listen": "127.0.0.1:0"})
    stop = asyncio.Event()
    stop.set()
    supervisor = Supervisor(config, bind_listeners(config, http=False), StateLock(), stop)
    assert await asyncio.wait_for(supervisor.run(), 10) == 0
    assert supervisor.procs == {}
