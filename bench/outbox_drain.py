"""The outbox drain alone: N queued copies in a SQLite store, drained by the real OutboxWorker and
Upstream in --workers processes (as `[smtp] workers`) to bench/drain.py's sink, with no SMTP load.
Prints one JSON line: the wall time to the last copy at the sink, the workers' CPU seconds (every
thread) and bytes written per copy, and the copies counted at the sink (lost / twice).

    python bench/outbox_drain.py --copies 20000                   # this checkout's relay
    /work/wt/base/.venv/bin/python /work/wt/drain18/bench/outbox_drain.py   # another checkout's

Run as a file, not with -m: `relay` and `bench.drain` then come from the interpreter's own
checkout (its editable install), so one script times two trees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.drain import MESSAGE, Sink
from relay.config import OutboxConfig, StoreConfig, UpstreamConfig
from relay.delivery.outbox import OutboxWorker
from relay.delivery.upstream import Upstream
from relay.log import configure_logging
from relay.metrics import Metrics
from relay.services import Clock
from relay.store import open_store_for
from relay.store.records import OutboxItem


def _io() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {k: int(fields[k]) for k in ("wchar", "write_bytes", "syscw")}


def content(i: int, size: int) -> bytes:
    body = MESSAGE.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = f"Return-Path: <news@shop.example>\r\nX-Bench: o{i}\r\nDKIM-Signature: v=1; a=rsa-sha256; d=shop.example; s=s1; b={'A' * 344}\r\n".encode()
    out = head + body
    return out + b"X" * max(0, size - len(out)) + b"\r\n"


def _worker(
    db: str, port: int, pool: int, go: Any, done: Any, results: Any, live_writes: float = 0.0, secure_delete: str = ""
) -> None:
    configure_logging("warning")  # as bench/drain.py's relay: no line a delivered copy

    async def main() -> None:
        store = open_store_for(StoreConfig(url=f"sqlite:///{db}"))
        await store.open()
        up = Upstream(UpstreamConfig(host="127.0.0.1", port=port, starttls="off", timeout=30, pool_size=pool), local_hostname="bench")
        w = OutboxWorker(store.outbox, up, OutboxConfig(), Metrics(), Clock())
        commits = [0]
        writer = getattr(store, "db", None) and getattr(store.db, "_writer", None)
        if writer is not None and secure_delete:  # an experiment: the relay sets no secure_delete (the build's default)
            await writer.execute(f"PRAGMA secure_delete={secure_delete}")
        if writer is not None:  # SQLite: the COMMITs of the writer connection
            await writer.set_trace_callback(lambda sql: commits.__setitem__(0, commits[0] + (sql == "COMMIT")))
        go.wait()
        cpu0, io0, t0 = resource.getrusage(resource.RUSAGE_SELF), _io(), time.monotonic()
        running = asyncio.create_task(w.run())
        live = asyncio.create_task(_live(store, live_writes)) if live_writes else None
        while not done.is_set():
            await asyncio.sleep(0.05)
        if live is not None:
            live.cancel()
        cpu1, io1 = resource.getrusage(resource.RUSAGE_SELF), _io()
        await w.stop(5)
        await up.close()
        await store.close()
        results.put({
            "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
            **{k: io1[k] - io0[k] for k in io0}, "wall_s": time.monotonic() - t0, "commits": commits[0],
        })
        running.cancel()

    asyncio.run(main())


async def _live(store: Any, rate: float) -> None:
    """The live path's writes meanwhile: a message's decision and delivery records, `rate` a second,
    each on its own task (as concurrent sessions)."""
    from datetime import datetime, timezone

    from relay.store.records import DecisionRecord, DeliveryRecord

    n, t0, tasks = 0, time.monotonic(), set()
    while True:
        due = int((time.monotonic() - t0) * rate)
        while n < due:
            n += 1
            now = datetime.now(timezone.utc)
            rid = f"live{os.getpid()}-{n}"
            task = asyncio.create_task(store.decisions.record(
                [DecisionRecord(rid, "delivered", now, f"<{rid}@x>", "shop", "news", "o@shop", (f"l{n}@x.nl",))],
                [DeliveryRecord(n, rid, "shop", "news", f"l{n}@x.nl", "delivered", now, f"<{rid}@x>")],
            ))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.005)


def run(copies: int, workers: int, pool: int, size: int, live_writes: float = 0.0, secure_delete: str = "") -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="outbox-drain-"))
    db = str(work / "relay.db")

    async def fill() -> None:
        store = open_store_for(StoreConfig(url=f"sqlite:///{db}"))
        await store.open()
        now = time.time() - 10
        for start in range(0, copies, 1000):
            await store.outbox.enqueue(
                [OutboxItem(f"r{i}", "shop", "marketing", "news@shop.example", (f"u{i}@example.net",), content(i, size))
                 for i in range(start, min(copies, start + 1000))],
                now=now,
            )
        await store.close()

    asyncio.run(fill())
    sink = Sink()
    ctx = multiprocessing.get_context("fork")
    go, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db, sink.port, pool, go, done, results, live_writes, secure_delete)) for _ in range(workers)]
    try:
        for p in procs:
            p.start()
        time.sleep(1.0)  # the workers' stores open
        t0 = time.monotonic()
        go.set()
        while sum(sink.call("stats")["copies"].values()) < copies and time.monotonic() - t0 < 600:
            time.sleep(0.02)
        wall = time.monotonic() - t0
        done.set()
        per = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        counts = sink.call("counts")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        sink.stop()
    cpu = sum(r["cpu_s"] for r in per)
    return {
        "copies": copies, "workers": workers, "pool_size": pool, "copy_bytes": len(content(0, size)),
        "copies_s": round(copies / wall, 1), "wall_s": round(wall, 2),
        "cpu_ms_per_copy": round(1000 * cpu / copies, 3),
        "written_bytes_per_copy": round(sum(r["write_bytes"] for r in per) / copies),
        "wchar_per_copy": round(sum(r["wchar"] for r in per) / copies),
        "write_calls_per_copy": round(sum(r["syscw"] for r in per) / copies, 2),
        "commits_per_copy": round(sum(r["commits"] for r in per) / copies, 4), "live_writes_s": live_writes * workers,
        "secure_delete": secure_delete or "build default",
        "at_sink": sum(counts.values()), "twice": sum(n - 1 for n in counts.values() if n > 1),
        "relay": str(Path(sys.modules["relay"].__file__ or "").parent.parent),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--live-writes", type=float, default=0, help="messages' records a second, each worker, written meanwhile (the live path's writes)")
    parser.add_argument("--secure-delete", default="", choices=("", "on", "off", "fast"),
                        help="PRAGMA secure_delete on the workers' writer connections (default: the SQLite build's)")
    parser.add_argument("--size", type=int, default=6000, help="bytes a copy (default 6000: a signed, personalised copy of bench/message.eml)")
    args = parser.parse_args()
    print(json.dumps(run(args.copies, args.workers, args.pool_size, args.size, args.live_writes, args.secure_delete)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
