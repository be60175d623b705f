"""`python -m bench.ab_store BASE_TREE [NEW_TREE]`: bench_store's rows as a same-run A/B of two source trees.

Both trees run at once, each in its own process with its own seeded SQLite file and PostgreSQL schema;
one measures at a time, the order alternating, round after round. Per row: the median of the rounds'
new ÷ base ops/s, and base ÷ new CPU time per operation (the process's own cost, which a loaded
machine disturbs far less than the wall clock). NEW_TREE defaults to this checkout. Each side imports
`relay` and `policies` from its tree (build the C extension there) and the workload, bench_store.py,
from this one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [
    (backend, op, rcpts, tasks)
    for backend in ("sqlite", "postgresql")
    for rcpts in (1, 10)
    for op in ("rcpt lookup", "decision record", "message (both)")
    for tasks in (1, 16)
]


async def serve(pg_url: str, consents: int) -> None:
    """One side: seed both stores, then answer `backend|op|rcpts|tasks|ops` lines with `ops/s cpu-µs/op`."""
    import asyncpg

    sys.path.insert(0, os.getcwd())  # the tree under test
    spec = importlib.util.spec_from_file_location("bench_store", Path(__file__).with_name("bench_store.py"))
    assert spec is not None and spec.loader is not None
    workload = sys.modules["bench_store"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workload)
    from relay.store.postgres import PostgresStore
    from relay.store.sqlite import SqliteStore

    _measure, _operations, _seed = workload._measure, workload._operations, workload._seed

    schema = f"ab_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    with tempfile.TemporaryDirectory(prefix="ab-store-") as tmp:
        stores = {
            "sqlite": SqliteStore(Path(tmp) / "bench.db", 5.0),
            "postgresql": PostgresStore(f"{pg_url}{'&' if '?' in pg_url else '?'}search_path={schema}", 5.0),
        }
        try:
            for store in stores.values():
                await store.open()
                await _seed(store, consents)
            ops = {(name, r): _operations(s, consents, r) for name, s in stores.items() for r in (1, 10)}
            print("ready", flush=True)
            while line := (await asyncio.to_thread(sys.stdin.readline)).strip():
                backend, op, rcpts, tasks, n = line.split("|")
                run = ops[(backend, int(rcpts))][op]
                await _measure(run, max(int(tasks), int(n) // 10), int(tasks))  # warm caches, pool
                cpu = time.process_time()
                seconds, _ = await _measure(run, int(n), int(tasks))
                print(f"{int(n) / seconds} {(time.process_time() - cpu) / int(n) * 1e6}", flush=True)
        finally:
            for store in stores.values():
                await store.close()
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await admin.close()


def compare(args: argparse.Namespace) -> str:
    side_args = [str(Path(__file__).resolve()), "--serve", "--pg-url", args.pg_url, "--consents", str(args.consents)]
    procs = {
        side: subprocess.Popen(
            [sys.executable, *side_args], cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for side, tree in (("base", args.base), ("new", args.new))
    }
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        rows = [r for r in ROWS if r[0] in args.backends]
        got: dict[tuple[object, ...], dict[str, list[tuple[float, float]]]] = {r: {"base": [], "new": []} for r in rows}
        for round_ in range(args.rounds):
            for i, row in enumerate(rows):
                for side in ("base", "new") if (round_ + i) % 2 == 0 else ("new", "base"):
                    proc = procs[side]
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write("|".join(map(str, (*row, args.ops))) + "\n")
                    proc.stdin.flush()
                    rate, cpu = map(float, proc.stdout.readline().split())
                    got[row][side].append((rate, cpu))
            print(f"round {round_ + 1} of {args.rounds}", file=sys.stderr, flush=True)
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(60)
    lines = [
        "| store | operation | rcpts | tasks | base ops/s | new ops/s | new ÷ base ops/s | base ÷ new CPU/op |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rates, cpus = [], []
    for row, sides in got.items():
        base, new = sides["base"], sides["new"]
        rate = statistics.median(n[0] / b[0] for b, n in zip(base, new))
        cpu = statistics.median(b[1] / n[1] for b, n in zip(base, new))
        rates.append(rate)
        cpus.append(cpu)
        lines.append(
            f"| {' | '.join(map(str, row))} | {statistics.median(b[0] for b in base):,.0f} "
            f"| {statistics.median(n[0] for n in new):,.0f} | {rate:.2f} | {cpu:.2f} |"
        )
    geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
    lines.append(f"\ngeometric mean: new ÷ base ops/s {geo(rates):.3f}, base ÷ new CPU/op {geo(cpus):.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_store", description=__doc__)
    parser.add_argument("base", nargs="?", type=Path, help="the source tree to compare against (a checkout of main)")
    parser.add_argument("new", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--consents", type=int, default=50_000)
    parser.add_argument("--ops", type=int, default=300, help="operations per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["sqlite", "postgresql"])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.pg_url, args.consents))
        return 0
    if args.base is None:
        parser.error("name the base tree")
    print(compare(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
