"""The upstream MTA client: pooled connections (relay.delivery.smtp_client), one pipelined write per
transaction when the upstream offers PIPELINING, STARTTLS and AUTH, errors translated here."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from relay import replies
from relay.config import UpstreamConfig
from relay.delivery import smtp_client
from relay.delivery.smtp_client import Broken, ClientError, Connection, Reply, ReplyError
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

    confirmed: bool  # already confirmed in the store before the send began: DATA need not wait for it

    async def confirm(self) -> None:
        """Just before DATA: raises LeaseLost when the copy is no longer ours (checked in the store)."""

    def check(self) -> None:
        """Just before the message itself goes out: raises LeaseLost when the confirmed lease has run out."""


@dataclass
class _Connection:
    client: Connection
    last_used: float


# What a connection that fails this way leaves behind cannot be used again.
_IO_ERRORS = (ClientError, OSError, TimeoutError)


class Upstream:
    def __init__(self, config: UpstreamConfig, metrics: Metrics | None = None, local_hostname: str | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.local_hostname = local_hostname
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max(1, config.pool_size))
        self.last_error: str = ""
        self._closed = False
        # One context for every connection (loading the CA store per connection costs milliseconds).
        self._tls_context: ssl.SSLContext | None = None
        if config.starttls != "off":
            self._tls_context = ssl.create_default_context()
            if not config.tls_verify:
                self._tls_context.check_hostname = False
                self._tls_context.verify_mode = ssl.CERT_NONE

    async def _connect(self) -> Connection:
        c = self.config
        start_tls: bool | None = {"off": False, "opportunistic": None, "required": True}[c.starttls]
        if self.local_hostname is None:
            self.local_hostname = await asyncio.to_thread(socket.getfqdn)  # once, not per connection
        try:
            return await smtp_client.connect(
                c.host,
                c.port,
                timeout=c.timeout,
                local_hostname=self.local_hostname,
                starttls=start_tls,
                tls_context=self._tls_context,
                username=c.username,
                password=c.password,
            )
        except smtp_client.AuthFailed as exc:
            raise UpstreamUnavailable(f"upstream refused our credentials: {exc.reply}", 451) from exc
        except ReplyError as exc:
            raise UpstreamUnavailable(f"upstream refused the connection: {exc.reply}", 451) from exc
        except _IO_ERRORS as exc:
            raise UpstreamUnavailable(f"cannot connect to upstream {c.host}:{c.port}: {exc}", 451) from exc

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
        self,
        mail_from: str,
        recipients: Sequence[str],
        content: bytes,
        *,
        fence: Fence | None = None,
        wire_ready: bool = False,
    ) -> UpstreamResult:
        """One upstream transaction (`wire_ready`: smtp_client.dot_stuffed's `ready`). Raises UpstreamUnavailable (nothing accepted, try later),
        UpstreamUncertain (sent, then no answer: maybe accepted), UpstreamRejected (5xx for the whole
        transaction) or, with a `fence`, LeaseLost (not sent: the copy is someone else's now)."""
        started = time.perf_counter()
        async with self._slots:
            for attempt in (1, 2):
                conn, reused = await self._acquire()
                try:
                    result = await self._transaction(conn.client, mail_from, recipients, content, fence, wire_ready)
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
        self,
        client: Connection,
        mail_from: str,
        recipients: Sequence[str],
        content: bytes,
        fence: Fence | None,
        wire_ready: bool = False,
    ) -> UpstreamResult:
        options: list[str] = []
        encoding = "ascii"
        if not content.isascii():
            # RFC 6152: 8-bit content goes only to a server that offers 8BITMIME, declared as such
            # (whether or not our client declared it). No 7-bit downgrade: it would change the bytes
            # the policy checked and break the DKIM signature.
            if not client.supports("8bitmime"):
                raise UpstreamRejected("upstream does not support 8BITMIME", 554, replies.EIGHT_BIT_UPSTREAM)
            options.append("BODY=8BITMIME")
        if not (mail_from.isascii() and all(r.isascii() for r in recipients)):
            if not client.supports("smtputf8"):
                raise UpstreamRejected("upstream does not support SMTPUTF8 addresses", 553, replies.SMTPUTF8_UPSTREAM)
            options.append("SMTPUTF8")
            encoding = "utf-8"
        mail = smtp_client.address_command(b"MAIL FROM:", mail_from, options, encoding)
        rcpts = [smtp_client.address_command(b"RCPT TO:", r, [], encoding) for r in recipients]
        # RFC 2920: MAIL, every RCPT and DATA in one write, their replies read in order. With a fence
        # not yet confirmed DATA waits for its confirmation, so the group ends at the last RCPT.
        data_in_group = client.pipelining and (fence is None or fence.confirmed)
        got: list[Reply] = []
        try:
            if client.pipelining:
                client.write(mail + b"".join(rcpts) + (b"DATA\r\n" if data_in_group else b""))
                await client.replies(got, 1 + len(rcpts) + data_in_group)
            else:
                got.append(await client.command(mail[:-2]))
                if got[0].code == 250:
                    for line in rcpts:
                        got.append(await client.command(line[:-2]))
        except _IO_ERRORS as exc:
            if not got:
                raise _StaleConnection(f"upstream failed at MAIL FROM: {exc}") from exc
            if got[0].code != 250:
                client.close()
                raise _translate(got[0], "MAIL FROM") from exc
            # The connection broke mid-transaction: the upstream has not confirmed acceptance.
            raise UpstreamUnavailable(f"upstream failed during the transaction: {exc}", 451) from exc
        if got[0].code != 250:
            await _reset(client)
            raise _translate(got[0], "MAIL FROM")
        accepted: list[str] = []
        refused: dict[str, tuple[int, str]] = {}
        for rcpt, reply in zip(recipients, got[1 : 1 + len(rcpts)]):
            if reply.code in (250, 251):
                accepted.append(rcpt)
            else:
                refused[rcpt] = (reply.code, reply.text)
        start = got[-1] if data_in_group else None
        if not accepted:
            if start is not None and start.code == 354:
                client.close()  # a server that takes DATA without a recipient: only a hang-up ends it
            else:
                await _reset(client)
            codes = [code for code, _ in refused.values()]
            first = next(iter(refused.values()))
            if all(code >= 500 for code in codes):
                raise UpstreamRejected(f"upstream refused every recipient: {first[1]}", first[0], f"{first[0]} {first[1]}")
            raise UpstreamUnavailable(f"upstream deferred every recipient: {first[1]}", first[0], f"{first[0]} {first[1]}")
        try:
            if start is None:
                if fence is not None:
                    try:
                        await fence.confirm()
                    except BaseException:
                        await _reset(client)
                        raise
                start = await client.command(b"DATA")
        except _IO_ERRORS as exc:
            raise UpstreamUnavailable(f"upstream failed during the transaction: {exc}", 451) from exc
        if start.code != 354:
            await _reset(client)
            raise _translate(start, "DATA")
        response = await self._data(client, content, fence, wire_ready)
        return UpstreamResult(tuple(accepted), refused, str(response))

    async def _data(self, client: Connection, content: bytes, fence: Fence | None, wire_ready: bool = False) -> Reply:
        """After the 354: the message, then its reply. A failure before the message went out (nothing
        delivered) is told from one after it (maybe delivered)."""
        if fence is not None:
            try:
                fence.check()
            except LeaseLost:
                client.close()  # inside DATA: only a dropped connection is sure to discard the message
                raise
        try:
            client.write(smtp_client.dot_stuffed(content, ready=wire_ready))
        except _IO_ERRORS as exc:
            raise UpstreamUnavailable(f"upstream failed during the transaction: {exc}", 451) from exc
        try:
            response = await client.reply()
        except _IO_ERRORS as exc:
            client.close()
            raise UpstreamUncertain(f"no answer from the upstream after the message was sent: {exc}", 451) from exc
        if response.code != 250:
            await _reset(client)
            raise _translate(response, "DATA")
        return response

    async def probe(self) -> None:
        """Connect, NOOP, QUIT: raises UpstreamUnavailable when the upstream cannot be reached."""
        client = await self._connect()
        try:
            await client.command(b"NOOP")
            await client.quit()
        except _IO_ERRORS as exc:
            raise UpstreamUnavailable(f"upstream probe failed: {exc}") from exc
        finally:
            client.close()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.client.quit(), 2)
            except _IO_ERRORS:
                pass
            conn.client.close()


class _StaleConnection(Exception):
    """The connection failed before the upstream accepted anything; safe to retry elsewhere."""


async def _reset(client: Connection) -> None:
    try:
        reply = await client.command(b"RSET")
    except _IO_ERRORS:
        client.close()
        return
    if reply.code != 250:
        client.close()


def _translate(reply: Reply, stage: str) -> Exception:
    text = f"upstream answered {reply.code} at {stage}: {reply.text}"
    if reply.code >= 500:
        return UpstreamRejected(text, reply.code, str(reply))
    return UpstreamUnavailable(text, reply.code, str(reply))
