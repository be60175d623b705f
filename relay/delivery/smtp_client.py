"""The upstream's SMTP client: one connection on an asyncio protocol, RFC 2920 PIPELINING when the
upstream offers it, STARTTLS and AUTH. It replaces aiosmtplib on the hot path (issue 20): aiosmtplib
writes and awaits one command at a time and cannot read pipelined replies (its protocol parses one
reply per read and drops data that arrives while no command is pending), so a copy cost four writes
and four wake-ups where this client needs two (bench/bench_upstream.py measures the CPU per copy).

Errors: `Broken` when the connection cannot be used any more (closed, reset, timed out, garbage),
`ReplyError` for an unexpected reply while setting the connection up (`AuthFailed` for AUTH)."""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Coroutine

MAX_REPLY = 32 * 1024  # one reply, continuation lines included: a bound for a server that never stops
_FORBIDDEN = re.compile(rb"[\x00-\x1f\x7f]")  # in a command argument: CR/LF/NUL would inject commands
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
AUTH_PREFERENCE = ("CRAM-MD5", "PLAIN", "LOGIN")  # aiosmtplib's order, kept towards the same upstreams


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # continuation lines joined with "\n", codes stripped

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class ClientError(Exception):
    pass


class Broken(ClientError):
    """The connection is gone or unusable: closed, reset, timed out, or not speaking SMTP."""


class ReplyError(ClientError):
    def __init__(self, reply: Reply, stage: str) -> None:
        super().__init__(f"{reply} (at {stage})")
        self.reply = reply
        self.stage = stage


class AuthFailed(ReplyError):
    pass


class _Protocol(asyncio.Protocol):
    """Parses every complete reply in what arrives, so pipelined replies are all kept, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the current reply's lines so far
        self.replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.lost: Exception | None = None
        # The reply timer: one TimerHandle, moved only when it fires before the current wait's
        # deadline (a call_later and a cancel per wait were most of a wait's cost). _deadline None:
        # no wait in progress, and the timer stops the next time it fires.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end]).rstrip(b"\r")
            start = end + 1
            code = line[:3]
            if len(code) != 3 or not code.isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(Broken(f"not an SMTP reply: {line[:80]!r}"))
                return
            if line[3:4] == b"-":
                self._lines.append(line)
            elif not self._lines:  # a reply of one line, as nearly every reply is
                self.replies.append(Reply(int(code), line[4:].strip(b" \t").decode("utf-8", "surrogateescape")))
            else:
                lines, self._lines = self._lines, []
                lines.append(line)
                text = "\n".join(part[4:].strip(b" \t").decode("utf-8", "surrogateescape") for part in lines)
                self.replies.append(Reply(int(code), text))
        if start:
            del buf[:start]
        if len(buf) + sum(map(len, self._lines)) > MAX_REPLY:
            self._fail(Broken("reply too long"))
            return
        if self.replies:
            self._wake()

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = Broken(f"connection lost: {exc}" if exc else "the upstream closed the connection")
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    async def next_reply(self, timeout: float) -> Reply:
        while not self.replies:
            await self._wait(timeout)
        return self.replies.popleft()

    async def next_replies(self, got: list[Reply], count: int, timeout: float) -> None:
        """The next `count` replies appended to `got` as they come (those of a pipelined group),
        each wait bounded by `timeout` as next_reply's: on an error, `got` holds those that came."""
        replies = self.replies
        while count:
            while not replies:
                await self._wait(timeout)
            while replies and count:
                got.append(replies.popleft())
                count -= 1

    async def _wait(self, timeout: float) -> None:
        """Until data or the end of the connection arrives (Broken when it has ended), at most
        `timeout` seconds (Broken: timed out)."""
        if self.lost is not None:
            raise self.lost
        loop = self._loop
        deadline = self._deadline = loop.time() + timeout
        if self._timer is None or self._timer_at > deadline:
            self._arm(deadline)
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
            self._deadline = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        deadline, waiter = self._deadline, self._waiter
        if deadline is None or waiter is None or waiter.done():
            return  # no wait in progress: the timer stops until the next one
        if self._loop.time() >= deadline:
            waiter.set_exception(Broken("timed out waiting for the upstream's reply"))
        else:
            self._arm(deadline)


