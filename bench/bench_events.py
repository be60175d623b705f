"""`python -m bench.bench_events [--events N] [--postgres URL]`: the event feed's read rate (docs/SPEC.md §17)
with N events (default 1,000,000) of one account in the store: the whole feed read page by page,
through the store and through `GET /api/events` (limit 1000) on a real admin listener.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from relay.config import build_config
from relay.store.account_events import Event
from relay.routes import build_admin_app
from relay.passwords import hash_password
from relay.services import Services
from relay.store.events_store import append_events

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
TOKEN = "bench-admin-token-0123456789"
BATCH = 10_000


def config(store_url: str, base: Path) -> Any:
    return build_config(
        {
            "store": {"url": store_url},
            "http": {"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "bench", "hash": hash_password(TOKEN)}]},
            "accounts": [{"id": "shop", "domains": ["shop.example"], "streams": [{"id": "orders", "kind": "transactional"}]}],
        },
        base / "relay.toml",
    )


async def fill(services: Services, count: int) -> float:
    store: Any = services.store
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        events = [
            Event("delivered", "shop", T0 + timedelta(milliseconds=i), "orders", f"r{i}@example.nl", f"relay{i}",
                  f"<m{i}@shop.example>", "", {"delivery": i, "status": "delivered"})
            for i in range(first, min(count, first + BATCH))
        ]
        async with store.db.transaction() as tx:
            await append_events(tx, events)
    return time.perf_counter() - started


async def read_store(services: Services) -> tuple[int, float]:
    started, cursor, seen = time.perf_counter(), 0, 0
    while page := await services.store.events.after("shop", cursor, 1000):
        seen += len(page)
        cursor = page[-1].seq
    return seen, time.perf_counter() - started


async def read_http(services: Services) -> tuple[int, float]:
    async def ready() -> dict[str, Any]:
        return {}

    runner = aiohttp.web.AppRunner(build_admin_app(services, ready), access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    seen, cursor = 0, "0"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with http.get(f"http://127.0.0.1:{port}/api/events?account=shop&limit=1") as warm:
                assert warm.status == 200  # the token's scrypt check is paid here, not in the timing
            started = time.perf_counter()
            while True:
                async with http.get(f"http://127.0.0.1:{port}/api/events?account=shop&after={cursor}&limit=1000") as r:
                    body = await r.json()
                if not body["events"]:
                    break
                seen += len(body["events"])
                cursor = body["next"]
            return seen, time.perf_counter() - started
    finally:
        await runner.cleanup()


async def run(count: int, postgres: str | None) -> str:
    if postgres is None:
        return await measure(count, None)
    schema = f"bench_events_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(postgres)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        return await measure(count, f"{postgres}{'&' if '?' in postgres else '?'}search_path={schema}")
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def measure(count: int, store_url: str | None) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        base = Path(tmp)
        services = Services.build(config(store_url or f"sqlite:///{base}/relay.db", base))
        await services.store.open()
        try:
            filled = await fill(services, count)
            rows = [("write (batches of 10,000)", count, filled)]
            rows.append(("read: store, pages of 1000", *await read_store(services)))
            rows.append(("read: GET /api/events, limit 1000", *await read_http(services)))
        finally:
            await services.store.close()
    backend = "SQLite" if store_url is None else "PostgreSQL"
    lines = [f"| {backend}: {what} | {n:,} | {secs:.1f} | {n / secs:,.0f} |" for what, n, secs in rows]
    return "| what | events | s | events/s |\n|---|---:|---:|---:|\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_events", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database: a fresh schema in it, dropped at the end")
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.events, args.postgres)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
