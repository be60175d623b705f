"""The SMTP edge: aiosmtpd's protocol with connection limits, enhanced status codes on its built-in
replies, and a lock-out for repeated bad passwords. Policy lives in the handler."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, syntax

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
    """Failures per client address; at `max_failures` the address is locked out for a while."""

    max_failures: int
    lockout_seconds: float
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
        count, first = self.failures.get(ip, (0, now))
        if now - first > self.lockout_seconds:
            count, first = 0, now
        count += 1
        if count >= self.max_failures:
            self.failures.pop(ip, None)
            self.locked_until[ip] = now + self.lockout_seconds
            return True
        self.failures[ip] = (count, first)
        return False

    def succeeded(self, ip: str) -> None:
        self.failures.pop(ip, None)


def peer_ip(peer: Any) -> str:
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return str(peer or "")


class RelaySMTP(SMTP):
    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._admitted_ip: str | None = None
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
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = replies.with_enhanced_code(status)
        await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # From the 354 on the client is mid-message: a shutdown lets it finish within the grace
        # instead of cutting it off with 421 (busy was only set once the whole body had arrived).
        self.busy = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.busy = False

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: say why before hanging up on a silent client.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write((replies.IDLE_TIMEOUT + "\r\n").encode())
        super()._timeout_cb()

    def close_with(self, reply: str) -> None:
        """Say why and hang up (lock-out, shutdown)."""
        if self.transport is not None:
            try:
                self.transport.write((reply + "\r\n").encode())
            finally:
                self.transport.close()
