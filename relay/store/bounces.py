"""Bounces (docs/SPEC.md §15): every DSN that reached bounce+ID@, what it said about its recipient, and the
count of permanent failures that turns an address into a hard bounce. One query set for both stores."""

from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from relay.store.records import iso, parse_iso
from relay.store.sql import Database

KINDS = ("hard", "soft", "unknown")  # the metric's and the API's kinds


@dataclass(frozen=True)
class Bounce:
    account: str  # "" when the DSN names no delivery the relay knows (kept for review)
    email: str
    kind: str  # hard | soft | unknown
    received_at: datetime
    permanent: bool = False  # a 5.x.x failure: counts toward [bounces] hard_limit
    status: str = ""  # enhanced status code
    action: str = ""
    diagnostic: str = ""
    delivery_id: int | None = None
    relay_id: str = ""
    source: str = "verp"  # verp | api | cli
    detail: str = ""  # why it is unknown, or what it set in motion
    id: int = 0


_COLUMNS = tuple(f.name for f in fields(Bounce) if f.name != "id")


def _row(bounce: Bounce) -> tuple[Any, ...]:
    values = []
    for name in _COLUMNS:
        value = getattr(bounce, name)
        values.append(iso(value) if name == "received_at" else int(value) if name == "permanent" else value)
    return tuple(values)


def _from_row(row: Any) -> Bounce:
    values = {name: row[name] for name in _COLUMNS}
    values["received_at"] = parse_iso(values["received_at"])
    values["permanent"] = bool(values["permanent"])
    return Bounce(id=int(row["id"]), **values)


class BounceStore(abc.ABC):
    @abc.abstractmethod
    async def add(self, bounce: Bounce, report: bytes) -> Bounce:
        """Record a bounce with the DSN as received; returns it with its id."""

    @abc.abstractmethod
    async def list(
        self, *, account: str | None = None, kind: str | None = None, email: str | None = None, limit: int = 1000
    ) -> list[Bounce]:
        """Newest first."""

    @abc.abstractmethod
    async def report(self, bounce_id: int) -> bytes | None: ...

    @abc.abstractmethod
    async def permanent_since(self, account: str, email: str, since: datetime) -> int:
        """Permanent failures recorded for this address and account at or after `since`."""


_SELECT = "SELECT id, " + ", ".join(_COLUMNS) + " FROM bounces"
_INSERT = (
    f"INSERT INTO bounces ({', '.join(_COLUMNS)}, report) VALUES ({','.join('?' * (len(_COLUMNS) + 1))}) RETURNING id"
)


class SqlBounces(BounceStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, bounce: Bounce, report: bytes) -> Bounce:
        (row,) = await self.db.write_returning(_INSERT, (*_row(bounce), report))
        return Bounce(**{**{n: getattr(bounce, n) for n in _COLUMNS}, "id": int(row[0])})

    async def list(
        self, *, account: str | None = None, kind: str | None = None, email: str | None = None, limit: int = 1000
    ) -> list[Bounce]:
        given = {c: v for c, v in (("account", account), ("kind", kind), ("email", email)) if v is not None}
        where = (" WHERE " + " AND ".join(f"{c}=?" for c in given)) if given else ""
        rows = await self.db.fetchall(f"{_SELECT}{where} ORDER BY id DESC LIMIT ?", (*given.values(), limit))
        return [_from_row(r) for r in rows]

    async def report(self, bounce_id: int) -> bytes | None:
        row = await self.db.fetchone("SELECT report FROM bounces WHERE id=?", (bounce_id,))
        return bytes(row["report"]) if row else None

    async def permanent_since(self, account: str, email: str, since: datetime) -> int:
        row = await self.db.fetchone(
            "SELECT count(*) FROM bounces WHERE account=? AND email=? AND permanent=1 AND received_at >= ?",
            (account, email, iso(since)),
        )
        return int(row[0]) if row else 0
