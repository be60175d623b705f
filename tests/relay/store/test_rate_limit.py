"""The per-account message rate (account.rate_limited, docs/SPEC.md §4) is one token bucket in the store, so
it holds across processes: real `consent-relay serve` processes sharing one store (the workers of
one serve on a SQLite file, two instances on a shared PostgreSQL),
driven over SMTP, give exactly `rate_limit_per_minute` messages a minute between them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import Outcome, RecordingUpstream, ServeProcess, asend, config_dict, free_port, pg_schema, write_config

from relay.store.sqlite import SqliteStore

LIMIT = 3  # one token back every 20 s of wall time: far longer than the sends below take
NOW = 1_773_576_000.0


def limited_config(tmp_path: Path, upstream: RecordingUpstream, name: str, store: dict[str, Any] | None = None, **smtp: Any) -> Path:
    # Every config in tmp_path names the same file: sqlite:///var/relay.db is relative to the config.
    data = config_dict(tmp_path, upstream.port, account={"rate_limit_per_minute": LIMIT})
    data["smtp"].update(smtp)
    if store is not None:
        data["store"] = store
    return write_config(tmp_path, data, name)


def rate_limited(out: Outcome) -> bool:
    return out.final[0] == 451 and out.final[1].startswith("4.7.1 [account.rate_limited]")


async def test_two_serve_processes_on_one_shared_postgresql_share_the_limit(tmp_path: Path, upstream: RecordingUpstream) -> None:
    # policy: platform (POLICY.md account.rate_limited: one rate per account, however many processes)
    # Two `serve` on one SQLite file now refuse to start (issue 21): two hosts share a PostgreSQL
    # store instead, and the workers of one serve share the SQLite file (the test below).
    async with pg_schema() as url:
        await _two_instances_share_the_limit(tmp_path, upstream, {"url": url, "shared": True})


async def _two_instances_share_the_limit(tmp_path: Path, upstream: RecordingUpstream, store: dict[str, Any]) -> None:
    one = ServeProcess(limited_config(tmp_path, upstream, "one.toml", store))
    two = ServeProcess(limited_config(tmp_path, upstream, "two.toml", store))
    try:
        ports = [(await p.start())[0]["smtp"] for p in (one, two)]
        assert ports[0] != ports[1]
        started = time.monotonic()
        # Alternate: each process alone would let LIMIT of its own LIMIT + 1 through. Shared, the
        # fourth message (the second process's second) is refused after one of its own passed.
        outcomes = [await asend(ports[i % 2]) for i in range(2 * LIMIT + 2)]
        elapsed = time.monotonic() - started
        assert [p.proc.returncode for p in (one, two) if p.proc] == [None, None]
        assert [await p.stop() for p in (one, two)] == [0, 0]
    finally:
        for p in (one, two):
            if p.proc is not None and p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
    assert elapsed < 60 / LIMIT, f"sends took {elapsed:.1f} s: the bucket refilled in between"
    assert [o.code for o in outcomes] == [250] * LIMIT + [451] * (LIMIT + 2), outcomes
    assert all(rate_limited(o) for o in outcomes[LIMIT:]), outcomes
    assert len(upstream.messages) == LIMIT


async def test_serve_with_two_workers_shares_the_limit(tmp_path: Path, upstream: RecordingUpstream) -> None:
    # policy: platform — `[smtp] workers = 2`: two processes on one port (the parent's sockets), one SQLite file
    port = free_port()
    relay = ServeProcess(limited_config(tmp_path, upstream, "relay.toml", listen=f"127.0.0.1:{port}", workers=2))
    try:
        workers = await relay.start(started=2)
        assert len({w["pid"] for w in workers}) == 2 and {w["smtp"] for w in workers} == {port}
        started = time.monotonic()
        # A new connection each time: the kernel spreads them over both workers.
        outcomes = [await asend(port) for _ in range(3 * LIMIT)]
        elapsed = time.monotonic() - started
        assert await relay.stop() == 0
    finally:
        if relay.proc is not None and relay.proc.returncode is None:
            relay.proc.kill()
            await relay.proc.wait()
    assert elapsed < 60 / LIMIT, f"sends took {elapsed:.1f} s: the bucket refilled in between"
    assert sum(o.code == 250 for o in outcomes) == LIMIT, outcomes
    assert sum(rate_limited(o) for o in outcomes) == 2 * LIMIT, outcomes
    assert len(upstream.messages) == LIMIT


async def test_bucket_refills_at_the_rate(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    try:
        takes = [await store.rates.take("shop", rate_per_minute=60, now=NOW) for _ in range(61)]
        assert takes.count(True) == 60 and takes[-1] is False
        # Half a minute later: 30 tokens back, not more.
        later = [await store.rates.take("shop", rate_per_minute=60, now=NOW + 30) for _ in range(31)]
        assert later.count(True) == 30 and later[-1] is False
        # Buckets are per key: another account is not limited by this one.
        assert await store.rates.take("other", rate_per_minute=60, now=NOW + 30)
    finally:
        await store.close()
