"""A clamd client speaking its INSTREAM protocol (unix socket or TCP), with a deadline."""

from __future__ import annotations

import asyncio
import struct

from relay.errors import ScannerUnavailable

_CHUNK = 1 << 16


class Clamd:
    def __init__(self, address: str, timeout: float = 30.0) -> None:
        kind, _, where = address.partition(":")
        if kind not in ("unix", "tcp") or not where:
            raise ValueError(f"clamd address must be unix:/path or tcp:host:port, got {address!r}")
        self.kind = kind
        self.where = where
        self.timeout = timeout

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.kind == "unix":
            return await asyncio.open_unix_connection(self.where)
        host, _, port = self.where.rpartition(":")
        return await asyncio.open_connection(host.strip("[]"), int(port))

    async def scan(self, data: bytes) -> str:
        """The signature name when clamd finds something, "" when clean. Raises ScannerUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                try:
                    writer.write(b"zINSTREAM\0")
                    view = memoryview(data)
                    for start in range(0, len(view), _CHUNK):
                        chunk = view[start : start + _CHUNK]
                        writer.write(struct.pack("!I", len(chunk)))
                        writer.write(chunk)
                        await writer.drain()
                    writer.write(struct.pack("!I", 0))
                    await writer.drain()
                    reply = (await reader.readuntil(b"\0")).rstrip(b"\0").decode("utf-8", "replace")
                finally:
                    writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            raise ScannerUnavailable(f"clamd at {self.kind}:{self.where} unavailable: {exc or type(exc).__name__}") from exc
        # "stream: OK" | "stream: Eicar-Signature FOUND" | "INSTREAM size limit exceeded. ERROR"
        if reply.endswith(" FOUND"):
            return reply.removeprefix("stream: ").removesuffix(" FOUND").strip() or "unknown"
        if reply.endswith(" OK"):
            return ""
        raise ScannerUnavailable(f"clamd answered {reply[:200]!r}")

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                try:
                    writer.write(b"zPING\0")
                    await writer.drain()
                    reply = await reader.readuntil(b"\0")
                finally:
                    writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise ScannerUnavailable(f"clamd unavailable: {exc or type(exc).__name__}") from exc
        if not reply.startswith(b"PONG"):
            raise ScannerUnavailable(f"clamd answered {reply[:100]!r}")
