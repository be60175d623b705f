"""Consent store at 1,000,000 records: import rate, import peak RSS (flat?), RCPT-time lookup latency.

    .venv/bin/python -m bench.bench_consent [--rows 1000000] [--dir /tmp/bench-consent] [--lookups 20000]

Targets (issue 3): import >= 50,000 rows/s; lookup p99 <= 1 ms; peak RSS not growing with the file.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from operator import attrgetter

from policies.facts import ConsentRecord
from relay.config import build_config
from relay.consent_import import import_consents
from relay.services import Clock, Services
from relay.store.records import iso
from relay.store.rows import CONSENT_BOOL_FIELDS, CONSENT_COLUMNS, CONSENT_CONTENT_COLUMNS, CONSENT_TIME_FIELDS

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
HEADER = (
    "email", "basis", "source", "collected_at", "source_url", "source_ip", "confirmed_at",
    "statement_text", "frequency_disclosed", "topic",
)


def address(i: int) -> str:
    return f"user{i}@example{i % 97}.nl"


def generate(path: Path, rows: int) -> int:
    """A realistic consent file, streamed to disk; about 1 in 50 rows is refused (purchased list)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for i in range(rows):
            day = 1 + i % 28
            writer.writerow(
                (
                    address(i),
                    "double_opt_in",
                    "purchased" if i % 50 == 49 else "signup_form",
                    f"2025-10-{day:02d}T10:{i % 60:02d}:00",
                    "https://shop.example/signup?campaign=autumn",
                    f"198.51.{i % 256}.{(i // 256) % 256}",
                    f"2025-10-{day:02d}T10:{i % 60:02d}:30Z",
                    "Ja, stuur mij elke vrijdag de nieuwsbrief van Shop B.V.",
                    "yes",
                    "newsletter" if i % 3 == 0 else "*",
                )
            )
    return path.stat().st_size


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5) so each phase's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def open_services(db: Path) -> Services:
    config = build_config(
        {
            "store": {"url": f"sqlite:///{db}", "timeout": 600},
            "unsubscribe": {"secrets": ["bench-unsubscribe-secret-0123456789"]},
            "accounts": [
                {
                    "id": "shop",
                    "domains": ["shop.example"],
                    "parent": "holding",
                    "default_stream": "newsletter",
                    "streams": [{"id": "newsletter", "kind": "marketing"}],
                }
            ],
        },
        db.parent / "config.toml",
    )
    services = Services.build(config, clock=Clock(now=lambda: NOW))
    await services.store.open()
    return services


async def timed_import(services: Services, path: Path) -> dict[str, Any]:
    reset_peak()
    rss_before = status_kib("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    report = await import_consents(services, path, "shop", dry_run=False, strict=False, keep_errors=0)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = report.accepted + report.unchanged + report.refused
    return {
        "rows": rows,
        "accepted": report.accepted,
        "unchanged": report.unchanged,
        "refused": report.refused,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed),
        # CPU of every thread of this process (parser + aiosqlite): the rate an idle core would allow
        "cpu_seconds": round(cpu, 2),
        "rows_per_cpu_s": round(rows / cpu),
        "rss_before_kib": rss_before,
        "peak_rss_kib": status_kib("VmHWM"),
    }


# --- prototype of a faster SqliteConsents.upsert_consents (relay/store/sqlite.py is not this file's) ---

_GET_ALL = attrgetter(*CONSENT_COLUMNS)
_TIME_IDX = tuple(i for i, c in enumerate(CONSENT_COLUMNS) if c in CONSENT_TIME_FIELDS)
_BOOL_IDX = tuple(i for i, c in enumerate(CONSENT_COLUMNS) if c in CONSENT_BOOL_FIELDS)
_CREATED = CONSENT_COLUMNS.index("created_at")
_UPDATED = CONSENT_COLUMNS.index("updated_at")


def fast_row(record: ConsentRecord, stamp: str) -> list[Any]:
    """consent_to_row plus the created/updated stamps in one pass: one C attrgetter, then only
    the 7 time and 5 bool columns converted; UTC datetimes skip astimezone."""
    row = list(_GET_ALL(record))
    for i in _TIME_IDX:
        value = row[i]
        if value is not None:
            row[i] = value.isoformat(timespec="microseconds") if value.tzinfo is timezone.utc else iso(value)
    for i in _BOOL_IDX:
        row[i] = 1 if row[i] else 0
    if row[_CREATED] is None:
        row[_CREATED] = stamp
    if row[_UPDATED] is None:
        row[_UPDATED] = stamp
    return row


async def prototype_upsert(services: Services, records: Any, now: datetime, batch_size: int = 5000) -> tuple[int, int]:
    """Same SQL and one transaction as SqliteConsents.upsert_consents, but fast_row and the next
    batch built while the previous executemany runs in aiosqlite's thread (sqlite3 releases the GIL)."""
    db = services.store.consent.db  # type: ignore[attr-defined]
    stamp = iso(now)
    columns = ",".join(CONSENT_COLUMNS)
    compare = " OR ".join(f"consents.{c} IS NOT excluded.{c}" for c in CONSENT_CONTENT_COLUMNS)
    updates = ",".join(f"{c}=excluded.{c}" for c in CONSENT_COLUMNS if c != "created_at")
    sql = (
        f"INSERT INTO consents ({columns}) VALUES ({','.join('?' * len(CONSENT_COLUMNS))}) "
        f"ON CONFLICT (email, scope, topic) DO UPDATE SET {updates} WHERE {compare}"
    )
    written = total = 0
    async with db.transaction() as conn:
        pending: asyncio.Future[Any] | None = None
        iterator = iter(records)
        while True:
            batch = [fast_row(r, stamp) for r in itertools.islice(iterator, batch_size)]
            if pending is not None:
                written += await pending
            if not batch:
                break
            total += len(batch)
            pending = asyncio.ensure_future(_exec(conn, sql, batch))
    return written, total - written


