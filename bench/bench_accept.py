"""What the balanced accept (relay.process.balance.BalancedServer) costs a connection against
uvloop's own `create_server`: client and server in one process on uvloop, a protocol that greets
and closes, CPU per connection (both sides), the two alternating.

    .venv/bin/python -m bench.bench_accept                  # 3,000 connections, 6 rounds each
    .venv/bin/python -m bench.bench_accept --connections 5000 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from typing import Sequence

import uvloop

from relay.process.balance import Balance, BalancedServer, LoadBoard


class Greet(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"220 bench\r\n")  # type: ignore[attr-defined]  # uvloop's TCPTransport
        transport.close()


async def _clients(port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        while await loop.sock_recv(sock, 100):
            pass
        sock.close()


async def _round(kind: str, connections: int) -> float:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    board = LoadBoard.create(2)
    server: asyncio.AbstractServer | BalancedServer
    if kind == "native":
        server = await loop.create_server(Greet, sock=listener)
    else:
        server = BalancedServer(listener, Greet, Balance(board, 0, sessions=lambda: 0))
    try:
        await _clients(port, 300)  # warm-up
        t0 = time.process_time()
        await _clients(port, connections)
        return (time.process_time() - t0) / connections * 1e6
    finally:
        server.close()
        board.close()
        listener.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_accept", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {"native": [], "balanced": []}
    for _ in range(args.rounds):
        for kind in results:
            results[kind].append(uvloop.run(_round(kind, args.connections)))
    native, balanced = (statistics.median(results[k]) for k in ("native", "balanced"))
    print(f"CPU per connection, client and server, median of {args.rounds}: create_server {native:.1f} us, "
          f"balanced {balanced:.1f} us (+{balanced - native:.1f} us, {balanced / native:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
