"""Signups of the hosted double opt-in (docs/SPEC.md §18, tables of migration 9), one set of queries for
both backends: written with `?` marks, numbered for PostgreSQL in `_Sql`, the one place they differ."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, AsyncIterator, Mapping, Sequence

from relay.store.events_store import append_postgres, append_sqlite
from relay.store.records import Event, OutboxItem, iso, parse_iso

QUEUED = "queued"  # in the outbox, on its way to the upstream
DELIVERED = "delivered"  # the upstream accepted the confirmation mail


@dataclass(frozen=True)
class Signup:
    """One signup request: what the form showed, where and from which address it came, its mail, its confirmation."""

    id: int
    account: str
    email: str
    stream: str
    scope: str
    topic: str
    statement: str
    source_url: str
    signup_ip: str
    frequency: str
    language: str
    requested_at: datetime
    relay_id: str
    requested_by: str = ""
    message_id: str = ""
    mail_status: str = QUEUED
    mail_at: datetime | None = None
    confirmed_at: datetime | None = None
    confirm_ip: str = ""


_COLUMNS = tuple(f.name for f in fields(Signup))
_TIMES = ("requested_at", "mail_at", "confirmed_at")


def _to_row(signup: Signup) -> tuple[Any, ...]:
    return tuple(iso(getattr(signup, c)) if c in _TIMES else getattr(signup, c) for c in _COLUMNS)


def _from_row(row: Mapping[str, Any]) -> Signup:
    values = {c: row[c] for c in _COLUMNS}
    for c in _TIMES:
        values[c] = parse_iso(values[c])
    values["id"] = int(values["id"])
    return Signup(**values)


class _Sql:
    """SQLite (aiosqlite, `?`) or PostgreSQL (asyncpg, `$1`) behind the same three calls."""

    def __init__(self, db: Any, postgres: bool) -> None:
        self.db = db
        self.postgres = postgres

    def text(self, sql: str) -> str:
        if not self.postgres:
            return sql
        count = iter(range(1, 1000))
        return re.sub(r"\?", lambda _: f"${next(count)}", sql)

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        if self.postgres:
            return list(await self.db.fetch(self.text(sql), *params))
        return list(await self.db.fetchall(sql, params))

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self.postgres:
            return int(await self.db.write(self.text(sql), *params))
        return int(await self.db.write(sql, params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
        async with self.db.transaction() as conn:
            yield _Tx(self, conn)


class _Tx:
    def __init__(self, sql: _Sql, conn: Any) -> None:
        self.sql = sql
        self.conn = conn

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        if self.sql.postgres:
            return list(await self.conn.fetch(self.sql.text(sql), *params))
        return list(await self.conn.execute_fetchall(sql, params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        if self.sql.postgres:
            tag = str(await self.conn.execute(self.sql.text(sql), *params))
            tail = tag.rsplit(" ", 1)[-1]
            return int(tail) if tail.isdigit() else 0
        cursor = await self.conn.execute(sql, params)
        return int(cursor.rowcount)

    async def append_events(self, events: Sequence[Event]) -> None:
        if self.sql.postgres:
            await append_postgres(self.conn, events)
        else:
            await append_sqlite(self.conn, events)


class SignupStore:
    def __init__(self, db: Any, *, postgres: bool) -> None:
        self.sql = _Sql(db, postgres)

    async def create(self, signup: Signup, mail: OutboxItem, *, resend_cutoff: datetime, now: float) -> bool:
        """Record the signup and queue its confirmation mail in one transaction, unless this address
        got a confirmation mail from this account after `resend_cutoff`: then nothing is written (False).
        The conditional upsert holds under concurrency on both backends (one row per address and account)."""
        async with self.sql.transaction() as tx:
            taken = await tx.rows(
                "INSERT INTO signup_mails (account, email, last_sent_at) VALUES (?,?,?) "
                "ON CONFLICT (account, email) DO UPDATE SET last_sent_at = excluded.last_sent_at "
                "WHERE signup_mails.last_sent_at <= ? RETURNING last_sent_at",
                (signup.account, signup.email, iso(signup.requested_at), iso(resend_cutoff)),
            )
            if not taken:
                return False
            marks = ",".join("?" * len(_COLUMNS))
            await tx.execute(f"INSERT INTO signups ({','.join(_COLUMNS)}) VALUES ({marks})", _to_row(signup))
            await tx.execute(
                "INSERT INTO outbox (relay_id, account, stream, mail_from, rcpt_tos, content, attempts, "
                "next_attempt_at, created_at, last_error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    mail.relay_id, mail.account, mail.stream, mail.mail_from, json.dumps(list(mail.rcpt_tos)),
                    mail.content, 0, now, now, "",
                ),
            )
        return True

    async def get(self, signup_id: int) -> Signup | None:
        rows = await self.sql.rows("SELECT * FROM signups WHERE id = ?", (signup_id,))
        return _from_row(rows[0]) if rows else None

    async def mail_delivered(self, relay_id: str, at: datetime) -> int:
        return await self.sql.write(
            "UPDATE signups SET mail_status = ?, mail_at = ? WHERE relay_id = ? AND mail_status <> ?",
            (DELIVERED, iso(at), relay_id, DELIVERED),
        )

    async def confirm(self, signup_id: int, at: datetime, ip: str, events: Sequence[Event] = ()) -> bool:
        """Mark confirmed once, with its events (signup_confirmed) in the same transaction: False when it
        already was (the first confirmation stands, and nothing is written)."""
        async with self.sql.transaction() as tx:
            changed = await tx.execute(
                "UPDATE signups SET confirmed_at = ?, confirm_ip = ? WHERE id = ? AND confirmed_at IS NULL",
                (iso(at), ip, signup_id),
            )
            if changed:
                await tx.append_events(events)
        return changed > 0

    async def for_address(self, email: str, accounts: Sequence[str], limit: int = 100) -> list[Signup]:
        marks = ",".join("?" * len(accounts))
        rows = await self.sql.rows(
            f"SELECT * FROM signups WHERE email = ? AND account IN ({marks}) ORDER BY requested_at DESC, id DESC LIMIT ?",
            (email, *accounts, limit),
        )
        return [_from_row(r) for r in rows]
