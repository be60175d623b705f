"""`python -m bench.bench_store`: one instance's store ops/s, SQLite vs PostgreSQL, on the per-message path.

Per message the relay reads the account state and the recipients' consents and suppressions (at
RCPT/DATA time, through the pipeline's own `recipient_facts`), then takes delivery ids (from blocks of 1000 reserved in the store) and records the
decision with one delivery per recipient. Each row runs that path through the store API only (no
SMTP) with C concurrent tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg

from policies.facts import ConsentRecord, Suppression
from relay.engine.pipeline import IdAllocator, Pipeline
from relay.store.base import Store
from relay.store.postgres import PostgresStore
from relay.store.records import AccountState, DecisionRecord, DeliveryRecord
from relay.store.sqlite import SqliteStore

OUT = Path(__file__).resolve().parent / "out" / "store.md"
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
SCOPES = ("shop", "group")


@dataclass(frozen=True)
class Row:
    backend: str
    op: str
    rcpts: int
    concurrency: int
    ops: int
    seconds: float
    latencies: tuple[float, ...]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def cells(self) -> list[str]:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return [
            self.backend,
            self.op,
            str(self.rcpts),
            str(self.concurrency),
            f"{self.rate:,.0f}",
            f"{statistics.median(ordered) * 1000:.2f}",
            f"{p99 * 1000:.2f}",
        ]


def _records(n: int) -> Iterator[ConsentRecord]:
    for i in range(n):
        yield ConsentRecord(
            email=f"user{i}@example.nl", scope="shop", topic="*", basis="double_opt_in", collected_at=NOW,
            confirmed_at=NOW, source_url="https://shop.example/signup", source_ip="192.0.2.1",
        )


async def _seed(store: Store, consents: int) -> None:
    await store.consent.upsert_consents(_records(consents), now=NOW)
    for i in range(0, consents, 50):  # every 50th address unsubscribed
        await store.consent.add_suppression(
            Suppression(f"user{i}@example.nl", "shop", "*", "suppression.unsubscribed", "one_click", NOW)
        )
    await store.accounts.set(AccountState("shop"), actor="bench", note="")


def _operations(store: Store, consents: int, rcpts: int) -> dict[str, Callable[[int], Awaitable[None]]]:
    def emails(n: int) -> list[str]:
        start = (n * 7919) % max(1, consents - rcpts)
        return [f"user{start + k}@example.nl" for k in range(rcpts)]

    # The pipeline's own read of a message's recipients (whatever the tree under test does there), on
    # a stand-in carrying only the store: bench.ab_store compares two trees' code, not this file's.
    reader = SimpleNamespace(services=SimpleNamespace(store=store))
    account = SimpleNamespace(id=SCOPES[0], parent=SCOPES[1])

    async def lookup(n: int) -> None:
        await store.accounts.get("shop")
        await Pipeline.recipient_facts(reader, account, emails(n))  # type: ignore[arg-type]

    # Delivery ids come from blocks of 1000 reserved in the store, as the pipeline takes them.
    ids = IdAllocator(store.decisions.reserve_ids, "deliveries")

    async def next_id() -> int:
        return await ids.take()

    async def record(n: int) -> None:
        addresses = emails(n)
        delivery_ids = [await next_id() for _ in addresses]
        relay_id = f"bench{n:x}{secrets.token_hex(3)}"
        at = datetime.now(timezone.utc)
        await store.decisions.record(
            [DecisionRecord(relay_id, "accept", at, f"<{relay_id}@bench>", "shop", "news", "o@shop", tuple(addresses))],
            [
                DeliveryRecord(i, relay_id, "shop", "news", e, "delivered", at, f"<{relay_id}@bench>", "shop")
                for i, e in zip(delivery_ids, addresses)
            ],
        )

    async def message(n: int) -> None:
        await lookup(n)
        await record(n)

    return {"rcpt lookup": lookup, "decision record": record, "message (both)": message}


async def _measure(op: Callable[[int], Awaitable[None]], total: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for n in counter:
            started = time.perf_counter()
            await op(n)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def _backends(pg_url: str, workdir: Path) -> AsyncIterator[tuple[str, Store]]:
    sqlite = SqliteStore(workdir / "bench.db", 5.0)
    await sqlite.open()
    try:
        yield "sqlite", sqlite
    finally:
        await sqlite.close()
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        pg = PostgresStore(f"{pg_url}{'&' if '?' in pg_url else '?'}search_path={schema}", 5.0)
        await pg.open()
        try:
            yield "postgresql", pg
        finally:
            await pg.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        async for name, store in _backends(args.pg_url, Path(tmp)):
            started = time.perf_counter()
            await _seed(store, args.consents)
            print(f"{name}: seeded {args.consents} consents in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            for rcpts in args.recipients:
                for op_name, op in _operations(store, args.consents, rcpts).items():
                    for concurrency in args.concurrency:
                        await _measure(op, max(concurrency, args.ops // 10), concurrency)  # warm caches, pool
                        seconds, latencies = await _measure(op, args.ops, concurrency)
                        row = Row(name, op_name, rcpts, concurrency, args.ops, seconds, tuple(latencies))
                        print("  " + " | ".join(row.cells()), file=sys.stderr)
                        rows.append(row)
    return rows


def table(rows: list[Row]) -> str:
    head = ["store", "operation", "rcpts", "tasks", "ops/s", "p50 ms", "p99 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_store", description=__doc__)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", help="a scratch schema is made here")
    parser.add_argument("--consents", type=int, default=50_000, help="consent records seeded first")
    parser.add_argument("--ops", type=int, default=2000, help="operations per row")
    parser.add_argument("--recipients", type=_ints, default=(1, 10), help="recipients per message, e.g. 1,10")
    parser.add_argument("--concurrency", type=_ints, default=(1, 16), help="concurrent tasks, e.g. 1,16")
    parser.add_argument("--out", type=Path, default=OUT, help="where the table is written")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    command = "python -m bench.bench_store " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"# Store ops/s, one instance: SQLite vs PostgreSQL\n\n`{command.strip()}`\n\n{table(rows)}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
