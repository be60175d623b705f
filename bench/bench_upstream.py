"""CPU per upstream transaction: aiosmtplib (as relay/delivery/upstream.py used it before issue 20)
against relay.delivery.smtp_client through the relay's Upstream, with and without PIPELINING.

`python -m bench.bench_upstream [--count 3000] [--rounds 3] [--rcpts 1]` sends `count` transactions of
bench/message.eml over one pooled connection to Postfix's smtp-sink (which offers PIPELINING; `-p`
for the run without it), one after another, and prints this process's CPU time per transaction
(user+system, median of the rounds, the clients alternating within each round) and the ratio
against aiosmtplib in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from bench.throughput import MESSAGE, Sink
from relay.config import UpstreamConfig
from relay.delivery.upstream import Upstream

SENDER = "news@shop.example"



def _sink(workdir: Path, stack: ExitStack, pipelining: bool) -> Sink:
    if pipelining:
        return Sink(workdir, stack)
    import bench.throughput as throughput

    real = throughput.start_process

    def without_pipelining(argv, stack, **kw):  # type: ignore[no-untyped-def]
        return real([argv[0], "-p", *argv[1:]], stack, **kw)

    throughput.start_process = without_pipelining  # type: ignore[assignment]
    try:
        return Sink(workdir, stack)
    finally:
        throughput.start_process = real  # type: ignore[assignment]


Send = Callable[[list[str], bytes], Awaitable[None]]


async def aiosmtplib_client(port: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """The sequence main's Upstream._transaction ran: MAIL, each RCPT, DATA, the message, one at a time."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False, local_hostname="relay.bench")
    await client.connect()

    async def send(rcpts: list[str], content: bytes) -> None:
        await client.mail(SENDER, options=[], encoding="ascii")
        for r in rcpts:
            await client.rcpt(r, encoding="ascii")
        start = await client.execute_command(b"DATA")
        assert start.code == 354
        assert client.protocol is not None
        client.protocol.write(PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content)) + b".\r\n")
        response = await client.protocol.read_response(timeout=30)
        assert response.code == 250, response

    async def close() -> None:
        await client.quit()

    return send, close


async def relay_client(port: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    upstream = Upstream(UpstreamConfig(host="127.0.0.1", port=port, starttls="off", timeout=30, pool_size=1), local_hostname="relay.bench")

    async def send(rcpts: list[str], content: bytes) -> None:
        result = await upstream.send(SENDER, rcpts, content)
        assert len(result.accepted) == len(rcpts)

    return send, upstream.close


async def cpu_per_transaction(make: Callable[[int], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]], port: int, count: int, rcpts: list[str], content: bytes) -> tuple[float, float]:
    send, close = await make(port)
    for _ in range(50):  # warm-up: connection made, code paths hot
        await send(rcpts, content)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(count):
        await send(rcpts, content)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await close()
    return cpu / count * 1e6, wall / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_upstream")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rcpts", type=int, default=1)
    args = parser.parse_args(argv)
    content = MESSAGE.read_bytes()
    rcpts = [f"rcpt{i}@example.net" for i in range(args.rcpts)]
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-upstream-", dir="/dev/shm") as tmp:
        Path(tmp).chmod(0o755)  # smtp-sink runs as postfix and writes its dump below
        sinks = {True: _sink(Path(tmp) / "pipelining", stack, True), False: _sink(Path(tmp) / "plain", stack, False)}
        cases = {
            "aiosmtplib (before)": (aiosmtplib_client, sinks[True]),
            "smtp_client, PIPELINING": (relay_client, sinks[True]),
            "smtp_client, no PIPELINING": (relay_client, sinks[False]),
        }
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        wall: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (make, sink) in cases.items():
                c, w = asyncio.run(cpu_per_transaction(make, sink.port, args.count, rcpts, content))
                cpu[name].append(c)
                wall[name].append(w)
    base = statistics.median(cpu["aiosmtplib (before)"])
    print(f"{args.count} transactions x {args.rounds} rounds, {args.rcpts} recipient(s), {len(content)} bytes, smtp-sink on 127.0.0.1")
    print(f"| client | CPU µs/transaction (median) | wall µs/transaction | CPU vs aiosmtplib |")
    print("|---|---:|---:|---:|")
    for name in cases:
        c = statistics.median(cpu[name])
        print(f"| {name} | {c:.0f} | {statistics.median(wall[name]):.0f} | {c / base:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
