"""relay/process/supervisor.py in process: what the parent makes of its worker slots' outcomes
(the real processes and faults are in tests/e2e/test_supervisor.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from conftest import make_config
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

    config = make_config(tmp_path, smtp={"workers": 2})
    stop = asyncio.Event()
    running = asyncio.create_task(_Clean(config, _NoListeners(), StateLock(), stop).run())  # type: ignore[arg-type]
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(running, 10) == 0
