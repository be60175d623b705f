"""`python -m bench.bench_quarantine`: quarantine write rate and list latency in SQLite.

Writes N held messages (default 100,000; the 5 KB bench/message.eml as content, spread over 30 days,
3 accounts, 6 rules) through QuarantineStore.hold — one committed transaction each, as the pipeline
does before answering 250 — with C concurrent writers, then times the admin's reads at that size:
the first page of the list (no filter, by account, by rule, by age), a page deep in the cursor walk,
one message with its content, and the per-rule/per-account counts the UI shows — then the same first
page over real HTTP from the admin listener: `GET /api/quarantine` with a bearer token and the signed-in
UI list page `/ui/quarantine` (list, counts and the rendered HTML).
Target (issue 6): first page ≤ 50 ms, in the store and over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from policies.engine import Engine
from policies.registry import ALL_RULES
from relay.config import build_config
from relay.routes import build_admin_app
from relay.metrics import Metrics
from relay.passwords import hash_password
from relay.quarantine import service as qs
from relay.services import Clock, Services, build_profile
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
TOKEN = "bench-admin-token-0123456789abcdef"


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
        services = _services(store, path)
        counts_median, counts_worst = await timed(lambda: qs.counts(services), repeat)
        rows.append(("counts per rule/account, all held (one GROUP BY on the quarantine_counts index)", counts_median, counts_worst))
        counts_median, counts_worst = await timed(lambda: qs.counts(services, since=week_ago), repeat)
        rows.append(("counts per rule/account, last 7 days", counts_median, counts_worst))
        async with _admin_http(services) as (session, base):
            await _sign_in(session, base)
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            http_reads: list[tuple[str, str, dict[str, str]]] = [
                ("HTTP GET /api/quarantine (first page)", "/api/quarantine", bearer),
                ("HTTP GET /api/quarantine?rule=content.adult", "/api/quarantine?rule=content.adult", bearer),
                ("HTTP GET /ui/quarantine (signed in: list, counts, HTML)", "/ui/quarantine", {}),
                ("HTTP GET /ui/quarantine?age=7d", "/ui/quarantine?age=7d", {}),
                ("HTTP GET /ui/quarantine?rule=content.adult", "/ui/quarantine?rule=content.adult", {}),
            ]
            http_rows = []
            for name, url, headers in http_reads:
                median, worst = await timed(lambda u=url, h=headers: _get(session, base + u, h), repeat)  # type: ignore[misc]
                http_rows.append((name, median, worst))
            rows += http_rows
    finally:
        await store.close()
    size_mb = path.stat().st_size / 1e6
    first = rows[0][1]
    api_first, ui_first = http_rows[0][1], http_rows[2][1]

    def verdict(ms: float) -> str:
        return "met" if ms <= TARGET_MS else "NOT met"

    lines = [
        "# Quarantine in SQLite",
        "",
        f"`python -m bench.bench_quarantine --messages {total} --concurrency {concurrency}` "
        f"({len(MESSAGE):,}-byte message, database {size_mb:,.0f} MB, WAL).",
        "",
        f"- Write rate: **{rate:,.0f} messages/s** held (each committed before `250 2.6.0`), {concurrency} concurrent writers.",
        f"- First page of the list: **{first:.2f} ms** median in the store (target ≤ {TARGET_MS:.0f} ms: {verdict(first)}); "
        f"over HTTP **{api_first:.2f} ms** for `GET /api/quarantine` ({verdict(api_first)}) and "
        f"**{ui_first:.2f} ms** for the signed-in UI list page `/ui/quarantine` ({verdict(ui_first)}).",
        "",
        "| read (at {:,} held) | median ms | max ms |".format(total),
        "|---|---:|---:|",
        *(f"| {name} | {median:.2f} | {worst:.2f} |" for name, median, worst in rows),
        "",
    ]
    return "\n".join(lines)


def _services(store: SqliteStore, path: Path) -> Services:
    """What the admin listener of a relay on this store has: config, engine, metrics, a fixed clock."""
    config = build_config(
        {
            "store": {"url": f"sqlite:///{path}"},
            "http": {"admin_tokens": [{"label": "bench", "hash": hash_password(TOKEN)}]},
            "unsubscribe": {"secrets": ["bench-unsubscribe-secret-0123456789"]},
            "accounts": [
                {"id": a, "domains": [f"{a}.example"], "default_stream": "newsletter",
                 "streams": [{"id": "newsletter", "kind": "marketing"}]}
                for a in ACCOUNTS
            ],
        },
        path.parent / "config.toml",
    )
    return Services(
        config=config, store=store, metrics=Metrics(), engine=Engine(ALL_RULES, build_profile(config)),
        clock=Clock(now=lambda: NOW),
    )


@asynccontextmanager
async def _admin_http(services: Services) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """The admin app on an ephemeral port and a keep-alive client with a cookie jar, as a browser has."""

    async def ready() -> dict[str, Any]:
        return {}

    runner = web.AppRunner(build_admin_app(services, ready), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            yield session, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _sign_in(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(base + "/ui/login") as response:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await response.text())
    assert csrf is not None, "no sign-in form"
    form = {"csrf": csrf.group(1), "token": TOKEN, "next": "/ui/quarantine"}
    async with session.post(base + "/ui/login", data=form, allow_redirects=False) as response:
        assert response.status == 303, f"sign-in failed: {response.status}"


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        body = await response.read()
        assert response.status == 200, f"{url}: {response.status} {body[:200]!r}"
        assert b"Q" in body  # a page with items, not an empty list


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
