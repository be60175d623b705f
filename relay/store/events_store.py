"""The event store (docs/SPEC.md §17): events numbered per account, written inside the transaction of the
decision they tell about (`append_events`), read in order after a cursor.

Per-account numbering takes the account's row of `event_seq` with an UPDATE: a second writer of
the same account waits for the first to commit, so seq order is commit order and a reader that
has seen seq N never later finds a smaller one appear (the cursor is stable on PostgreSQL too).
"""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any, Sequence

from relay.store.records import Event, event_from_row, iso, parse_iso
from relay.store.sql import Database, Transaction

MAX_PAGE = 1000
_NEXT_SEQ = (
    "INSERT INTO event_seq (account, last) VALUES (?, ?) "
    "ON CONFLICT (account) DO UPDATE SET last = event_seq.last + ? RETURNING last"
)
_INSERT = "INSERT INTO events (account, seq, type, at, body) VALUES (?, ?, ?, ?, ?)"
_AFTER = "SELECT account, seq, type, at, body FROM events WHERE account = ? AND seq > ? ORDER BY seq LIMIT ?"


class EventStore(abc.ABC):
    @abc.abstractmethod
    async def after(self, account: str, cursor: int, limit: int = 100) -> list[Event]:
        """The account's events with seq > cursor, oldest first."""

    @abc.abstractmethod
    async def purge_older_than(self, when: datetime) -> int: ...


def _by_account(events: Sequence[Event]) -> dict[str, list[Event]]:
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.account, []).append(event)
    return grouped


def _row(event: Event, seq: int) -> tuple[Any, ...]:
    return (event.account, seq, event.type, iso(event.at), event.body())


async def append_events(tx: Transaction, events: Sequence[Event]) -> None:
    # Accounts in one order in every transaction: two writers never wait on each other in a cycle.
    for account, items in sorted(_by_account(events).items()):
        rows = await tx.fetchall(_NEXT_SEQ, (account, len(items), len(items)))
        first = int(rows[0][0]) - len(items) + 1
        await tx.executemany(_INSERT, [_row(e, first + i) for i, e in enumerate(items)])


def _event(row: Any) -> Event:
    at = parse_iso(row["at"])
    assert at is not None
    return event_from_row(row["account"], int(row["seq"]), row["type"], at, row["body"])


class SqlEvents(EventStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def after(self, account: str, cursor: int, limit: int = 100) -> list[Event]:
        rows = await self.db.fetchall(_AFTER, (account, cursor, min(limit, MAX_PAGE)))
        return [_event(r) for r in rows]

    async def purge_older_than(self, when: datetime) -> int:
        return await self.db.write("DELETE FROM events WHERE at < ?", (iso(when),))
