"""Soak: mail at a steady rate through `consent-relay serve` while the upstream goes away and comes
back; the relay's RSS (parent, workers and helpers together) sampled every second, every copy
counted at the sink. Messages answered 4xx are retried by the sender, as an MTA would.

    python -m bench.soak_outbox                       # the full run: 30 min, upstream away 5 min twice
    python -m bench.soak_outbox --duration 240 --outages 40:60,140:60 --rate 20

Writes OUT/soak.csv and the plot (docs/soak-outbox-rss.png by default); prints a summary line.
Exits 1 when a promised copy is lost, when a copy arrives twice without the relay having reported
it uncertain, or when the median RSS after a recovery (retries done, sink caught up, then --settle
seconds) is more than --max-growth above the baseline (issue 21: memory must come back).
Needs the bench extra (`pip install -e '.[bench]'`, matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

from bench.relay_config import uncertain_copies, write_relay_config

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """The upstream: counts every recipient of every message it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.counts.update(envelope.rcpt_tos)
        return "250 2.0.0 Ok"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def tree_rss_kib(pid: int) -> int:
    """VmRSS of `pid` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def body(i: int) -> bytes:
    text = (
        f"From: Shop <news@shop.example>\r\nTo: <a{i}@example.nl>\r\nSubject: Order {i}\r\n"
        f"Date: Sun, 15 Mar 2026 12:00:00 +0000\r\nMessage-ID: <soak{i}@shop.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + "Thank you for your order. It ships tomorrow.\r\n" * 40
        + "\r\nShop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678\r\n"
    )
    return text.encode()


@dataclass
class Sender:
    port: int
    timeout: float
    promised: Counter[str] = field(default_factory=Counter)
    tempfailed: int = 0
    retry: list[int] = field(default_factory=list)

    async def one(self, i: int) -> None:
        rcpts = [f"a{i}@example.nl", f"b{i}@example.nl"]
        try:
            refused, _ = await aiosmtplib.send(
                body(i), sender="news@shop.example", recipients=rcpts, hostname="127.0.0.1", port=self.port, timeout=self.timeout
            )
        except (aiosmtplib.SMTPException, OSError):
            self.tempfailed += 1
            self.retry.append(i)  # an MTA keeps it and tries again later
            return
        self.promised.update(r for r in rcpts if r not in refused)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    sink = Sink(free_port())
    smtp, admin, public = free_port(), free_port(), free_port()
    config = write_relay_config(
        work / "relay.toml", smtp_port=smtp, upstream_port=sink.port, admin_port=admin, public_port=public,
        store_path=work / "relay.db", workers=args.workers, log_level="warning",
        overrides={
            "upstream": {"timeout": 5},
            "outbox": {"retry_initial_seconds": 5, "retry_max_seconds": 30},
            # What bounds the retry storm's memory: the sessions a process admits at once. The one
            # client address here stands for many MTAs, so the per-address limit is the same.
            "smtp": {"max_connections": args.max_connections, "max_connections_per_ip": args.max_connections},
        },
    )
    sink.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli.main", "serve", "-c", str(config)], cwd=work,
        stdout=subprocess.DEVNULL, stderr=open(work / "relay.log", "wb"),
    )
    sender = Sender(smtp, args.client_timeout)
    samples: list[tuple[float, int, int, int, int]] = []
    recovered_at: list[float | None] = [None] * len(args.outages)  # per outage: every retry answered, the sink caught up
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", smtp), 1).close()
                break
            except OSError:
                await asyncio.sleep(0.2)
        start = time.monotonic()
        outages = [(a, a + d) for a, d in args.outages]
        pending: set[asyncio.Task[None]] = set()
        i, next_sample, down = 0, 0.0, False
        while (now := time.monotonic() - start) < args.duration:
            want_down = any(a <= now < b for a, b in outages)
            if want_down and not down:
                sink.stop()
            elif down and not want_down:
                sink.start()
            down = want_down
            if now >= next_sample:
                with sink.lock:
                    at_sink = sum(sink.counts.values())
                promised = sum(sender.promised.values())
                samples.append((now, tree_rss_kib(proc.pid), promised, at_sink, len(pending)))
                next_sample += 1.0
                for k, (_, back) in enumerate(outages):
                    if now >= back and recovered_at[k] is None and not sender.retry and at_sink >= promised:
                        recovered_at[k] = now
            # The steady rate, plus the retries of tempfailed messages once the upstream answers again.
            batch = [i + k for k in range(args.rate // 10 or 1)]
            i += len(batch)
            if not down and sender.retry:
                batch += sender.retry[: args.rate]
                del sender.retry[: args.rate]
            for n in batch:
                task = asyncio.create_task(sender.one(n))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(0.1)
        if down:
            sink.start()
        while sender.retry or pending:
            batch, sender.retry = sender.retry, []
            await asyncio.gather(*(sender.one(n) for n in batch), *pending)
        drain_deadline = time.monotonic() + 120
        while time.monotonic() < drain_deadline:
            with sink.lock:
                if all(sink.counts[r] >= n for r, n in sender.promised.items()):
                    break
            await asyncio.sleep(0.5)
        end = time.monotonic() - start
        with sink.lock:
            counts = Counter(sink.counts)
        samples.append((end, tree_rss_kib(proc.pid), sum(sender.promised.values()), sum(counts.values()), 0))
    finally:
        proc.terminate()
        proc.wait(60)
        sink.stop()
    lost = sum(1 for r in sender.promised if counts[r] == 0)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    # Copies the relay itself reported as maybe delivered (the sink went away after the message and
    # before its answer): a second copy of those is announced, not silent.
    uncertain = uncertain_copies(work / "relay.log")
    base = [rss for t, rss, *_ in samples if 10 <= t < 10 + args.baseline] or [samples[0][1]]
    # After each recovery: the steady rate again, the retries done and the sink caught up, plus
    # `settle` seconds (one malloc_trim period), up to the next outage or the end of the run.
    windows, afters = [], []
    for k, rec in enumerate(recovered_at):
        until = outages[k + 1][0] if k + 1 < len(outages) else args.duration
        start_at = (rec if rec is not None else until) + args.settle
        window = [rss for t, rss, *_ in samples[:-1] if start_at <= t < until]
        windows.append([round(start_at), round(until)])
        afters.append(_median(window) if window else None)
    rss_base = _median(base)
    rss_after = afters[-1] if afters and afters[-1] is not None else samples[-1][1]
    after_from, after_to = windows[-1] if windows else (args.duration, args.duration)
    summary = {
        "duration_s": args.duration, "rate_per_s": args.rate, "workers": args.workers, "outages": args.outages,
        "promised_copies": sum(sender.promised.values()), "copies_at_sink": sum(counts.values()),
        "lost": lost, "duplicated": duplicated, "reported_uncertain": uncertain,
        "silent_duplicates": max(0, duplicated - uncertain), "tempfailed_answers": sender.tempfailed,
        "rss_baseline_mib": round(rss_base / 1024, 1),
        "rss_peak_mib": round(max(s[1] for s in samples) / 1024, 1),
        "recovered_at_s": [round(r) if r is not None else None for r in recovered_at],
        "rss_after_each_recovery_mib": [round(a / 1024, 1) if a is not None else None for a in afters],
        "rss_after_recovery_mib": round(rss_after / 1024, 1),
        "rss_after_recovery_window_s": [after_from, after_to],
        "rss_end_mib": round(samples[-1][1] / 1024, 1),
        "peak_client_sessions": max(s[4] for s in samples),
        "max_growth": args.max_growth,
        "rss_back_at_baseline": all(a is not None and a <= rss_base * (1 + args.max_growth) for a in afters + [rss_after]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "soak.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seconds", "rss_kib", "promised_copies", "copies_at_sink", "client_sessions"])
        writer.writerows(samples)
    try:
        plot(samples, outages, summary, Path(args.plot))
    except ImportError:  # matplotlib is not a dependency: the CSV holds the same samples
        print(f"# no plot (matplotlib is not installed; `.venv/bin/pip install matplotlib`): {out / 'soak.csv'}", file=sys.stderr)
    return summary


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]


def plot(samples: list[tuple[float, int, int, int, int]], outages: list[tuple[float, float]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] / 60 for s in samples]
    fig, (ax, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True, height_ratios=[2, 1, 1])
    ax.plot(t, [s[1] / 1024 for s in samples], color="tab:blue", label="RSS of the relay (all processes)")
    ax.axhline(summary["rss_baseline_mib"], color="gray", linestyle=":", label=f"baseline {summary['rss_baseline_mib']} MiB")
    after_from, after_to = summary["rss_after_recovery_window_s"]
    ax.hlines(
        summary["rss_after_recovery_mib"], after_from / 60, after_to / 60, color="tab:orange", linewidth=3,
        label=f"after recovery {summary['rss_after_recovery_mib']} MiB (median)",
    )
    for a, b in outages:
        for axis in (ax, ax2, ax3):
            axis.axvspan(a / 60, b / 60, color="tab:red", alpha=0.12, label="upstream away" if axis is ax and a == outages[0][0] else None)
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(
        f"consent-relay soak: {summary['rate_per_s']} msg/s, workers = {summary['workers']}; "
        f"{summary['promised_copies']} copies promised, {summary['lost']} lost, {summary['duplicated']} duplicated "
        f"({summary['reported_uncertain']} reported uncertain)",
        fontsize="medium",
    )
    ax2.plot(t, [s[2] for s in samples], label="copies promised (250)", color="tab:green")
    ax2.plot(t, [s[3] for s in samples], label="copies at the sink", color="black", linestyle="--")
    ax2.legend(loc="upper left", fontsize="small")
    ax3.plot(t, [s[4] for s in samples], color="tab:purple", label="client sessions in flight (sender side)")
    ax3.set_xlabel("minutes")
    ax3.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def _outages(text: str) -> list[tuple[float, float]]:
    pairs = []
    for part in text.split(","):
        if part.strip():
            at, _, length = part.partition(":")
            pairs.append((float(at), float(length)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_outbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800, help="seconds of mail (default 1800)")
    parser.add_argument("--rate", type=int, default=20, help="new messages per second (default 20)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--client-timeout", type=float, default=600,
        help="the sender's timeout per SMTP step (default 600: RFC 5321 4.5.3.2.6, the wait for the reply to the end of DATA)",
    )
    parser.add_argument("--outages", type=_outages, default=_outages("300:300,1200:300"), help="START:LENGTH,… in seconds (default 300:300,1200:300)")
    parser.add_argument("--baseline", type=float, default=60, help="seconds after the first 10 whose median RSS is the baseline")
    parser.add_argument("--settle", type=float, default=30, help="seconds after recovery before the after-recovery window (default 30)")
    parser.add_argument(
        "--max-growth", type=float, default=0.10,
        help="fail when the median RSS after recovery exceeds the baseline by more than this share (default 0.10)",
    )
    parser.add_argument(
        "--max-connections", type=int, default=1000,
        help="[smtp] max_connections and max_connections_per_ip of the relay (default 1000, the relay's default total)",
    )
    parser.add_argument("--out", default=str(REPO / "var" / "bench" / "soak"))
    parser.add_argument("--plot", default=str(REPO / "docs" / "soak-outbox-rss.png"))
    args = parser.parse_args(argv)
    summary = asyncio.run(soak(args))
    print(json.dumps(summary))
    ok = summary["lost"] == 0 and summary["silent_duplicates"] == 0 and summary["rss_back_at_baseline"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
