"""The outbox under faults, with real `consent-relay serve` processes and a real upstream sink that
counts every copy: a slow but working upstream (each RCPT and DATA answered late, so that one copy
takes longer than a lease) drained by two workers on SQLite and by two instances on PostgreSQL
delivers every copy once; a connection lost after the message was sent is counted as uncertain."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import AsyncIterator

import pytest

from relay.store import open_store_for
from relay.config import StoreConfig
from relay.store.records import OutboxItem
from tests.conftest import RecordingUpstream, ServeProcess, free_port, message, pg_schema, until
from tests.relay.test_multi_instance import counter, instance_config

COPIES = 12
RCPTS_PER_COPY = 2
LEASE = 0.5  # seconds; one copy takes 3 × DELAY = 0.9 s, the sends of RCPTS_PER_COPY RCPTs alone 0.6 s
DELAY = 0.3


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_schema() as url:
        yield url


def copies(n: int) -> list[OutboxItem]:
    return [
        OutboxItem(
            f"R{i:04d}", "shop", "orders", "orders@shop.example",
            tuple(f"c{i}-{k}@example.nl" for k in range(RCPTS_PER_COPY)), message(to=f"c{i}-0@example.nl"),
        )
        for i in range(n)
    ]


async def enqueue(url: str, items: list[OutboxItem]) -> None:
    store = open_store_for(StoreConfig(url=url))
    await store.open()
    try:
        await store.outbox.enqueue(items, now=0.0)  # due long ago
    finally:
        await store.close()


async def depth(url: str) -> int:
    store = open_store_for(StoreConfig(url=url))
    await store.open()
    try:
        return await store.outbox.depth()
    finally:
        await store.close()


@pytest.mark.parametrize("layout", ["sqlite-two-workers", "postgresql-two-instances"])
async def test_slow_upstream_drained_by_two_processes_delivers_each_copy_once(
    layout: str, tmp_path: Path, upstream: RecordingUpstream, pg_url: str
) -> None:
    upstream.handler.delay = DELAY
    outbox = {"retry_initial_seconds": 0.2, "retry_max_seconds": 0.5, "poll_seconds": 0.05, "lease_seconds": LEASE}
    if layout == "sqlite-two-workers":
        url = f"sqlite:///{tmp_path}/var/relay.db"
        (tmp_path / "var").mkdir()
        configs = [
            instance_config(
                tmp_path, upstream.port, "relay.toml", url, outbox=outbox,
                smtp={"listen": f"127.0.0.1:{free_port()}", "workers": 2},
            )
        ]
        expected_started = 2
    else:
        url = pg_url
        configs = [
            instance_config(tmp_path, upstream.port, f"{n}.toml", url, outbox=outbox, store={"shared": True})
            for n in ("one", "two")
        ]
        expected_started = 1
    items = copies(COPIES)
    await enqueue(url, items)
    procs = [ServeProcess(c) for c in configs]
    try:
        started = await asyncio.gather(*(p.start(started=expected_started) for p in procs))
        expected = {r for item in items for r in item.rcpt_tos}
        await until(lambda: expected <= set(upstream.recipients()), timeout=60, what="every copy at the sink")

        async def drained() -> bool:
            return await depth(url) == 0

        await until(drained, timeout=20, what="an empty outbox")
        admins = [max(e["admin"] for e in s) for s in started]  # with workers, worker 0 serves HTTP
        lost = [await counter_at(port, "consent_relay_outbox_lease_lost_total") for port in admins]
        uncertain = [await counter_at(port, "consent_relay_outbox_uncertain_total") for port in admins]
        codes = [await p.stop() for p in procs]
    finally:
        for p in procs:
            await p.ensure_stopped()
    counts = Counter(upstream.recipients())
    assert {r: counts[r] for r in expected} == {r: 1 for r in expected}  # 0 lost, 0 duplicated
    assert set(counts) == expected
    assert codes == [0] * len(procs)
    # The heartbeat kept every lease: no copy was left for the other process to find half-sent.
    assert sum(lost) == 0 and sum(uncertain) == 0, (lost, uncertain)
    assert not [e for p in procs for e in p.events("outbox_maybe_delivered")]


async def counter_at(admin_port: int, name: str) -> float:
    from tests.relay.test_multi_instance import Instance

    return await counter(Instance(None, 0, admin_port, 0), name)  # type: ignore[arg-type]
