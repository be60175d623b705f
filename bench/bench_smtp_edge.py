"""CPU per SMTP session of the receiving edge alone: relay.smtp.server.RelaySMTP with a handler that
takes every message (no policy, no upstream), driven by Postfix's smtp-source (a new connection per
message, EHLO, MAIL, RCPT, DATA, QUIT), against the same class with aiosmtpd's own push (one write and
one drain per reply line, as before issue 20).

`python -m bench.bench_smtp_edge [--messages 5000] [--concurrency 10] [--rcpts 1] [--rounds 3]
[--client smtp-source|pipelining]` prints the server process's CPU time per session (median of the
rounds, the variants alternating) and the ratio against the variant before. smtp-source says HELO
and never pipelines; `--client pipelining` is an ESMTP client that does (EHLO, then MAIL, the RCPTs
and DATA in one write, the message, QUIT), as relay.delivery.smtp_client and most bulk senders do.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP

from bench.throughput import MESSAGE, SMTP_SOURCE, cpu_ticks, free_port, start_process, wait_banner, TICKS
from relay import replies
from relay.smtp.server import ConnectionLimits, RelaySMTP

VARIANTS = ("aiosmtpd push (before)", "coalesced push")


class Accept:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # the relay's EHLO: PIPELINING and ENHANCEDSTATUSCODES offered
        return [*responses[:-1], *replies.EHLO_EXTENSIONS, responses[-1]]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: queued"


class PushPerLine(RelaySMTP):
    """RelaySMTP's push as it was: the enhanced code added, then aiosmtpd's write + drain per line."""

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = replies.with_enhanced_code(status)
        await SMTP.push(self, status)

    def _send(self, status: Any) -> bool:
        """The session's own replies (RelaySMTP calls _send for them, and drains when it says so):
        SMTP.push's write, and True for its drain."""
        if isinstance(status, str):
            status = replies.with_enhanced_code(status).encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self._writer.write(status + b"\r\n")
        aiosmtpd.smtp.log.debug("%r << %r", self.session.peer, status)
        return True


async def serve(port: int, variant: str) -> None:
    loop = asyncio.get_running_loop()
    limits = ConnectionLimits(10_000, 10_000)
    kind = PushPerLine if variant == VARIANTS[0] else RelaySMTP
    handler = Accept()
    server = await loop.create_server(
        lambda: kind(handler, limits=limits, hostname="edge.bench", ident="bench", data_size_limit=10 << 20, loop=loop),
        "127.0.0.1", port, backlog=1024,
    )
    async with server:
        await server.serve_forever()


async def pipelining_load(port: int, messages: int, concurrency: int, rcpts: int) -> None:
    from relay.delivery import smtp_client

    content = smtp_client.dot_stuffed(MESSAGE.read_bytes())
    group = b"MAIL FROM:<news@shop.example>\r\n" + b"".join(b"RCPT TO:<%d@example.net>\r\n" % i for i in range(rcpts)) + b"DATA\r\n"
    left = messages

    async def sessions() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            conn = await smtp_client.connect("127.0.0.1", port, timeout=30, local_hostname="load.bench", starttls=False, tls_context=None)
            assert conn.pipelining
            conn.write(group)
            got = [await conn.reply() for _ in range(rcpts + 2)]
            assert got[-1].code == 354, got
            conn.write(content)
            assert (await conn.reply()).code == 250
            await conn.quit()

    await asyncio.gather(*(sessions() for _ in range(concurrency)))


def run_once(variant: str, messages: int, concurrency: int, rcpts: int, client: str = "smtp-source") -> float:
    port = free_port()
    with ExitStack() as stack:
        proc = start_process([sys.executable, "-m", "bench.bench_smtp_edge", "--serve", str(port), "--variant", variant], stack)
        wait_banner(port, 30, alive=lambda: proc.poll() is None)
        before = cpu_ticks([proc.pid])
        if client == "pipelining":
            asyncio.run(pipelining_load(port, messages, concurrency, rcpts))
        else:
            subprocess.run(
                [SMTP_SOURCE, "-s", str(concurrency), "-m", str(messages), "-r", str(rcpts), "-f", "news@shop.example",
                 "-t", "rcpt@example.net", "-F", str(MESSAGE), f"127.0.0.1:{port}"],
                check=True, timeout=600,
            )
        time.sleep(0.2)
        used = (cpu_ticks([proc.pid]) - before) / TICKS
    return used / messages * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_smtp_edge")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rcpts", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=("smtp-source", "pipelining"), default="smtp-source")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve, args.variant))
        return 0
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            cpu[variant].append(run_once(variant, args.messages, args.concurrency, args.rcpts, args.client))
    base = statistics.median(cpu[VARIANTS[0]])
    print(f"{args.messages} sessions x {args.rounds} rounds, client {args.client}, {args.concurrency} at once, {args.rcpts} rcpt(s), uvloop")
    print("| server | CPU µs/session (median) | rounds | vs before |")
    print("|---|---:|---|---:|")
    for variant in VARIANTS:
        c = statistics.median(cpu[variant])
        print(f"| {variant} | {c:.0f} | {', '.join(f'{x:.0f}' for x in cpu[variant])} | {c / base:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
