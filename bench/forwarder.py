"""The baseline: a bare aiosmtpd server that forwards each message with aiosmtplib, nothing else.

Run as its own process: `python -m bench.forwarder --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session


class ForwardHandler:
    """Forwards over a new upstream connection per message: the simplest correct relay."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            await aiosmtplib.send(
                envelope.original_content or envelope.content or b"",
                sender=envelope.mail_from,
                recipients=envelope.rcpt_tos,
                hostname=self.host,
                port=self.port,
                start_tls=False,
                # Without it aiosmtplib runs getfqdn() in a thread for every connection.
                local_hostname="forwarder.bench",
                timeout=30,
            )
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"451 4.4.1 upstream unavailable: {type(exc).__name__}"
        return "250 2.0.0 OK"


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    handler = ForwardHandler(*upstream)
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        # A fixed hostname: aiosmtpd would otherwise call getfqdn() for every connection.
        return SMTP(handler, hostname="forwarder.bench", ident="bench-forwarder")

    server = await loop.create_server(factory, host=listen[0], port=listen[1], backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {listen[0]}:{listen[1]}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarder")
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of the stdlib event loop")
    args = parser.parse_args(argv)
    coroutine = serve(_hostport(args.listen), _hostport(args.upstream))
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coroutine)
    else:
        asyncio.run(coroutine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
