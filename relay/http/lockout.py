"""Failed admin credentials per client address (docs/SPEC.md §17): after MAX_FAILURES wrong bearer tokens or
UI sign-ins within WINDOW_SECONDS, the address gets 429 with Retry-After until LOCKOUT_SECONDS pass.

One table serves the bearer check and the sign-in form, so switching between them gains nothing.
IPv6 clients count per /64 (one host usually owns a whole /64 and can pick any address in it).
The table is bounded: at most MAX_TRACKED addresses; the one whose last failure is oldest goes first.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

MAX_FAILURES = 20
WINDOW_SECONDS = 600.0
LOCKOUT_SECONDS = 600.0
MAX_TRACKED = 10_000


def client_key(remote: str | None) -> str:
    """The address a failure is charged to: the IPv4 address, or the IPv6 /64."""
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return remote or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Client:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    last: float = 0.0


class FailedAttempts:
    """Counts failures per client key; `retry_after` says how long a locked-out client must wait."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        lockout: float = LOCKOUT_SECONDS,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_tracked = max_tracked
        # Ordered by last failure, oldest first: pruning and eviction look only at the front.
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, key: str) -> int | None:
        """Whole seconds until `key` may try again, or None when it is not locked out."""
        client = self._clients.get(key)
        if client is None:
            return None
        left = client.locked_until - self._clock()
        return max(1, math.ceil(left)) if left > 0 else None

    def failed(self, key: str) -> int:
        """Count one failure. Returns the number of failures in the window when this one locks `key`
        out, else 0."""
        now = self._clock()
        self._prune(now)
        client = self._clients.pop(key, None) or _Client()
        client.last = now
        self._clients[key] = client  # to the end: the most recent
        failures = client.failures
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        locked = 0
        if len(failures) >= self.max_failures and client.locked_until <= now:
            client.locked_until = now + self.lockout
            locked = len(failures)
            failures.clear()
        while len(self._clients) > self.max_tracked:
            self._clients.popitem(last=False)
        return locked

    def _prune(self, now: float) -> None:
        # An entry whose last failure left the window and whose lock-out ended says nothing any more.
        horizon = max(self.window, self.lockout)
        while self._clients:
            key, client = next(iter(self._clients.items()))
            if client.last > now - horizon or client.locked_until > now:
                break
            del self._clients[key]
