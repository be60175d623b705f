"""`python -m bench.bench_quarantine`: quarantine write rate and list latency in SQLite.

Writes N held messages (default 100,000; the 5 KB bench/message.eml as content, spread over 30 days,
3 accounts, 6 rules) through QuarantineStore.hold — one committed transaction each, as the pipeline
does before answering 250 — with C concurrent writers, then times the admin's reads at that size:
the first page of the list (no filter, by account, by rule, by age), a page deep in the cursor walk,
one message with its content, and the per-rule/per-account counts the UI shows.
Target (issue 6): first page ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Awaitable, Callable

from relay import quarantine_service as qs
from relay.store.records import QuarantineItem
from relay.store.sqlite import SqliteStore

OUT = Path(__file__).resolve().parent / "out" / "quarantine.md"
MESSAGE = (Path(__file__).resolve().parent / "message.eml").read_bytes()
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
ACCOUNTS = ("shop", "bakkerij", "trailhead")
RULES = (
    "content.offensive_subject", "content.misleading_subject", "content.hateful", "content.adult",
    "content.infringing_links", "content.personal_data",
)
TARGET_MS = 50.0


def item(n: int, total: int) -> QuarantineItem:
    rule = RULES[n % len(RULES)]
    return QuarantineItem(
        id=f"Q{n:08d}", relay_id=f"{n:08d}", account=ACCOUNTS[n % len(ACCOUNTS)], stream="newsletter",
        mail_from="news@shop.example", rcpt_tos=("anna@example.nl", "bob@example.nl"),
        subject=f"Bench message {n}", rules=(rule,),
        findings=({"rule": rule, "action": "quarantine", "detail": "bench", "evidence": "klote", "recipient": None},),
        size=len(MESSAGE), received_at=NOW - timedelta(days=30) * (1 - n / total), content=MESSAGE,
    )


async def fill(store: SqliteStore, total: int, concurrency: int) -> float:
    """Hold `total` messages with `concurrency` writers; returns messages per second."""
    next_n = iter(range(total))
    done = 0

    async def writer() -> None:
        nonlocal done
        for n in next_n:
            await store.quarantine.hold(item(n, total))
            done += 1
            if done % 10_000 == 0:
                print(f"  {done:,} held", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    """(median ms, max ms) over `repeat` calls after one warm-up."""
    await fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), max(samples)


async def run(total: int, concurrency: int, repeat: int, path: Path) -> str:
    store = SqliteStore(path)
    await store.open()
    try:
        print(f"holding {total:,} messages with {concurrency} writers…", file=sys.stderr)
        rate = await fill(store, total, concurrency)
        quarantine = store.quarantine
        deep_cursor: str | None = None
        cursor: str | None = None
        for _ in range(min(1000, total // 100)):  # walk to about page 1000 (50,000 items in)
            _, cursor = await quarantine.list(cursor=cursor, limit=50)
            if cursor is None:
                break
            deep_cursor = cursor
        week_ago = NOW - timedelta(days=7)
        reads: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("list first page (50), no filter", lambda: quarantine.list(limit=50)),
            ("list first page, account=bakkerij", lambda: quarantine.list(account="bakkerij", limit=50)),
            ("list first page, rule=content.adult", lambda: quarantine.list(rule="content.adult", limit=50)),
            ("list first page, last 7 days", lambda: quarantine.list(since=week_ago, limit=50)),
            ("list first page, older than 7 days", lambda: quarantine.list(before=week_ago, limit=50)),
            ("list page ~1000 by cursor", lambda: quarantine.list(cursor=deep_cursor, limit=50)),
            ("get one with content", lambda: quarantine.get(f"Q{total // 2:08d}", with_content=True)),
            ("count held", lambda: quarantine.count()),
        ]
        rows = []
        for name, fn in reads:
            median, worst = await timed(fn, repeat)
            rows.append((name, median, worst))
        counts_median, counts_worst = await timed(lambda: _counts(store), 3)
        rows.append((f"UI counts per rule/account (scan, capped at {qs.COUNT_SCAN_LIMIT:,})", counts_median, counts_worst))
    finally:
        await store.close()
    size_mb = path.stat().st_size / 1e6
    first = rows[0][1]
    lines = [
        "# Quarantine in SQLite",
        "",
        f"`python -m bench.bench_quarantine --messages {total} --concurrency {concurrency}` "
        f"({len(MESSAGE):,}-byte message, database {size_mb:,.0f} MB, WAL).",
        "",
        f"- Write rate: **{rate:,.0f} messages/s** held (each committed before `250 2.6.0`), {concurrency} concurrent writers.",
        f"- First page of the list: **{first:.2f} ms** median (target ≤ {TARGET_MS:.0f} ms: {'met' if first <= TARGET_MS else 'NOT met'}).",
        "",
        "| read (at {:,} held) | median ms | max ms |".format(total),
        "|---|---:|---:|",
        *(f"| {name} | {median:.2f} | {worst:.2f} |" for name, median, worst in rows),
        "",
    ]
    return "\n".join(lines)


async def _counts(store: SqliteStore) -> None:
    class _Services:  # what qs.counts reads
        pass

    services = _Services()
    services.store = store  # type: ignore[attr-defined]
    await qs.counts(services)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_quarantine", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-quarantine-") as folder:
        report = asyncio.run(run(args.messages, args.concurrency, args.repeat, Path(folder) / "relay.db"))
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
