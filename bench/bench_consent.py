"""Consent store at 1,000,000 records: import rate, import peak RSS (flat?), RCPT-time lookup latency.

    .venv/bin/python -m bench.bench_consent [--rows 1000000] [--dir /tmp/bench-consent] [--lookups 20000]

Targets (issue 3): import >= 50,000 rows/s; lookup p99 <= 1 ms; peak RSS not growing with the file.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from relay.config import build_config
from relay.consent.imports import import_consents
from relay.services import Clock, Services

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
    results["db_bytes"] = (root / "relay.db").stat().st_size
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_consent", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--dir", default="/tmp/bench-consent")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and database")
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
        f"\nlookup p50 {look['p50_ms']} ms, p99 {look['p99_ms']} ms (target p99 <= 1 ms)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
