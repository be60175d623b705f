"""The SMTP edge: aiosmtpd's protocol with connection limits, enhanced status codes on its built-in
replies, and a lock-out for repeated bad passwords. Policy lives in the handler."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, syntax

from relay import replies
from relay.metrics import Metrics


@dataclass
class ConnectionLimits:
    max_total: int
    max_per_ip: int
    metrics: Metrics | None = None
    total: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    sessions: set[RelaySMTP] = field(default_factory=set)

    def admit(self, ip: str) -> bool:
        if self.total >= self.max_total or self.per_ip.get(ip, 0) >= self.max_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        if self.metrics is not None:
            self.metrics.smtp_connections.inc()
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left
        if self.metrics is not None:
            self.metrics.smtp_connections.dec()


@dataclass
class AuthLockout:
    """Failures per client address; at `max_failures` the address is locked out for a while.

    Both maps hold at most `max_tracked` addresses: a client cycling through source addresses (an
    IPv6 /64 holds 2**64) would otherwise grow them for ever. When one is full, entries whose window
    has passed go first, then the oldest; an evicted address starts counting again, which costs an
    attacker who already controls that many addresses nothing it did not have."""

    max_failures: int
    lockout_seconds: float
    max_tracked: int = 100_000
    failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    locked_until: dict[str, float] = field(default_factory=dict)

    def locked(self, ip: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        until = self.locked_until.get(ip)
        if until is None:
            return False
        if now >= until:
            del self.locked_until[ip]
            return False
        return True

    def failed(self, ip: str, now: float | None = None) -> bool:
        """Count a failure; True when this one locks the address out."""
        now = time.monotonic() if now is None else now
        count, first = self.failures.pop(ip, (0, now))  # re-inserted last: the map stays oldest-first
        if now - first > self.lockout_seconds:
            count, first = 0, now
        count += 1
        if count >= self.max_failures:
            self.locked_until.pop(ip, None)
            self.locked_until[ip] = now + self.lockout_seconds
            self._bound(self.locked_until, lambda until: until <= now)
            return True
        self.failures[ip] = (count, first)
        self._bound(self.failures, lambda entry: now - entry[1] > self.lockout_seconds)
        return False

    def succeeded(self, ip: str) -> None:
        self.failures.pop(ip, None)

    def _bound(self, entries: dict[str, Any], expired: Any) -> None:
        if len(entries) <= self.max_tracked:
            return
        for key in [k for k, v in entries.items() if expired(v)]:
            del entries[key]
        # Down to nine tenths (the oldest live entries go), so this linear sweep stays rare.
        excess = len(entries) - (self.max_tracked - self.max_tracked // 10)
        if excess > 0:
            for key in list(entries)[:excess]:
                del entries[key]


def peer_ip(peer: Any) -> str:
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return str(peer or "")


_HOOK_PREFIXES = ("auth_", "handle_", "smtp_")


class _MemberNamesByType:
    """aiosmtpd's SMTP.__init__ lists the members of the session and of the handler with `dir()` and
    `inspect.getmembers()` on every connection (a sizeable share of a short session's CPU). Classes do
    not change while the relay runs, so the names are looked up once per type; the values are still
    read from the object itself, so bound methods stay bound to this session."""

    def __init__(self) -> None:
        self._names: dict[type, list[str]] = {}
        self._signatures: dict[Any, inspect.Signature] = {}

    def names(self, obj: object) -> list[str]:
        """dir(obj) cut to the names aiosmtpd looks for: it filters the whole listing (some 300 names
        of a session) by prefix three times per connection, which was most of a session's set-up."""
        kind = type(obj)
        names = self._names.get(kind)
        if names is None:
            names = self._names[kind] = [n for n in dir(obj) if n.startswith(_HOOK_PREFIXES)]
        return names

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        return [(n, getattr(obj, n)) for n in self.names(obj) if n.startswith("auth_")]

    def signature(self, obj: Any) -> inspect.Signature:
        func = getattr(obj, "__func__", obj)  # a bound method's signature is its function's minus self
        sig = self._signatures.get(func)
        if sig is None:
            sig = self._signatures[func] = inspect.signature(obj)
        return sig


_MEMBERS = _MemberNamesByType()
# aiosmtpd.smtp resolves `dir` and `inspect` through its module globals before the builtins; its only
# uses are the member listings above (filtered by the prefixes "auth_", "handle_" and "smtp_").
aiosmtpd.smtp.dir = _MEMBERS.names  # type: ignore[attr-defined]
aiosmtpd.smtp.inspect = _MEMBERS  # type: ignore[attr-defined]

END_OF_DATA = b"\r\n.\r\n"
READ_CHUNK = 256 * 1024
# RFC 5321 4.5.3.1.6: 998 octets of text plus CRLF, one more for a transparent dot: a line of 1,000
# octets before its CR is too long. Anchored at line starts, so the scan is linear in the body.
_LONG_LINE = re.compile(rb"^[^\n]{1001}", re.MULTILINE)


# An address in angle brackets whose local part is a dot-atom and whose domain is a plain host name:
# what nearly every client sends. aiosmtpd parses each MAIL/RCPT argument with the e-mail header
# parser (and defines a class on every call); this answers the common case the same way, faster.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


class RelaySMTP(SMTP):
    def __init__(self, handler: Any, *, limits: ConnectionLimits, data_timeout: float = 3600.0, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._data_timeout = data_timeout
        self._admitted_ip: str | None = None
        self._unsent = bytearray()  # replies held back by push() until the group's last one
        self.busy = False  # inside a transaction's DATA processing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admitted_ip is None and self.transport is None:
            ip = peer_ip(transport.get_extra_info("peername"))
            if not self._limits.admit(ip):
                transport.write((replies.TOO_MANY_CONNECTIONS + "\r\n").encode())
                transport.close()
                return
            self._admitted_ip = ip
            self._limits.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted_ip is None:
            return
        self._limits.release(self._admitted_ip)
        self._limits.sessions.discard(self)
        self._admitted_ip = None
        super().connection_lost(error)  # cancels the handler task, which ends on a later turn
        task = self._handler_coroutine
        if task is None or task.done():
            self._unlink()
        else:
            task.add_done_callback(self._unlink)

    def _unlink(self, _task: object = None) -> None:
        """The session is over (connection lost, handler task ended): drop what this object holds.

        aiosmtpd's session is all cycles: its bound command methods, its stream writer and its
        handler task (whose CancelledError keeps the frames that keep the session) point back at
        it. Left to the cycle collector, the sessions of a retry burst (old enough to reach its
        oldest generation) stayed for hours, about 10 MiB a worker after a 5-minute upstream
        outage (issue 21). Emptied here, reference counting frees the session at once."""
        closed = self.__dict__.get("_closed")
        if isinstance(closed, asyncio.Future) and closed.done() and not closed.cancelled():
            closed.exception()  # what StreamReaderProtocol.__del__ does: a lost connection's error is no news
        self.__dict__.clear()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        if arg.lstrip().startswith("<") and ">" not in arg:
            # The e-mail header parser forgives a missing ">" (a defect, no error): RFC 5321 does not.
            # An empty address makes aiosmtpd answer its 501 syntax reply (5.5.4 added by push).
            return "", ""
        plain = _PLAIN_ADDRESS.match(arg)
        if plain is not None:
            rest = arg[plain.end() :].lstrip(" \t")
            local = plain.group(1).rpartition("@")[0]
            if not rest.startswith("(") and not (self.local_part_limit and len(local) > self.local_part_limit):
                return plain.group(1), rest
        return super()._getaddr(arg)

    async def push(self, status: Any) -> None:
        """aiosmtpd's push (one write and one drain per line) with the writes put together: a line of a
        multi-line reply waits for its last line (EHLO was eight writes), and a 250 waits while the
        client's next command is already in the buffer (RFC 2920: the replies to a pipelined group go
        out together, as Postfix sends them). Every other reply, and the last of a group, is written
        at once, with whatever waited before it."""
        if isinstance(status, str):
            status = replies.with_enhanced_code(status).encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        assert isinstance(status, bytes)
        self._unsent += status + b"\r\n"
        last = status[status.rfind(b"\n") + 1 :]
        if last[3:4] == b"-" or (last[:4] == b"250 " and b"\n" in self._reader._buffer):  # type: ignore[attr-defined]
            return
        self._flush()
        await self._writer.drain()

    def _flush(self) -> None:
        unsent = self._unsent
        if unsent:
            self._unsent = bytearray()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(unsent)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        self._flush()  # the client half-closed after a pipelined group: it may still read the replies
        return super().eof_received()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # From the 354 on the client is mid-message: a shutdown lets it finish within the grace
        # instead of cutting it off with 421 (busy was only set once the whole body had arrived).
        self.busy = True
        try:
            await self._data(arg)
        finally:
            self.busy = False

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA with the same replies, reading the body in large chunks instead of one
        `readuntil` per line (which dominated the cost of a message)."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.DATA_WITHOUT_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        await self.push(replies.DATA_GO_AHEAD)
        try:
            # RFC 5321 4.5.3.2: the idle timer runs per read (_read_body resets it), and this bounds
            # the whole upload, so a client that never stops trickling cannot hold a session for ever.
            async with asyncio.timeout(self._data_timeout):
                content, problem = await self._read_body()
        except TimeoutError:
            self.close_with(replies.DATA_TIMEOUT)
            return
        if content is None:
            return  # the connection went away mid-message
        if problem is not None:
            await self.push(problem)
            self._set_post_data_state()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        # The client waits on us now (its own DATA-termination timeout, RFC 5321 4.5.3.2.6), and
        # every step of the pipeline has its own deadline: the idle timer must not cut our reply off.
        self._stop_idle_timer()
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if self.transport is not None:  # gone: connection_lost already cancelled the timer
                self._reset_timeout()
        self._set_post_data_state()
        await self.push(replies.OK if status is MISSING else status)

    def _stop_idle_timer(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    async def _read_body(self) -> tuple[bytes | None, str | None]:
        """The de-dotted body up to the lone dot, and the reply for an oversize body or line.

        Bytes the client pipelined after the dot go back to the front of the reader's buffer.
        Past the size limit only the tail is kept, to find the end without holding the excess."""
        reader = self._reader
        limit = self.data_size_limit
        buf = bytearray(b"\r\n")  # so a body that is only the dot is found like any other end
        scanned = 0
        too_much = False
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                return None, None
            self._reset_timeout()  # data is flowing: the client is not idle
            buf += chunk
            end = buf.find(END_OF_DATA, scanned)
            if end >= 0:
                break
            scanned = max(0, len(buf) - len(END_OF_DATA) + 1)
            if limit and len(buf) - 2 > limit:
                too_much = True
                del buf[:scanned]  # keep only the tail the end marker may still straddle
                scanned = 0
        rest = buf[end + len(END_OF_DATA) :]
        if rest:
            reader._buffer[:0] = rest  # type: ignore[attr-defined]  # pipelined commands, read next
        if too_much or (limit and end > limit):
            return b"", replies.TOO_BIG
        body = bytes(buf[: end + 2])
        if _LONG_LINE.search(body):
            return b"", replies.LINE_TOO_LONG
        if b"\0" in body:
            # RFC 5322 has no place for NUL, and many receivers cut a message at the first one.
            return b"", replies.NUL_IN_MESSAGE
        return body.replace(b"\r\n.", b"\r\n")[2:], None

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: say why before hanging up on a silent client.
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.write((replies.IDLE_TIMEOUT + "\r\n").encode())
        super()._timeout_cb()

    def close_with(self, reply: str) -> None:
        """Say why and hang up (lock-out, shutdown)."""
        if self.transport is not None:
            try:
                self._flush()
                self.transport.write((reply + "\r\n").encode())
            finally:
                self.transport.close()
