"""bench.bench_smtp_edge's server (RelaySMTP, a handler that takes everything) from two checkouts,
alternating in one run: the receiving edge's CPU per session before and after a change to it.

`python -m bench.ab_smtp_edge BEFORE_CHECKOUT [AFTER_CHECKOUT] [--messages 5000] [--concurrency 10]
[--rcpts 1] [--rounds 5] [--client smtp-source|pipelining]`

Each checkout's own venv runs `python -m bench.bench_smtp_edge --serve PORT --variant "coalesced push"`
(the current RelaySMTP) in that checkout; the load is the same client bench_smtp_edge drives. Prints
the server's user and system CPU per session (median of the rounds) and after ÷ before. AFTER
defaults to this checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from bench.bench_smtp_edge import VARIANTS, pipelining_load
from bench.throughput import MESSAGE, REPO, SMTP_SOURCE, TICKS, free_port, start_process, wait_banner


def _ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]), int(fields[12])


def run_once(checkout: Path, messages: int, concurrency: int, rcpts: int, client: str) -> tuple[float, float]:
    """(user, system) CPU µs per session of the server run from `checkout`."""
    port = free_port()
    python = checkout / ".venv" / "bin" / "python"
    with ExitStack() as stack:
        proc = start_process(
            [str(python), "-m", "bench.bench_smtp_edge", "--serve", str(port), "--variant", VARIANTS[1]], stack, cwd=checkout
        )
        wait_banner(port, 30, alive=lambda: proc.poll() is None)
        user0, sys0 = _ticks(proc.pid)
        if client == "pipelining":
            asyncio.run(pipelining_load(port, messages, concurrency, rcpts))
        else:
            subprocess.run(
                [SMTP_SOURCE, "-s", str(concurrency), "-m", str(messages), "-r", str(rcpts), "-f", "news@shop.example",
                 "-t", "rcpt@example.net", "-F", str(MESSAGE), f"127.0.0.1:{port}"],
                check=True, timeout=600,
            )
        time.sleep(0.2)
        user1, sys1 = _ticks(proc.pid)
    return (user1 - user0) / TICKS / messages * 1e6, (sys1 - sys0) / TICKS / messages * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_smtp_edge")
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=REPO)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rcpts", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client", choices=("smtp-source", "pipelining"), default="smtp-source")
    args = parser.parse_args(argv)
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    cpu: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, checkout in sides.items():
            cpu[side].append(run_once(checkout, args.messages, args.concurrency, args.rcpts, args.client))
    total = {side: statistics.median(u + s for u, s in runs) for side, runs in cpu.items()}
    print(f"{args.messages} sessions x {args.rounds} rounds, client {args.client}, {args.concurrency} at once, {args.rcpts} rcpt(s), uvloop")
    print("| server | user µs/session | system µs/session | total µs/session (median) | rounds (total) | vs before |")
    print("|---|---:|---:|---:|---|---:|")
    for side, checkout in sides.items():
        runs = cpu[side]
        user = statistics.median(u for u, _ in runs)
        system = statistics.median(s for _, s in runs)
        each = ", ".join(f"{u + s:.0f}" for u, s in runs)
        print(f"| {side} ({checkout}) | {user:.0f} | {system:.0f} | {total[side]:.0f} | {each} | {total[side] / total['before']:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
