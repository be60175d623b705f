"""Which recipients already got a message whose transaction still ended in a 4xx, so that the
client's retry of the same message does not deliver to them a second time (docs/SPEC.md §3, issue 15).

A transaction can fail after part of it left: one recipient accepted upstream, the rest deferred and
the outbox (the store) unable to keep them. The client must retry (or the rest is lost) and will
send the same bytes to every recipient again. The retry is recognised by account, envelope sender
and a digest of the message bytes; the recipients remembered here are skipped. The memory is per
process, bounded in entries and in time (as long as clients keep retrying)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

# Postfix's maximal_queue_lifetime: a client retries for about five days.
RETRY_WINDOW_SECONDS = 5 * 24 * 3600.0
MAX_ENTRIES = 10_000


@dataclass
class RetryMemory:
    window: float = RETRY_WINDOW_SECONDS
    max_entries: int = MAX_ENTRIES
    clock: Callable[[], float] = time.monotonic
    # key -> (forget at, recipients already delivered); insertion order is age order
    _entries: dict[bytes, tuple[float, frozenset[str]]] = field(default_factory=dict)

    @staticmethod
    def _key(account: str, mail_from: str, content: bytes) -> bytes:
        digest = hashlib.sha256()
        digest.update(account.encode() + b"\0" + mail_from.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(content)
        return digest.digest()

    def delivered(self, account: str, mail_from: str, content: bytes) -> frozenset[str]:
        """The recipients an earlier attempt of this message already delivered to (nearly always
        none, and then without hashing the message)."""
        if not self._entries:
            return frozenset()
        key = self._key(account, mail_from, content)
        entry = self._entries.get(key)
        if entry is None:
            return frozenset()
        if entry[0] <= self.clock():
            del self._entries[key]
            return frozenset()
        return entry[1]

    def remember(self, account: str, mail_from: str, content: bytes, recipients: Iterable[str]) -> None:
        key = self._key(account, mail_from, content)
        earlier = self._entries.pop(key, (0.0, frozenset()))[1]
        self._entries[key] = (self.clock() + self.window, earlier | frozenset(recipients))
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]

    def forget(self, account: str, mail_from: str, content: bytes) -> None:
        """The message is fully taken care of: no retry is coming."""
        if self._entries:
            self._entries.pop(self._key(account, mail_from, content), None)

    def __len__(self) -> int:
        return len(self._entries)
