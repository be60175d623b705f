"""`python -m bench.bench_record [--against BASE_TREE]`: the store's record write path, per message.

Each operation is what the relay writes for a message of 1 recipient (`--rcpts`): one decision and
one delivery row through `DecisionStore.record` (no events), from T concurrent tasks, on SQLite
(WAL, synchronous=FULL) and, with `--pg`, PostgreSQL. Per row: messages/s, the process's CPU time
per message (both threads: the loop's and aiosqlite's), and, in a second, counted pass, the
hand-offs to aiosqlite's thread and the COMMITs (so fsyncs) per message.

With `--against BASE_TREE` the rounds alternate between BASE_TREE and this checkout, each run by its
own `.venv/bin/python` in its own directory (so it imports that tree's `relay`); the table has both
and the ratio new ÷ base of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


async def _store(backend: str, workdir: Path, pg_url: str) -> tuple[Any, Any]:
    if backend == "sqlite":
        from relay.store.sqlite import SqliteStore

        store = SqliteStore(workdir / f"record-{secrets.token_hex(3)}.db", 5.0)
        await store.open()
        return store, None
    import asyncpg

    from relay.store.postgres import PostgresStore

    schema = f"brec_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    store = PostgresStore(f"{pg_url}?search_path={schema}", 5.0)
    await store.open()
    return store, (admin, schema)


async def _run(store: Any, total: int, tasks: int, rcpts: int, first_id: int) -> float:
    from relay.store.records import DecisionRecord, DeliveryRecord

    counter = iter(range(total))
    at = datetime.now(timezone.utc)

    async def worker() -> None:
        for n in counter:
            relay_id = f"r{first_id + n:x}"
            emails = tuple(f"user{n + k}@example.nl" for k in range(rcpts))
            await store.decisions.record(
                [DecisionRecord(relay_id, "delivered", at, f"<{relay_id}@bench>", "shop", "news", "o@shop", emails)],
                [
                    DeliveryRecord((first_id + n) * rcpts + k, relay_id, "shop", "news", e, "delivered", at, f"<{relay_id}@bench>", "shop")
                    for k, e in enumerate(emails)
                ],
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - started


def _count_handoffs() -> dict[str, int]:
    """Count every call queued to an aiosqlite thread, and every COMMIT a writer runs."""
    import aiosqlite.core

    counts = {"handoffs": 0}
    original = aiosqlite.core.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        counts["handoffs"] += 1
        return await original(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counted  # type: ignore[method-assign]
    return counts


async def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.getcwd())  # the tree under test
    with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
        for backend in args.backends:
            store, pg = await _store(backend, Path(tmp), args.pg_url)
            try:
                next_id = 1
                for tasks in args.tasks:
                    await _run(store, max(50, args.ops // 10), tasks, args.rcpts, next_id)  # warm up
                    next_id += args.ops
                    cpu = time.process_time()
                    seconds = await _run(store, args.ops, tasks, args.rcpts, next_id)
                    cpu = time.process_time() - cpu
                    next_id += args.ops
                    row = {"backend": backend, "tasks": tasks, "rate": args.ops / seconds, "cpu_us": cpu / args.ops * 1e6}
                    if backend == "sqlite":
                        counts = _count_handoffs()
                        commits = [0]
                        writer = store.db._writer
                        await writer._execute(writer._conn.set_trace_callback, lambda sql: commits.__setitem__(0, commits[0] + (sql == "COMMIT")))
                        counts["handoffs"] = 0
                        n = max(200, args.ops // 5)
                        await _run(store, n, tasks, args.rcpts, next_id)
                        next_id += n
                        row["handoffs"] = counts["handoffs"] / n
                        row["commits"] = commits[0] / n
                        await writer._execute(writer._conn.set_trace_callback, None)
                    print(json.dumps(row), flush=True)
            finally:
                await store.close()
                if pg is not None:
                    admin, schema = pg
                    await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
                    await admin.close()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_record", description=__doc__)
    parser.add_argument("--against", type=Path, help="a base tree with its own .venv: A/B, alternating")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=2000, help="messages per row")
    parser.add_argument("--rcpts", type=int, default=1)
    parser.add_argument("--tasks", type=_ints, default=(1, 16), help="concurrent tasks, e.g. 1,16")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL too")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = ("sqlite", "postgresql") if args.pg else ("sqlite",)
    if args.child:
        asyncio.run(child(args))
        return 0
    here = Path.cwd()
    trees = {"base": args.against.resolve(), "new": here} if args.against else {"new": here}
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    forward: list[str] = []
    skip = False
    for a in passed:  # everything but --against/--rounds goes to the children
        if skip:
            skip = False
            continue
        if a in ("--against", "--rounds"):
            skip = True
            continue
        if a.startswith(("--against=", "--rounds=")):
            continue
        forward.append(a)
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            out = subprocess.run(
                [str(tree / ".venv" / "bin" / "python"), str(HERE), "--child", *forward],
                cwd=tree, check=True, capture_output=True, text=True,
            ).stdout
            for line in out.splitlines():
                row = json.loads(line)
                results.setdefault((name, row["backend"], row["tasks"]), []).append(row)
                print(f"round {r + 1} {name}: {row}", file=sys.stderr)

    def med(name: str, backend: str, tasks: int, key: str) -> float:
        values = [row[key] for row in results.get((name, backend, tasks), []) if key in row]
        return statistics.median(values) if values else float("nan")

    head = ["store", "tasks"]
    for key in ("rate", "cpu_us", "handoffs", "commits"):
        head += [f"{n} {key}" for n in trees] + (["new ÷ base"] if len(trees) == 2 else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for backend in args.backends:
        for tasks in args.tasks:
            cells = [backend, str(tasks)]
            for key in ("rate", "cpu_us", "handoffs", "commits"):
                values = [med(n, backend, tasks, key) for n in trees]
                cells += [f"{v:,.1f}" for v in values]
                if len(trees) == 2:
                    cells.append(f"{values[1] / values[0]:.2f}" if values[0] else "—")
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
