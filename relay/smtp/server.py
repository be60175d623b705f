"""The SMTP edge: aiosmtpd's protocol with connection limits, enhanced status codes on its built-in
replies, and a lock-out for repeated bad passwords. Policy lives in the handler."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import aiosmtpd.smtp
from aiosmtpd.smtp import BOGUS_LIMIT, MISSING, SMTP, _AuthMechAttr, syntax

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
    # Called when `total` changes: with `[smtp] workers`, it tells the other workers (relay.process.balance).
    on_change: Callable[[], None] | None = None

    def admit(self, ip: str) -> bool:
        if self.total >= self.max_total or self.per_ip.get(ip, 0) >= self.max_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        if self.metrics is not None:
            self.metrics.smtp_connections.inc()
        if self.on_change is not None:
            self.on_change()
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
        if self.on_change is not None:
            self.on_change()


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
# An octet sought in bytes by its value: `b"\n" in data` first tries b"\n" as an integer and formats
# and drops the TypeError (more than the search itself), and find() parses a tuple of arguments.
_LF, _NUL = ord("\n"), 0
DOT_LINE = b"\r\n."  # a line that starts with a dot: the end, or a transparency dot (RFC 5321 4.5.2)
READ_CHUNK = 256 * 1024
# RFC 5321 4.5.3.1.6: 998 octets of text plus CRLF, one more for a transparent dot: a line of 1,000
# octets before its CR (1,001 with it) is too long.
_MAX_LINE = 1000


def _has_long_line(body: bytes | bytearray) -> bool:
    """A line of more than _MAX_LINE octets before its LF (or the end).

    From the start of each line, the window of _MAX_LINE + 1 octets must hold an LF; the next line
    to check starts after the window's last LF (every line before it is shorter than the window).
    A few `rfind`s for a typical message, where splitting it into lines made an object per line (a
    tenth of the edge's instructions per session)."""
    end = len(body)
    start = 0
    while end - start > _MAX_LINE:
        lf = body.rfind(b"\n", start, start + _MAX_LINE + 1)
        if lf < 0:
            return True
        start = lf + 1
    return False


_log = aiosmtpd.smtp.log
_SMTP_FUNCTIONS: dict[type, dict[str, Any]] = {}
_SMTP_COMMANDS: dict[type, dict[bytes, tuple[str, Any]]] = {}
# A reply ready to send: its bytes, and whether push() holds it back: a line of a multi-line reply
# waits for its last line, a 250 waits while the client's next command is already in the buffer.
_SEND, _HOLD, _HOLD_IF_PIPELINED = "send", "hold", "hold if pipelined"


def _reply(line: bytes) -> tuple[bytes, str]:
    last = line[line.rfind(b"\n", 0, -1) + 1 :]
    if last[3:4] == b"-":
        return line, _HOLD
    return line, _HOLD_IF_PIPELINED if last[:4] == b"250 " else _SEND


def _encoded(status: str, encoding: str) -> tuple[bytes, str]:
    return _reply(replies.with_enhanced_code(status).encode(encoding) + b"\r\n")


_ASCII_REPLIES: dict[str, tuple[bytes, str]] = {}
_UTF8_REPLIES: dict[str, tuple[bytes, str]] = {}


# An address in angle brackets whose local part is a dot-atom and whose domain is a plain host name:
# what nearly every client sends. aiosmtpd parses each MAIL/RCPT argument with the e-mail header
# parser (and defines a class on every call); this answers the common case the same way, faster.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


# What a session makes for its own connection when it starts (see RelaySMTP.__init__); everything
# else it holds when it starts is the same for every connection of a listener: SMTP.__init__'s work
# on the listener's settings, and per-connection values that start as None, a flag or a number.
_MADE_PER_SESSION = frozenset(
    {
        "_drain_waiters", "_stream_reader_wr", "_source_traceback", "_strong_reader", "_client_connected_cb",
        "_closed",  # StreamReaderProtocol.__init__
        "_handle_hooks", "_smtp_bound", "_auth_bound",  # SMTP.__init__ (the bound tables are made lazily)
        "command_size_limits", "_limits", "_data_timeout", "_unsent",  # RelaySMTP.__init__
    }
)
# Shared on purpose: read only, or copied by each session before use.
_SHARED_SETTINGS = frozenset({"event_handler", "loop", "_loop", "tls_context", "_auth_callback", "_authenticator", "_call_limit_base"})
_MAX_CACHED_REPLIES = 1024


def _command_size_limit() -> int:
    return SMTP.command_size_limit


class RelaySMTP(SMTP):
    _reader: asyncio.StreamReader | None = None  # set by connection_made; a refused connection has none

    @classmethod
    def factory(cls, handler: Any, *, limits: ConnectionLimits, data_timeout: float = 3600.0, **kwargs: Any) -> Callable[[], RelaySMTP]:
        """A listener's protocol factory: SMTP.__init__'s work on `kwargs` is done here, once, and each
        connection's session starts from it (see __init__)."""
        template = cls._template(handler, limits, data_timeout, kwargs)
        return lambda: cls(handler, limits=limits, data_timeout=data_timeout, template=template)

    @classmethod
    def _template(cls, handler: Any, limits: ConnectionLimits, data_timeout: float, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A first session's attributes less what each session makes for itself (_MADE_PER_SESSION):
        SMTP.__init__'s work on the listener's settings, the member names the lazily bound tables
        need, and the starting values of the per-connection state. Refused if one of those would be
        an object a session changes (an asyncio that makes another per connection, say): sharing it
        would tie the listener's sessions together."""
        first = cls(handler, limits=limits, data_timeout=data_timeout, **kwargs)
        template = {k: v for k, v in first.__dict__.items() if k not in _MADE_PER_SESSION}
        for name, value in template.items():
            if name not in _SHARED_SETTINGS and not isinstance(value, (type(None), bool, int, float, str, tuple)):
                raise TypeError(f"RelaySMTP: {name} ({type(value).__name__}) would be shared by the listener's sessions")
        template["_hook_commands"] = tuple((m.replace("handle_", ""), m) for m in first._hook_names)
        return template

    def __init__(
        self, handler: Any, *, limits: ConnectionLimits, data_timeout: float = 3600.0,
        template: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        """aiosmtpd's SMTP.__init__ derives the same tables, warnings and log line for every connection
        of a listener (its own share of a short session's CPU): done once per listener (`factory`),
        and each connection copies the result (into its empty __dict__: one copy of the template's
        table, where setting the attributes one by one grew the table three times); without a
        template it runs as aiosmtpd's. Its per-connection state is made fresh, as SMTP.__init__
        makes it; the handler's hooks are read from the handler each time, as aiosmtpd reads them."""
        if template is not None:
            attrs = self.__dict__
            attrs.update(template)
            assert template["event_handler"] is handler
            loop = template["loop"]
            # what StreamReaderProtocol.__init__ (and FlowControlMixin's) make for each connection
            reader = asyncio.StreamReader(limit=self.line_length_limit, loop=loop)
            attrs["_drain_waiters"] = collections.deque()
            attrs["_stream_reader_wr"] = weakref.ref(reader)
            attrs["_source_traceback"] = reader._source_traceback
            attrs["_strong_reader"] = reader
            attrs["_client_connected_cb"] = self._cb_client_connected
            attrs["_closed"] = loop.create_future()
            attrs["_handle_hooks"] = {command: getattr(handler, name) for command, name in template["_hook_commands"]}
            attrs["command_size_limits"] = collections.defaultdict(_command_size_limit)
            attrs["_limits"] = limits
            attrs["_data_timeout"] = data_timeout
            attrs["_unsent"] = bytearray()
            return
        super().__init__(handler, **kwargs)
        self._note_member_names(handler)
        # SMTP keeps these on the class: every new connection cleared them, every EHLO (of any
        # session) raised MAIL's. Each session has its own: 512 octets, MAIL's raised by its EHLO.
        self.command_size_limits = collections.defaultdict(_command_size_limit)
        self._limits = limits
        self._data_timeout = data_timeout
        self._admitted_ip: str | None = None
        self._unsent = bytearray()  # replies held back by push() until the group's last one
        self._pause_above = 2 * self.line_length_limit  # the reader's: it pauses reading above twice its limit
        self.busy = False  # inside a transaction's DATA processing
        self._quit = False  # QUIT answered: the command loop ends
        # The idle and DATA timers: one TimerHandle, armed once and moved only when it fires early
        # (aiosmtpd cancelled and made one per command). _deadline None: the idle timer is stopped.
        self._deadline: float | None = None
        self._data_deadline: float | None = None
        self._timer_at: float | None = None

    def _note_member_names(self, handler: Any) -> None:
        self._smtp_names = tuple(self.__dict__["_smtp_bound"])
        self._auth_names = self._auth_members(handler)
        self._hook_names = tuple(m for m in _MEMBERS.names(handler) if m.startswith("handle_"))

    def _auth_members(self, handler: Any) -> tuple[tuple[str, str, bool], ...]:
        """(mechanism, member name, built in) for each entry of the AUTH table SMTP.__init__ made,
        found the way it finds them: the session's auth_* members, then the handler's."""
        found: dict[str, tuple[str, str, bool]] = {}
        for obj, builtin in ((self, True), (handler, False)):
            for name in _MEMBERS.names(obj):
                if name.startswith("auth_"):
                    member = getattr(obj, name)
                    mechanism = getattr(member, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-"))
                    found[mechanism] = (mechanism, name, builtin)
        return tuple(entry for mechanism, entry in found.items() if mechanism in self.__dict__["_auth_bound"])

    # aiosmtpd binds every smtp_* method and its AUTH mechanisms to the session in SMTP.__init__; only
    # HELP, EHLO and AUTH read these tables, so a session binds them when one of those asks.

    @property
    def _smtp_methods(self) -> dict[str, Any]:
        bound = self.__dict__.get("_smtp_bound")
        if bound is None:
            bound = self.__dict__["_smtp_bound"] = {name: getattr(self, "smtp_" + name) for name in self._smtp_names}
        return bound

    @_smtp_methods.setter
    def _smtp_methods(self, value: dict[str, Any]) -> None:
        self.__dict__["_smtp_bound"] = value

    @property
    def _auth_methods(self) -> dict[str, Any]:
        bound = self.__dict__.get("_auth_bound")
        if bound is None:
            bound = self.__dict__["_auth_bound"] = {
                mechanism: _AuthMechAttr(getattr(self if builtin else self.event_handler, name), builtin)
                for mechanism, name, builtin in self._auth_names
            }
        return bound

    @_auth_methods.setter
    def _auth_methods(self, value: dict[str, Any]) -> None:
        self.__dict__["_auth_bound"] = value

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admitted_ip is None and self.transport is None:
            peer = transport.get_extra_info("peername")
            ip = peer_ip(peer)
            if not self._limits.admit(ip):
                transport.write((replies.TOO_MANY_CONNECTIONS + "\r\n").encode())
                transport.close()
                return
            self._admitted_ip = ip
            self._limits.sessions.add(self)
            # SMTP.connection_made for a new connection, with the peer looked up once
            self._set_rset_state()
            self.session = self._create_session()
            self.session.peer = peer
            self._reset_timeout()
            # StreamReaderProtocol.connection_made for a server's connection, its calls (the reader
            # through its weak reference, set_transport, aiosmtpd's _cb_client_connected keeping the
            # reader and writer, iscoroutine of that callback's None) done in place
            self._transport = transport
            reader = self._strong_reader
            assert reader._transport is None, "Transport already set"
            reader._transport = transport
            self._over_ssl = transport.get_extra_info("sslcontext") is not None
            self._reader = reader
            self._writer = self._stream_writer = asyncio.StreamWriter(transport, self, reader, self._loop)
            self._strong_reader = None
            self.transport = transport
            if _log.isEnabledFor(logging.INFO):
                _log.info("Peer: %r", peer)
            self._handler_coroutine = self.loop.create_task(self._handle_client())
            return
        super().connection_made(transport)  # STARTTLS: the encrypted transport

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

    # --- timers ----------------------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timer, restarted (per command, per chunk of a body) by moving its deadline."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        at = self._timer_at
        if at is None or at > deadline:
            self._arm(deadline)

    def _stop_idle_timer(self) -> None:
        self._deadline = None

    def _arm(self, when: float) -> None:
        handle = self._timeout_handle
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer_at = None
        if self.transport is None:
            return
        now = self.loop.time()
        data_deadline = self._data_deadline
        if data_deadline is not None and now >= data_deadline:
            self._data_deadline = None
            self.close_with(replies.DATA_TIMEOUT)
            return
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            self._timeout_cb()
            return
        pending = [d for d in (deadline, data_deadline) if d is not None]
        if pending:
            self._arm(min(pending))

    # --- the command loop ------------------------------------------------------------------

    async def _handle_client(self) -> None:
        """aiosmtpd's command loop with its replies, limits and checks in the same order, lighter per
        command: a line already in the reader's buffer is taken without a readuntil() call, the
        idle timer moves instead of being replaced, and the per-line log calls are skipped while
        mail.log is quiet (the relay keeps it at WARNING)."""
        if self._proxy_timeout is not None:
            await super()._handle_client()  # the PROXY handshake first: aiosmtpd's own loop
            return
        assert self.session is not None
        verbose = _log.isEnabledFor(logging.INFO)
        if verbose:
            _log.info("%r handling connection", self.session.peer)
        if self._send(f"220 {self.hostname} {self.__ident__}"):
            await self._writer.drain()
        call_limit: Any = (
            collections.defaultdict(lambda: self._call_limit_default, self._call_limit_base) if self._enforce_call_limit else {}
        )
        bogus_budget = BOGUS_LIMIT
        commands = _SMTP_FUNCTIONS.get(type(self)) or self._command_table()
        known = _SMTP_COMMANDS[type(self)]
        reader = self._reader
        limit = reader._limit  # type: ignore[attr-defined]
        loop_time = self.loop.time
        idle = self._timeout_duration
        while self.transport is not None and not self._quit:
            try:
                buffer = reader._buffer  # type: ignore[attr-defined]
                end = buffer.find(b"\n") if _LF in buffer else -1  # find() only where it will find
                if 0 <= end <= limit and reader._exception is None:  # type: ignore[attr-defined]
                    line = bytes(buffer[: end + 1])
                    del buffer[: end + 1]
                    if reader._paused and len(buffer) <= limit:  # type: ignore[attr-defined]
                        reader._maybe_resume_transport()  # type: ignore[attr-defined]
                elif end < 0 and len(buffer) <= limit and not reader._eof and reader._exception is None:  # type: ignore[attr-defined]
                    try:
                        await self._data_waiter(reader, "readuntil")
                    finally:
                        reader._waiter = None  # type: ignore[attr-defined]
                    continue
                else:
                    try:
                        line = await reader.readuntil()  # an error, the end, or a line over the limit
                    except asyncio.LimitOverrunError as error:
                        # Line too long. Read until end of line before sending 500.
                        await reader.read(error.consumed)
                        while True:
                            try:
                                await reader.readuntil()
                                break
                            except asyncio.LimitOverrunError as e:
                                await reader.read(e.consumed)
                                continue
                        await self.push(replies.COMMAND_TOO_LONG)
                        continue
                if verbose:
                    aiosmtpd.smtp.sanitized_log(_log.debug, "_handle_client readline: %r", line)
                    aiosmtpd.smtp.sanitized_log(_log.info, "%r >> %r", self.session.peer, line.rstrip(b"\r\n"))
                line = line.rstrip(b"\r\n")
                if not line:
                    await self.push(replies.COMMAND_BAD_SYNTAX)
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                entry = known.get(command_bytes)  # a command as clients spell it: no upper() and decode()
                if entry is not None:
                    command, method = entry
                else:
                    try:
                        command = command_bytes.upper().decode("ascii")
                    except UnicodeDecodeError:
                        await self.push(replies.COMMAND_BAD_SYNTAX)
                        continue
                    method = commands.get(command)
                arg: str | None
                if not arg_bytes:
                    arg = None
                else:
                    arg_bytes = arg_bytes.strip()
                    if self.enable_SMTPUTF8:
                        arg = arg_bytes.decode("utf-8", "surrogateescape")  # str(..., encoding=...) parsed keywords
                    else:
                        try:
                            arg = arg_bytes.decode("ascii")
                        except UnicodeDecodeError:
                            await self.push(replies.COMMAND_NOT_ASCII)
                            continue
                max_sz = self.command_size_limits[command] if self.session.extended_smtp else self.command_size_limit
                if len(line) > max_sz:
                    await self.push(replies.COMMAND_TOO_LONG)
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push(replies.COMMAND_AFTER_FAILED_TLS)
                    continue
                if self.require_starttls and not self._tls_protocol and command not in aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS:
                    await self.push(replies.COMMAND_BEFORE_STARTTLS)
                    continue
                if self._enforce_call_limit:
                    budget = call_limit[command]
                    if budget < 1:
                        _log.warning("%r over limit for %s", self.session.peer, command)
                        await self.push(replies.command_over_call_limit(command))
                        self.transport.close()
                        continue
                    call_limit[command] = budget - 1
                if method is None:
                    _log.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        _log.warning("%r too many bogus commands", self.session.peer)
                        await self.push(replies.TOO_MANY_UNKNOWN_COMMANDS)
                        self.transport.close()
                        continue
                    await self.push(replies.unknown_command(command))
                    continue
                # a valid command: the idle timer's deadline moves (_reset_timeout, in place)
                deadline = self._deadline = loop_time() + idle
                at = self._timer_at
                if at is None or at > deadline:
                    self._arm(deadline)
                await method(self, arg)
            except asyncio.CancelledError:
                _log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except ConnectionResetError:
                _log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner_error:
                    try:
                        _log.exception("%r Exception in handle_exception()", self.session.peer)
                        status = replies.session_error(inner_error)
                    except Exception:
                        status = replies.UNDESCRIBABLE_ERROR
                finally:
                    if isinstance(error, aiosmtpd.smtp.TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)  # type: ignore[arg-type]

    def _data_waiter(self, reader: asyncio.StreamReader, func_name: str) -> asyncio.Future[None]:
        """StreamReader._wait_for_data's set-up, for its caller to await in place and then clear
        reader._waiter, as it does (a coroutine less for each wait of a session)."""
        if reader._waiter is not None:  # type: ignore[attr-defined]
            raise RuntimeError(f"{func_name}() called while another coroutine is already waiting for incoming data")
        assert not reader._eof, "_wait_for_data after EOF"  # type: ignore[attr-defined]
        if reader._paused:  # type: ignore[attr-defined]
            # waiting while reading is paused would never end
            reader._paused = False  # type: ignore[attr-defined]
            reader._transport.resume_reading()  # type: ignore[attr-defined]
        waiter = reader._waiter = self._loop.create_future()  # type: ignore[attr-defined]
        return waiter

    def _command_table(self) -> dict[str, Any]:
        """The smtp_* functions by command, per class: the names SMTP.__init__ found for its table of
        bound methods (called here with the session as their first argument). With them by the
        command's octets in upper and in lower case (_SMTP_COMMANDS)."""
        table = _SMTP_FUNCTIONS[type(self)] = {name: getattr(type(self), "smtp_" + name) for name in self._smtp_names}
        _SMTP_COMMANDS[type(self)] = {
            spelling.encode("ascii"): (name, function)
            for name, function in table.items() if name.isascii()
            for spelling in (name.upper(), name.lower()) if spelling.upper() == name
        }
        return table

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

    # --- MAIL and RCPT -----------------------------------------------------------------------
    # aiosmtpd's smtp_MAIL and smtp_RCPT take a command through three coroutines of checks and its
    # generic argument machinery before the hook. These answer a command that aiosmtpd would accept
    # (greeted, authenticated if need be, a plain address as _getaddr takes it, parameters it takes)
    # with the same hook call, envelope and reply; anything else, any reply but the hook's, goes to
    # aiosmtpd's own method from its start, so every refusal is aiosmtpd's, word for word.

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        """aiosmtpd's HELO with its hook called directly (SMTP._call_handler_hook, a coroutine less)."""
        if not hostname:
            return await SMTP.smtp_HELO(self, hostname)
        self._set_rset_state()
        session = self.session
        session.extended_smtp = False
        hook = self._handle_hooks.get("HELO")
        status = MISSING if hook is None else await hook(self, session, self.envelope, hostname)
        if status is MISSING:
            session.host_name = hostname
            status = f"250 {self.hostname}"
        if self._send(status):
            await self._writer.drain()

    def _may_take(self, session: Any) -> bool:
        """Whether MAIL, RCPT or DATA may go the direct way: greeted, and authenticated where that is
        required (else aiosmtpd's own checks answer, with their wording)."""
        return bool(session.host_name) and (session.authenticated or not self._auth_required)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        session = self.session
        envelope = self.envelope
        if arg is None or not self._may_take(session) or envelope.mail_from or arg[:5].upper() != "FROM:":
            return await SMTP.smtp_MAIL(self, arg)
        address, mail_options, smtputf8 = self._plain_mail_from(arg[5:].strip())
        if address is None:
            return await SMTP.smtp_MAIL(self, arg)
        envelope.smtp_utf8 = smtputf8
        hook = self._handle_hooks.get("MAIL")
        status = MISSING if hook is None else await hook(self, session, envelope, address, mail_options)
        if status is MISSING:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            status = replies.HOOKLESS_OK
        if _log.isEnabledFor(logging.INFO):  # Logger.info's own test, a call less
            _log.info("%r sender: %s", session.peer, address)
        if self._send(status):
            await self._writer.drain()

    def _plain_mail_from(self, arg: str) -> tuple[str | None, list[str], bool]:
        """(address, options, SMTPUTF8) when aiosmtpd's smtp_MAIL would take `arg` (after "FROM:")
        and call the hook; address None otherwise. Its checks, in its order, without the replies."""
        plain = _PLAIN_ADDRESS.match(arg)
        if plain is None:
            return None, [], False
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, [], False
        rest = arg[plain.end() :].lstrip(" \t")  # as _getaddr leaves it
        if not rest:
            return address, [], False
        if rest.startswith("(") or not self.session.extended_smtp:
            return None, [], False
        mail_options = rest.upper().split()
        params: dict[str, str | bool] = {}
        for option in mail_options:  # SMTP._getparams
            name, eq, value = option.partition("=")
            if not name.isalnum() or eq and not value:
                return None, [], False
            params[name] = value if eq else True
        if not self._decode_data and params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
            return None, [], False
        smtputf8 = params.pop("SMTPUTF8", False)
        if not isinstance(smtputf8, bool) or (smtputf8 and not self.enable_SMTPUTF8):
            return None, [], False
        size = params.pop("SIZE", None)
        if size and (isinstance(size, bool) or not size.isdigit() or (self.data_size_limit and int(size) > self.data_size_limit)):
            return None, [], False
        if params:
            return None, [], False
        return address, mail_options, smtputf8

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        session = self.session
        envelope = self.envelope
        if arg is None or not self._may_take(session) or not envelope.mail_from or arg[:3].upper() != "TO:":
            return await SMTP.smtp_RCPT(self, arg)
        # aiosmtpd recognises no RCPT parameter: a command with one is never taken
        plain = _PLAIN_ADDRESS.fullmatch(arg[3:].strip())
        if plain is None or (self.local_part_limit and len(plain.group(1).rpartition("@")[0]) > self.local_part_limit):
            return await SMTP.smtp_RCPT(self, arg)
        address = plain.group(1)
        hook = self._handle_hooks.get("RCPT")
        rcpt_options: list[str] = []
        status = MISSING if hook is None else await hook(self, session, envelope, address, rcpt_options)
        if status is MISSING:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            status = replies.HOOKLESS_OK
        if _log.isEnabledFor(logging.INFO):
            _log.info("%r recip: %s", session.peer, address)
        if self._send(status):
            await self._writer.drain()

    # --- replies ---------------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        """aiosmtpd's push (one write and one drain per line) with the writes put together: a line of a
        multi-line reply waits for its last line (EHLO was eight writes), and a 250 waits while the
        client's next command is already in the buffer (RFC 2920: the replies to a pipelined group go
        out together, as Postfix sends them). Every other reply, and the last of a group, is written
        at once, with whatever waited before it."""
        if self._send(status):
            await self._writer.drain()

    def _send(self, status: Any) -> bool:
        """push() up to its drain, which it says whether to await: the session's own replies call it
        directly, a coroutine less each (StreamWriter.drain() returns at once unless writing is
        paused or the connection is going)."""
        if isinstance(status, str):
            cache = _UTF8_REPLIES if self.enable_SMTPUTF8 else _ASCII_REPLIES
            reply = cache.get(status)
            if reply is None:
                reply = _encoded(status, "utf-8" if self.enable_SMTPUTF8 else "ascii")
                if len(cache) >= _MAX_CACHED_REPLIES:
                    cache.clear()
                cache[status] = reply
        else:
            assert isinstance(status, bytes)
            reply = _reply(status + b"\r\n")
        line, hold = reply
        if hold is _HOLD or (hold is _HOLD_IF_PIPELINED and _LF in self._reader._buffer):  # type: ignore[attr-defined]
            self._unsent += line
            return False
        unsent = self._unsent
        if unsent:
            unsent += line
            line = unsent
            self._unsent = bytearray()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(line)  # type: ignore[attr-defined]
        return self._paused or self._connection_lost or transport is None or transport.is_closing()

    def _flush(self) -> None:
        unsent = self._unsent
        if unsent:
            self._unsent = bytearray()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(unsent)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        """StreamReaderProtocol.data_received and StreamReader.feed_data in one call (once per segment)."""
        reader = self._reader
        if reader is None or reader._eof or not data:
            super().data_received(data)  # a refused connection's reader; the assertion after EOF
            return
        buffer = reader._buffer
        buffer += data
        waiter = reader._waiter
        if waiter is not None:
            reader._waiter = None
            if not waiter.cancelled():
                waiter.set_result(None)
        if len(buffer) > self._pause_above and not reader._paused and reader._transport is not None:
            try:
                reader._transport.pause_reading()
            except NotImplementedError:  # the transport cannot pause: buffer everything
                reader._transport = None
            else:
                reader._paused = True

    def eof_received(self) -> bool | None:
        self._flush()  # the client half-closed after a pipelined group: it may still read the replies
        return super().eof_received()

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str) -> None:
        """aiosmtpd's QUIT, ending the command loop with a flag: it cancelled its own task instead, an
        exception through the loop's frames once a session. Commands pipelined after QUIT are not
        served (aiosmtpd served them until the loop next waited, with their replies unsent)."""
        if arg:
            await self.push(replies.QUIT_SYNTAX)
            return
        hook = self._handle_hooks.get("QUIT")  # SMTP._call_handler_hook, a coroutine less
        status = MISSING if hook is None else await hook(self, self.session, self.envelope)
        if self._send(replies.bye() if status is MISSING else status):
            await self._writer.drain()
        self._quit = True
        assert self.transport is not None
        self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the same replies, reading the body in large chunks instead of one
        `readuntil` per line (which dominated the cost of a message)."""
        # From the 354 on the client is mid-message: a shutdown lets it finish within the grace
        # instead of cutting it off with 421 (busy was only set once the whole body had arrived).
        self.busy = True
        try:
            session = self.session
            if not self._may_take(session):
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
            if self._send(replies.DATA_GO_AHEAD):
                await self._writer.drain()
            # RFC 5321 4.5.3.2: the idle timer runs per read (_read_body resets it), and the DATA deadline
            # bounds the whole upload, so a client that never stops trickling cannot hold a session for
            # ever: past it, _on_timer answers DATA_TIMEOUT and hangs up, which ends this read.
            deadline = self._data_deadline = self.loop.time() + self._data_timeout
            if self._timer_at is None or self._timer_at > deadline:
                self._arm(deadline)
            try:
                content, problem = await self._read_body()
            finally:
                self._data_deadline = None
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
                hook = self._handle_hooks.get("DATA")  # SMTP._call_handler_hook, a coroutine less
                status = MISSING if hook is None else await hook(self, session, self.envelope)
            finally:
                if self.transport is not None:  # gone: connection_lost already cancelled the timer
                    self._reset_timeout()
            self._set_post_data_state()
            if self._send(replies.OK if status is MISSING else status):
                await self._writer.drain()
        finally:
            self.busy = False

    async def _read_body(self) -> tuple[bytes | None, str | None]:
        """The de-dotted body up to the lone dot, and the reply for an oversize body or line.

        Bytes the client pipelined after the dot go back to the front of the reader's buffer.
        Past the size limit only the tail is kept, to find the end without holding the excess.
        The end is found by its "\r\n." (a line starting with a dot): most bodies have no other,
        so one scan finds the end and tells that no transparency dot needs removing (a second scan
        of the whole body, for `replace`, was a twentieth of a short session's instructions)."""
        reader = self._reader
        limit = self.data_size_limit
        buf = bytearray(b"\r\n")  # so a body that is only the dot is found like any other end
        scanned = 0
        too_much = False
        stuffed = False  # a line starting with a dot before the end: its dot is removed
        # The body is taken as it comes: the reader's pause above twice its line limit stopped and
        # restarted reading (a system call) for every segment of a body longer than two lines.
        self._pause_above = 2 * READ_CHUNK
        try:
            while True:
                pending = reader._buffer  # type: ignore[attr-defined]
                if reader._exception is not None or (reader._eof and not pending):  # type: ignore[attr-defined]
                    await reader.read(READ_CHUNK)  # raises the connection's error, or b"" at its end
                    return None, None
                if not pending:
                    try:
                        await self._data_waiter(reader, "read")
                    finally:
                        reader._waiter = None  # type: ignore[attr-defined]
                    continue
                self._reset_timeout()  # data is flowing: the client is not idle
                if len(pending) <= READ_CHUNK:
                    buf += pending
                    pending.clear()
                else:  # as StreamReader.read(READ_CHUNK) takes it
                    buf += memoryview(pending)[:READ_CHUNK]
                    del pending[:READ_CHUNK]
                if reader._paused:  # type: ignore[attr-defined]
                    reader._maybe_resume_transport()  # type: ignore[attr-defined]
                end, scanned, stuffed = self._scan_body(buf, scanned, stuffed)
                if end >= 0:
                    break
                if limit and len(buf) - 2 > limit:
                    too_much = True
                    del buf[:scanned]  # keep only the tail the end marker may still straddle
                    scanned = 0
        finally:
            self._pause_above = 2 * reader._limit  # type: ignore[attr-defined]
        if len(buf) > end + len(END_OF_DATA):
            reader._buffer[:0] = buf[end + len(END_OF_DATA) :]  # type: ignore[attr-defined]  # pipelined commands, read next
        if too_much or (limit and end > limit):
            return b"", replies.TOO_BIG
        del buf[end + 2 :]  # the body with its leading CRLF, up to the CRLF before the dot
        if _has_long_line(buf):
            return b"", replies.LINE_TOO_LONG
        if _NUL in buf:
            # RFC 5322 has no place for NUL, and many receivers cut a message at the first one.
            return b"", replies.NUL_IN_MESSAGE
        if stuffed:
            return bytes(buf).replace(DOT_LINE, b"\r\n")[2:], None
        del buf[:2]  # a bytearray drops its head without moving the rest
        return bytes(buf), None

    @staticmethod
    def _scan_body(buf: bytearray, scanned: int, stuffed: bool) -> tuple[int, int, bool]:
        """(where the end marker starts or -1, where the next scan starts, whether a line before the
        end starts with a dot) for `buf` (the body so far after a CRLF) scanned from `scanned`."""
        if stuffed:
            end = buf.find(END_OF_DATA, scanned)
        else:
            end = buf.find(DOT_LINE, scanned)
            while end >= 0 and not buf.startswith(END_OF_DATA, end):
                if len(buf) - end < len(END_OF_DATA):
                    end = -1  # cut short: the next arrival tells
                    break
                stuffed = True  # from here on only the end is looked for
                end = buf.find(END_OF_DATA, end + len(DOT_LINE))
        # an end marker that this arrival cut short starts in its last four octets
        return end, max(0, len(buf) - len(END_OF_DATA) + 1), stuffed

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
