"""`python -m bench.latency_probe DIR [--skip N]`: per target, the median (and mean) wall and
thread-CPU µs of each phase of a session in the relay's workers (the first N sessions of each
worker left out, 100 by default), the time from one session's start to the next one's (any worker:
what msg/s at concurrency 1 is made of), and the garbage collections."""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path

PHASES = (
    ("made", "data", "SMTP dialog up to the body"),
    ("data", "parsed", "parse"),
    ("parsed", "eval0", "facts"),
    ("eval0", "eval1", "verdict (Engine.message)"),
    ("eval1", "send0", "copies, ids"),
    ("send0", "send1", "upstream send"),
    ("send1", "replied", "record, reply made"),
    ("replied", "lost", "reply out, QUIT, close"),
    ("made", "lost", "whole session in the worker"),
)

Row = dict[str, tuple[int, int]]


def read(directory: Path, skip: int) -> dict[str, list[Row]]:
    sessions: dict[str, list[Row]] = defaultdict(list)
    for path in sorted(directory.glob("*.txt")):
        target = re.sub(r"-\d+$", "", path.stem)
        for line in path.read_text().splitlines()[skip:]:
            row: Row = {"worker": (hash(path.name), 0)}
            for item in line.split():
                key, _, value = item.partition("=")
                numbers = [int(v) for v in value.split(",")]
                row[key] = (numbers[0], numbers[1] if len(numbers) > 1 else 0)
            row["gc2"] = (int(line.split("gc=")[1].split()[0].split(",")[2]), 0)
            sessions[target].append(row)
    return sessions


def stats(values: list[int]) -> str:
    return f"{statistics.median(values) / 1000:.0f} ({statistics.mean(values) / 1000:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("--skip", type=int, default=100)
    args = parser.parse_args()
    sessions = read(args.directory, args.skip)
    targets = sorted(sessions)
    print("median (mean) µs\n")
    print("| phase | " + " | ".join(f"{t} wall | {t} CPU" for t in targets) + " |")
    print("|---|" + "---:|" * (2 * len(targets)))
    for start, end, label in PHASES:
        cells = []
        for t in targets:
            rows = [r for r in sessions[t] if start in r and end in r]
            cells.append(stats([r[end][0] - r[start][0] for r in rows]) if rows else "—")
            cells.append(stats([r[end][1] - r[start][1] for r in rows]) if rows else "—")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label, gap in (
        ("end of one session → start of the next", lambda a, b: b["made"][0] - a["lost"][0]),
        ("start → start of the next (any worker)", lambda a, b: b["made"][0] - a["made"][0]),
    ):
        cells = []
        for t in targets:
            rows = sorted(sessions[t], key=lambda r: r["made"][0])
            values = [gap(a, b) for a, b in zip(rows, rows[1:]) if "lost" in a]
            cells += [stats(values), ""]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for t in targets:
        rows = sorted(sessions[t], key=lambda r: r["made"][0])
        starts = sorted(b["made"][0] - a["made"][0] for a, b in zip(rows, rows[1:]))
        pct = {p: starts[int(len(starts) * p / 100)] / 1000 for p in (10, 50, 90, 99)}
        print(
            f"{t}: {len(rows)} sessions; start→start p10/50/90/99 "
            + "/".join(f"{v:.0f}" for v in pct.values())
            + f" µs; GC µs per session (mean) {statistics.mean(r['gc_ns'][0] for r in rows) / 1000:.1f}, "
            f"gen-2 collections {sum(r['gc2'][0] for r in rows)}"
        )
        if rows and "faults" in rows[0]:
            faults = [r["faults"][0] for r in rows]
            print(f"  page faults per session (main thread) mean {statistics.mean(faults):.1f}, sessions with any {sum(1 for f in faults if f) / len(faults):.0%}")
        # Process CPU (every thread: the store's too) per session, from each worker's own rows in order.
        per_worker: dict[int, list[int]] = defaultdict(list)
        for r in sessions[t]:
            per_worker[r["worker"][0]].append(r["pcpu"][0])
        spans = [(v[-1] - v[0], len(v) - 1) for v in per_worker.values() if len(v) > 1]
        if spans:
            print(f"  process CPU per session (all threads) {sum(s for s, _ in spans) / sum(n for _, n in spans) / 1000:.0f} µs")


if __name__ == "__main__":
    main()
