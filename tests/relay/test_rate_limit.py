"""The per-account message rate (account.rate_limited) is one token bucket in the store, so it
holds across worker processes: two processes sharing one SQLite file get the bucket once."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

from relay.store.sqlite import SqliteStore

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from relay.store.sqlite import SqliteStore

    async def main(path, go, attempts, now, rate):
        store = SqliteStore(Path(path), timeout=30)
        await store.open()
        print("ready", flush=True)
        while not Path(go).exists():  # start together with the other worker
            await asyncio.sleep(0.001)
        allowed = 0
        for _ in range(attempts):
            if await store.rates.take("shop", rate_per_minute=rate, now=now):
                allowed += 1
            await asyncio.sleep(0.002)  # sessions arrive spaced out: let the other worker in between
        await store.close()
        print(allowed, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
    """
)
NOW = 1_773_576_000.0  # a fixed instant: no refill while the workers run


async def test_two_processes_share_one_bucket(tmp_path: Path) -> None:
    db, go = tmp_path / "relay.db", tmp_path / "go"
    store = SqliteStore(db)
    await store.open()  # migrated once, as `serve` does before the workers start
    await store.close()
    rate, attempts = 120, 150  # 300 attempts on a bucket of 120: either worker alone could empty it
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, str(db), str(go), str(attempts), str(NOW), str(rate),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert (await worker.stdout.readline()).strip() == b"ready"
    go.touch()
    outputs = [await w.communicate() for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    allowed = [int(out.strip()) for out, _ in outputs]
    assert sum(allowed) == rate, allowed  # never more than the bucket, whoever asked
    assert min(allowed) > 0, allowed  # and both workers really drew from it


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