@dataclass
class Connection:
    """One SMTP connection, greeted (EHLO, else HELO), after STARTTLS and AUTH if asked for."""

    protocol: _Protocol
    timeout: float
    extensions: dict[str, str] = field(default_factory=dict)  # lower-case keyword -> parameters
    auth_methods: tuple[str, ...] = ()

    @property
    def is_connected(self) -> bool:
        """Open, and nothing said that no command asked for: an idle connection with an unsolicited
        reply (a 421 before the server hangs up) would pair it with the next command."""
        protocol = self.protocol
        transport = protocol.transport
        return (
            transport is not None and not transport.is_closing() and protocol.lost is None
            and not protocol.replies and not protocol._buffer and not protocol._lines
        )

    def supports(self, keyword: str) -> bool:
        return keyword.lower() in self.extensions

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    def write(self, data: bytes) -> None:
        transport = self.protocol.transport
        if transport is None or transport.is_closing():
            raise self.protocol.lost or Broken("the connection is closed")
        transport.write(data)

    # Not coroutines of their own: the protocol's, handed on, so that a wake-up resumes one frame less.
    def reply(self) -> Coroutine[Any, Any, Reply]:
        return self.protocol.next_reply(self.timeout)

    def replies(self, got: list[Reply], count: int) -> Coroutine[Any, Any, None]:
        """The replies to a pipelined group of `count` commands, appended to `got` as they come."""
        return self.protocol.next_replies(got, count, self.timeout)

    async def command(self, line: bytes) -> Reply:
        self.write(line + b"\r\n")
        return await self.reply()

    def close(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.abort()
        if self.protocol.lost is None:
            self.protocol.lost = Broken("closed by the relay")

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT")
        finally:
            self.close()

    async def greet(self, local_hostname: str) -> None:
        name = local_hostname.encode("ascii") if local_hostname.isascii() else local_hostname.encode("idna")
        reply = await self.command(b"EHLO " + name)
        if reply.code != 250:
            reply = await self.command(b"HELO " + name)
            if reply.code != 250:
                raise ReplyError(reply, "HELO")
            self.extensions, self.auth_methods = {}, ()
            return
        extensions: dict[str, str] = {}
        methods: list[str] = []
        for line in reply.text.split("\n")[1:]:
            keyword, _, params = line.strip().partition(" ")
            upper = keyword.upper()
            if upper.startswith("AUTH="):  # the pre-RFC 4954 form some servers still send
                params, upper = upper[5:] + " " + params, "AUTH"
            if upper == "AUTH":
                methods += [m for m in params.upper().split() if m not in methods]
            extensions[upper.lower()] = params.strip()
        self.extensions, self.auth_methods = extensions, tuple(methods)

    async def authenticate(self, username: str, password: str) -> None:
        if "auth" not in self.extensions:
            raise ClientError("the upstream does not offer AUTH")
        method = next((m for m in AUTH_PREFERENCE if m in self.auth_methods), None)
        if method is None:
            raise ClientError(f"no AUTH method in common with the upstream (it offers {' '.join(self.auth_methods)})")
        user, secret = username.encode("utf-8"), password.encode("utf-8")
        if method == "PLAIN":
            reply = await self.command(b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + secret))
        elif method == "LOGIN":
            reply = await self.command(b"AUTH LOGIN " + base64.b64encode(user))
            if reply.code == 334:
                reply = await self.command(base64.b64encode(secret))
        else:
            reply = await self.command(b"AUTH CRAM-MD5")
            if reply.code == 334:
                challenge = base64.b64decode(reply.text.encode("ascii"))
                digest = hmac.new(secret, challenge, "md5").hexdigest().encode("ascii")
                reply = await self.command(base64.b64encode(user + b" " + digest))
        if reply.code != 235:
            raise AuthFailed(reply, f"AUTH {method}")


