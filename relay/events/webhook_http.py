"""The HTTP/1.1 client of the webhook sender: POSTs to one endpoint over a few kept-alive connections.

Webhooks ask little of HTTP (one POST, the status code, no redirects, cookies or proxies), and the
sender runs on the event loop of the mail path: aiohttp's general client spent about 240 µs of CPU
per POST there, this one about 80 (docs/benchmarks.md, webhooks). A connection is used by one request
at a time; one the server closed while idle is found out by the next request, which then goes once
more on a fresh connection (the server never saw the first try).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import quote, urlsplit

_MAX_HEAD = 64 * 1024  # status line and headers of an answer
_MAX_BODY = 64 * 1024  # a longer answer is not read: the connection is closed instead


class HttpError(Exception):
    """The endpoint answered something that is not HTTP/1.x."""


class _Stale(Exception):
    """A kept-alive connection closed before any byte of the answer."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, request: bytes, reused: bool) -> tuple[int, bool]:
        """Sends the request, reads the answer; (status, whether the connection can be used again)."""
        try:
            self.writer.write(request)
            await self.writer.drain()
            head = await self._head()
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            if reused and not getattr(exc, "partial", b""):
                raise _Stale from exc
            raise
        status, headers, version = _parse_head(head)
        while 100 <= status < 200:  # an interim answer; the final one follows
            status, headers, version = _parse_head(await self._head())
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if status in (204, 304):
            return status, keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, keep and await self._chunks()
        length = headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > _MAX_BODY:
            return status, False  # delimited by closing, or too long to bother: not reused
        await self.reader.readexactly(int(length))
        return status, keep

    async def _head(self) -> bytes:
        try:
            return await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpError("answer headers too long") from exc

    async def _chunks(self) -> bool:
        """Reads a chunked body; False when it is too long to read (the connection is dropped)."""
        total = 0
        while True:
            line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise HttpError("bad chunk size") from exc
            total += size
            if total > _MAX_BODY:
                return False
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return True
            await self.reader.readexactly(size + 2)


def _parse_head(head: bytes) -> tuple[int, dict[str, str], str]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(code), headers, version


class EndpointClient:
    """POSTs to one URL; keeps the connections it opened for the next POSTs."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        # As a browser would send it: what the URL spells with a space or non-ASCII gets %-escaped.
        self.path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~-._") + (
            f"?{quote(parts.query, safe='/?%:@!$&()*+,;=~-._')}" if parts.query else ""
        )
        authority = parts.netloc.rpartition("@")[2]
        self.prefix = f"POST {self.path} HTTP/1.1\r\nhost: {authority}\r\n"
        self.ssl_context = (ssl_context or ssl.create_default_context()) if self.tls else None
        self._idle: list[_Connection] = []

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        """The answer's status code. Raises OSError, HttpError, ssl.SSLError or asyncio.IncompleteReadError;
        the caller bounds the time (asyncio.timeout): a connection interrupted mid-request is closed."""
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = f"{self.prefix}{lines}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                status, keep = await conn.exchange(request, reused)
            except _Stale:
                conn.close()
                continue  # the server closed it while idle: once more, on a fresh connection
            except BaseException:
                conn.close()
                raise
            if keep:
                self._idle.append(conn)
            else:
                conn.close()
            return status

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl_context, server_hostname=self.host if self.tls else None,
            limit=_MAX_HEAD,
        )
        return _Connection(reader, writer)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
