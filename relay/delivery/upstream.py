"""The upstream MTA client: pooled aiosmtplib connections, STARTTLS and AUTH, errors translated here."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from relay import replies
from relay.config import UpstreamConfig
from relay.errors import LeaseLost, UpstreamRejected, UpstreamUnavailable, UpstreamUncertain
from relay.log import get_logger
from relay.metrics import Metrics

_IDLE_SECONDS = 30.0  # drop pooled connections idle longer than this (upstreams time out idle clients)


@dataclass(frozen=True)
class UpstreamResult:
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # recipient -> (code, message)
    reply: str = ""

    @property
    def temporarily_refused(self) -> tuple[str, ...]:
        return tuple(r for r, (code, _) in self.refused.items() if 400 <= code < 500)

    @property
    def permanently_refused(self) -> tuple[str, ...]:
        return tuple(r for r, (code, _) in self.refused.items() if code >= 500)


class Fence(Protocol):
    """The outbox's proof that a copy is still its own to send (relay.delivery.outbox)."""

    async def confirm(self) -> None:
        """Just before DATA: raises LeaseLost when the copy is no longer ours (checked in the store)."""

    def check(self) -> None:
        """Just before the message itself goes out: raises LeaseLost when the confirmed lease has run out."""


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    last_used: float


def _message_of(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


class Upstream:
    def __init__(self, config: UpstreamConfig, metrics: Metrics | None = None, local_hostname: str | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.local_hostname = local_hostname
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max(1, config.pool_size))
        self.last_error: str = ""
        self._closed = False

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self.config
        start_tls: bool | None = {"off": False, "opportunistic": None, "required": True}[c.starttls]
        tls_context = None
        if not c.tls_verify:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            timeout=c.timeout,
            start_tls=start_tls,
            validate_certs=c.tls_verify,
            tls_context=tls_context,
            local_hostname=self.local_hostname,
        )
        try:
            await client.connect()
            if c.username:
                await client.login(c.username, c.password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise UpstreamUnavailable(f"upstream refused our credentials: {_message_of(exc)}", 451) from exc
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise UpstreamUnavailable(f"upstream refused the connection: {_message_of(exc)}", 451) from exc
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            client.close()
            raise UpstreamUnavailable(f"cannot connect to upstream {c.host}:{c.port}: {exc}", 451) from exc
        return client

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A pooled connection (reused=True) or a new one."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.client.is_connected and now - conn.last_used < _IDLE_SECONDS:
                return conn, True
            conn.client.close()
        return _Connection(await self._connect(), now), False

    def _release(self, conn: _Connection, healthy: bool) -> None:
        if healthy and not self._closed and conn.client.is_connected:
            conn.last_used = time.monotonic()
            self._idle.append(conn)
        else:
            conn.client.close()

    async def send(
        self, mail_from: str, recipients: Sequence[str], content: bytes, *, fence: Fence | None = None
    ) -> UpstreamResult:
        """One upstream transaction. Raises UpstreamUnavailable (nothing accepted, try later),
        UpstreamUncertain (sent, then no answer: maybe accepted), UpstreamRejected (5xx for the whole
        transaction) or, with a `fence`, LeaseLost (not sent: the copy is someone else's now)."""
        started = time.perf_counter()
        async with self._slots:
            for attempt in (1, 2):
                conn, reused = await self._acquire()
                try:
                    result = await self._transaction(conn.client, mail_from, recipients, content, fence)
                except _StaleConnection as exc:
                    self._release(conn, False)
                    if reused and attempt == 1:
                        continue  # the pooled connection had died: nothing was sent, try a fresh one
                    self.last_error = str(exc)
                    raise UpstreamUnavailable(str(exc), 451) from exc
                except UpstreamUncertain as exc:
                    self._release(conn, False)
                    self.last_error = str(exc)
                    get_logger().warning("upstream_uncertain", error=str(exc), recipients=len(recipients))
                    if self.metrics is not None:
                        self.metrics.upstream_uncertain.inc()
                    raise
                except BaseException:
                    self._release(conn, False)
                    raise
                self._release(conn, True)
                self.last_error = ""
                if self.metrics is not None:
                    self.metrics.upstream_seconds.observe(time.perf_counter() - started)
                return result
        raise AssertionError("unreachable")

    async def _transaction(
        self, client: aiosmtplib.SMTP, mail_from: str, recipients: Sequence[str], content: bytes, fence: Fence | None
    ) -> UpstreamResult:
        options: list[str] = []
        encoding = "ascii"
        needs_extensions = not (content.isascii() and mail_from.isascii() and all(r.isascii() for r in recipients))
        if needs_extensions and client.is_ehlo_or_helo_needed:
            # aiosmtplib greets lazily (at MAIL): on a fresh connection without STARTTLS its list of
            # extensions is still empty here.
            try:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()  # no ESMTP: no extensions
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                raise _StaleConnection(f"upstream failed at EHLO: {exc}") from exc
        if not content.isascii():
            # RFC 6152: 8-bit content goes only to a server that offers 8BITMIME, declared as such
            # (whether or not our client declared it). No 7-bit downgrade: it would change the bytes
            # the policy checked and break the DKIM signature.
            if not client.supports_extension("8bitmime"):
                raise UpstreamRejected("upstream does not support 8BITMIME", 554, replies.EIGHT_BIT_UPSTREAM)
            options.append("BODY=8BITMIME")
        if not (mail_from.isascii() and all(r.isascii() for r in recipients)):
            if not client.supports_extension("smtputf8"):
                raise UpstreamRejected("upstream does not support SMTPUTF8 addresses", 553, replies.SMTPUTF8_UPSTREAM)
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise _StaleConnection(f"upstream closed the connection: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            await _reset(client)
            raise _translate(exc, "MAIL FROM") from exc
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise _StaleConnection(f"upstream failed at MAIL FROM: {exc}") from exc
        accepted: list[str] = []
        refused: dict[str, tuple[int, str]] = {}
        try:
            for rcpt in recipients:
                try:
                    await client.rcpt(rcpt, encoding=encoding)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused[rcpt] = (exc.code, exc.message)
            if not accepted:
                await _reset(client)
                codes = [code for code, _ in refused.values()]
                first = next(iter(refused.values()))
                if all(code >= 500 for code in codes):
                    raise UpstreamRejected(f"upstream refused every recipient: {first[1]}", first[0], f"{first[0]} {first[1]}")
                raise UpstreamUnavailable(f"upstream deferred every recipient: {first[1]}", first[0], f"{first[0]} {first[1]}")
            if fence is not None:
                try:
                    await fence.confirm()
                except BaseException:
                    await _reset(client)
                    raise
            response = await self._data(client, content, fence)
        except (UpstreamRejected, UpstreamUnavailable, LeaseLost):
            raise
        except aiosmtplib.SMTPResponseException as exc:
            await _reset(client)
            raise _translate(exc, "DATA") from exc
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            # The connection broke mid-transaction: the upstream has not confirmed acceptance.
            raise UpstreamUnavailable(f"upstream failed during the transaction: {exc}", 451) from exc
        return UpstreamResult(tuple(accepted), refused, f"{response.code} {response.message}")

    async def _data(self, client: aiosmtplib.SMTP, content: bytes, fence: Fence | None) -> aiosmtplib.SMTPResponse:
        """DATA in its two steps (aiosmtplib's `data` does both in one), so that a failure before the
        message went out (nothing delivered) is told from one after it (maybe delivered)."""
        start = await client.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = client.protocol
        if fence is not None:
            try:
                fence.check()
            except LeaseLost:
                client.close()  # inside DATA: only a dropped connection is sure to discard the message
                raise
        payload = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content)) + b".\r\n"
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the message was sent")
        protocol.write(payload)
        try:
            response = await protocol.read_response(timeout=self.config.timeout)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            client.close()
            raise UpstreamUncertain(f"no answer from the upstream after the message was sent: {exc}", 451) from exc
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def probe(self) -> None:
        """Connect, NOOP, QUIT: raises UpstreamUnavailable when the upstream cannot be reached."""
        client = await self._connect()
        try:
            await client.noop()
            await client.quit()
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise UpstreamUnavailable(f"upstream probe failed: {exc}") from exc
        finally:
            client.close()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.client.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                pass
            conn.client.close()


class _StaleConnection(Exception):
    """The connection failed before the upstream accepted anything; safe to retry elsewhere."""


async def _reset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
        client.close()


def _translate(exc: aiosmtplib.SMTPResponseException, stage: str) -> Exception:
    text = f"upstream answered {exc.code} at {stage}: {exc.message}"
    if exc.code >= 500:
        return UpstreamRejected(text, exc.code, f"{exc.code} {exc.message}")
    return UpstreamUnavailable(text, exc.code, f"{exc.code} {exc.message}")