async def connect(
    host: str,
    port: int,
    *,
    timeout: float,
    local_hostname: str,
    starttls: bool | None,
    tls_context: ssl.SSLContext | None,
    username: str | None = None,
    password: str | None = None,
) -> Connection:
    """Connect, read the greeting, EHLO; STARTTLS when `starttls` is True (required) or None (if
    offered), then EHLO again; AUTH when a username is given. Closes what it opened on any error."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(lambda: _Protocol(loop), host, port)
    except TimeoutError as exc:
        raise Broken(f"timed out connecting to {host}:{port}") from exc
    conn = Connection(protocol, timeout)
    try:
        greeting = await conn.reply()
        if greeting.code != 220:
            raise ReplyError(greeting, "the greeting")
        await conn.greet(local_hostname)
        if starttls is not False and conn.supports("starttls"):
            reply = await conn.command(b"STARTTLS")
            if reply.code != 220:
                raise ReplyError(reply, "STARTTLS")
            await _start_tls(conn, host, tls_context or ssl.create_default_context())
            await conn.greet(local_hostname)
        elif starttls:
            raise ClientError("the upstream does not offer STARTTLS")
        if username:
            await conn.authenticate(username, password or "")
    except BaseException:
        conn.close()
        raise
    return conn


async def _start_tls(conn: Connection, host: str, context: ssl.SSLContext) -> None:
    protocol = conn.protocol
    transport = protocol.transport
    if transport is None:
        raise protocol.lost or Broken("the connection is closed")
    protocol._buffer.clear()  # RFC 3207 4.2: nothing sent before TLS counts after it
    protocol.replies.clear()
    loop = asyncio.get_running_loop()
    try:
        tls = await loop.start_tls(transport, protocol, context, server_hostname=host, ssl_handshake_timeout=conn.timeout)
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        transport.abort()
        raise Broken(f"TLS handshake with the upstream failed: {exc}") from exc
    protocol.transport = tls  # type: ignore[assignment]


def address_command(verb: bytes, address: str, options: list[str], encoding: str) -> bytes:
    """`MAIL FROM:<a> OPTS` / `RCPT TO:<a>`; an address that would smuggle a command is refused."""
    arg = address.encode(encoding)
    if _FORBIDDEN.search(arg) or any(_FORBIDDEN.search(o.encode(encoding)) for o in options):
        raise ValueError("command argument contains a control character")
    line = verb + b"<" + arg + b">"
    if options:
        line += b" " + " ".join(options).encode(encoding)
    return line + b"\r\n"


def wire_ready(data: bytes) -> bool:
    """Whether dot_stuffed leaves `data` as it is: CRLF line ends only, no line starting with '.'.
    It holds of a join when it holds of each piece (a CRLF cannot span two pieces when neither has a
    bare CR or LF, and a piece never starts a line with '.'), so a message made of pieces can be
    known ready from its pieces: the copies of one template check their fixed pieces once
    (relay.delivery.personalize). A ready message that ends with CRLF goes out as it is, then ".\r\n"."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf and b"\n." not in data and not data.startswith(b".")


def dot_stuffed(content: bytes, *, ready: bool = False) -> bytes:
    """The message as it goes on the wire after DATA: CRLF line ends, leading dots doubled, the end.
    `ready`: the caller knows wire_ready(content) and that it ends with CRLF (a copy rendered from a
    template): nothing to look for (the scans cost ~100k instructions for a 5.7 KB copy)."""
    if ready:
        return content + b".\r\n"
    crlf = content.count(b"\r\n")
    if content.count(b"\n") != crlf or content.count(b"\r") != crlf:  # a bare CR or LF: RFC 5321 has none
        content = _LINE_ENDINGS.sub(b"\r\n", content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    if b"\n." in content:  # every line starts after a \n but the first
        content = content.replace(b"\n.", b"\n..")
    if content.startswith(b"."):
        content = b"." + content
    return content + b".\r\n"