async def _exec(conn: Any, sql: str, batch: list[Any]) -> int:
    before = conn.total_changes
    await conn.executemany(sql, batch)
    return conn.total_changes - before


async def timed_prototype(services: Services, path: Path) -> dict[str, Any]:
    """The real importer's row generator feeding prototype_upsert instead of the store's upsert."""
    from relay import consent_import

    original = services.store.consent.upsert_consents

    async def patched(records: Any, *, now: datetime) -> tuple[int, int]:
        return await prototype_upsert(services, records, now)

    services.store.consent.upsert_consents = patched  # type: ignore[method-assign]
    try:
        return await timed_import(services, path)
    finally:
        services.store.consent.upsert_consents = original  # type: ignore[method-assign]
        del consent_import


async def lookups(services: Services, total_rows: int, count: int) -> dict[str, Any]:
    rng = random.Random(7)
    scopes = ("shop", "holding")
    samples: list[float] = []
    hits = 0
    consent = services.store.consent
    for n in range(count + 200):
        # Two in three look up a stored address, one in three an unknown one.
        email = address(rng.randrange(total_rows)) if n % 3 else f"nobody{n}@example.org"
        start = time.perf_counter()
        found = await consent.find_consents(scopes, [email])
        await consent.find_suppressions(scopes, [email])
        elapsed = time.perf_counter() - start
        if n >= 200:  # warm-up excluded
            samples.append(elapsed)
            hits += bool(found)
    samples.sort()
    return {
        "lookups": count,
        "found": hits,
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
        "max_ms": round(samples[-1] * 1000, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    results: dict[str, Any] = {"rows": args.rows, "peak_reset": reset_peak()}

    small_rows = max(args.rows // 10, 1)
    small, big = root / "small.csv", root / "big.csv"
    t = time.perf_counter()
    results["small_file_bytes"] = generate(small, small_rows)
    results["big_file_bytes"] = generate(big, args.rows)
    results["generate_seconds"] = round(time.perf_counter() - t, 1)

    # Peak RSS of a 10x smaller file against the full file: flat memory means about the same.
    services = await open_services(root / "small.db")
    results["import_small"] = await timed_import(services, small)
    await services.store.close()

    services = await open_services(root / "relay.db")
    try:
        results["import"] = await timed_import(services, big)
        results["reimport_unchanged"] = await timed_import(services, big)
        results["lookup"] = await lookups(services, args.rows, args.lookups)
        results["consent_records"] = await services.store.consent.count()
    finally:
        await services.store.close()
    if args.prototype:
        services = await open_services(root / "proto.db")
        try:
            results["import_prototype_store"] = await timed_prototype(services, big)
            results["prototype_records"] = await services.store.consent.count()
        finally:
            await services.store.close()
        results["dry_run_parse_only"] = await timed_dry_run(root, big)
    results["db_bytes"] = (root / "relay.db").stat().st_size
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return results


async def timed_dry_run(root: Path, path: Path) -> dict[str, Any]:
    """Parsing and rule checks alone (no store writes): the importer's own cost."""
    services = await open_services(root / "dry.db")
    try:
        start, cpu = time.perf_counter(), time.process_time()
        report = await import_consents(services, path, "shop", dry_run=True, keep_errors=0)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows = report.accepted + report.refused
        return {
            "rows": rows,
            "seconds": round(elapsed, 2),
            "rows_per_s": round(rows / elapsed),
            "rows_per_cpu_s": round(rows / cpu),
        }
    finally:
        await services.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_consent", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--dir", default="/tmp/bench-consent")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and database")
    parser.add_argument("--prototype", action="store_true", help="also time a faster store upsert and a dry run")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print(json.dumps(results, indent=2))
    imp, look = results["import"], results["lookup"]
    growth = imp["peak_rss_kib"] - results["import_small"]["peak_rss_kib"]
    print(
        f"\nimport {imp['rows']:,} rows: {imp['rows_per_s']:,} rows/s (target >= 50,000);"
        f" {imp['rows_per_cpu_s']:,} rows per CPU-second"
        f"\nre-import (unchanged): {results['reimport_unchanged']['rows_per_s']:,} rows/s"
        f"\npeak RSS: {results['import_small']['peak_rss_kib'] / 1024:.0f} MiB for {results['import_small']['rows']:,} rows,"
        f" {imp['peak_rss_kib'] / 1024:.0f} MiB for {imp['rows']:,} rows (growth {growth / 1024:.1f} MiB)"
        f"\nlookup p50 {look['p50_ms']} ms, p99 {look['p99_ms']} ms (target p99 <= 1 ms)"
        + (
            f"\nprototype store upsert: {results['import_prototype_store']['rows_per_s']:,} rows/s"
            f" ({results['import_prototype_store']['rows_per_cpu_s']:,} per CPU-s);"
            f" parse+check only (dry run): {results['dry_run_parse_only']['rows_per_s']:,} rows/s"
            f" ({results['dry_run_parse_only']['rows_per_cpu_s']:,} per CPU-s)"
            if args.prototype
            else ""
        ),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
