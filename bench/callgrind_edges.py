"""Instructions per SMTP session of the receiving edge and per upstream transaction of the sending
edge, counted by valgrind (callgrind, user space only): figures the other jobs on a shared machine
do not move, for changes too small for the CPU-time benches to resolve.

`python -m bench.callgrind_edges BEFORE_CHECKOUT [AFTER_CHECKOUT] [--sessions 1000] [--transactions 2000]`

Each checkout's own venv runs, under valgrind, (a) RelaySMTP from `RelaySMTP.factory` (as
relay/app.py builds its listeners) with bench_smtp_edge's accept-everything handler, served to
smtp-source (HELO, one recipient, bench/message.eml, 10 at once), and (b) relay.delivery.upstream's
`Upstream.send` of bench/message.eml (CRLF line ends, as the relay sends a copy) to smtp-sink with
PIPELINING, one after another. Each runs twice, with a warm-up only and with the warm-up and N more;
the difference divided by N is the count per session or transaction. All children run at once.
The child code is this file's, run with the checkout first on sys.path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
WARMUP = 200


def _serve(count: int) -> None:
    import uvloop

    from bench.bench_smtp_edge import Accept
    from bench.throughput import MESSAGE, SMTP_SOURCE, free_port
    from relay.smtp.server import ConnectionLimits, RelaySMTP

    async def main() -> None:
        loop = asyncio.get_running_loop()
        factory = RelaySMTP.factory(
            Accept(), limits=ConnectionLimits(10_000, 10_000), hostname="edge.bench", ident="bench", data_size_limit=10 << 20, loop=loop
        )
        port = free_port()
        server = await loop.create_server(factory, "127.0.0.1", port, backlog=1024)
        for n in (WARMUP, count):
            if n:
                load = subprocess.Popen(
                    [SMTP_SOURCE, "-s", "10", "-m", str(n), "-r", "1", "-f", "news@shop.example", "-t", "rcpt@example.net",
                     "-F", str(MESSAGE), f"127.0.0.1:{port}"]
                )
                while load.poll() is None:
                    await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        server.close()

    uvloop.run(main())


def _send(count: int) -> None:
    import uvloop

    from bench.throughput import MESSAGE, Sink
    from relay.config import UpstreamConfig
    from relay.delivery.upstream import Upstream

    content = MESSAGE.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    async def main(port: int) -> None:
        upstream = Upstream(UpstreamConfig(host="127.0.0.1", port=port, starttls="off", timeout=30, pool_size=1), local_hostname="relay.bench")
        for _ in range(WARMUP + count):
            result = await upstream.send("news@shop.example", ["rcpt@example.net"], content)
            assert result.accepted == ("rcpt@example.net",)
        await upstream.close()

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="callgrind-edges-", dir="/dev/shm") as tmp:
        Path(tmp).chmod(0o755)  # smtp-sink runs as postfix and writes its dump below
        sink = Sink(Path(tmp) / "sink", stack)
        uvloop.run(main(sink.port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind_edges")
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=REPO)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--child", choices=("serve", "send"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        (_serve if args.child == "serve" else _send)(args.count)
        return 0
    from bench import callgrind_counts  # the parent only: see bench/callgrind_counts.py

    checkouts = [args.before.resolve(), args.after.resolve()]
    measures = {"serve": args.sessions, "send": args.transactions}
    runs = {}
    for checkout in checkouts:
        for child, count in measures.items():
            for n in (0, count):
                argv_ = [*callgrind_counts.VALGRIND, str(checkout / ".venv" / "bin" / "python"),
                         str(HERE), str(checkout), "--child", child, "--count", str(n)]
                runs[checkout, child, n] = subprocess.Popen(
                    argv_, cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )
    collected = callgrind_counts.collected(runs)
    if collected is None:
        return 1
    print(f"| what | {checkouts[0]} | {checkouts[1]} | after ÷ before |\n|---|---:|---:|---:|")
    for child, count in measures.items():
        per = [(collected[c, child, count] - collected[c, child, 0]) / count for c in checkouts]
        name = "instructions per session (RelaySMTP, smtp-source, HELO, r=1)" if child == "serve" else "instructions per upstream transaction (PIPELINING, r=1)"
        print(f"| {name} | {per[0]:,.0f} | {per[1]:,.0f} | {per[1] / per[0]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
