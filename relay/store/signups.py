"""Signups of the hosted double opt-in (docs/SPEC.md §18, tables of migration 9), one set of queries for
both stores (relay/store/sql.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Mapping, Sequence

from relay.store.events_store import append_events
from relay.store.records import Event, OutboxItem, iso, parse_iso
from relay.store.rows import OUTBOX_INSERT, outbox_to_row
from relay.store.sql import Database

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


class SignupStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, signup: Signup, mail: OutboxItem, *, resend_cutoff: datetime, now: float) -> bool:
        """Record the signup and queue its confirmation mail in one transaction, unless this address
        got a confirmation mail from this account after `resend_cutoff`: then nothing is written (False).
        The conditional upsert holds under concurrency on both backends (one row per address and account)."""
        async with self.db.transaction() as tx:
            taken = await tx.fetchall(
                "INSERT INTO signup_mails (account, email, last_sent_at) VALUES (?,?,?) "
                "ON CONFLICT (account, email) DO UPDATE SET last_sent_at = excluded.last_sent_at "
                "WHERE signup_mails.last_sent_at <= ? RETURNING last_sent_at",
                (signup.account, signup.email, iso(signup.requested_at), iso(resend_cutoff)),
            )
            if not taken:
                return False
            marks = ",".join("?" * len(_COLUMNS))
            await tx.execute(f"INSERT INTO signups ({','.join(_COLUMNS)}) VALUES ({marks})", _to_row(signup))
            fresh = replace(mail, attempts=0, next_attempt_at=now, created_at=now, last_error="")
            await tx.fetchall(OUTBOX_INSERT, outbox_to_row(fresh, now))
        return True

    async def get(self, signup_id: int) -> Signup | None:
        rows = await self.db.fetchall("SELECT * FROM signups WHERE id = ?", (signup_id,))
        return _from_row(rows[0]) if rows else None

    async def mail_delivered(self, relay_id: str, at: datetime) -> int:
        return await self.db.write(
            "UPDATE signups SET mail_status = ?, mail_at = ? WHERE relay_id = ? AND mail_status <> ?",
            (DELIVERED, iso(at), relay_id, DELIVERED),
        )

    async def confirm(self, signup_id: int, at: datetime, ip: str, events: Sequence[Event] = ()) -> bool:
        """Mark confirmed once, with its events (signup_confirmed) in the same transaction: False when it
        already was (the first confirmation stands, and nothing is written)."""
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE signups SET confirmed_at = ?, confirm_ip = ? WHERE id = ? AND confirmed_at IS NULL",
                (iso(at), ip, signup_id),
            )
            if changed:
                await append_events(tx, events)
        return changed > 0

    async def for_address(self, email: str, accounts: Sequence[str], limit: int = 100) -> list[Signup]:
        in_accounts, params = self.db.dialect.any_of("account", accounts)
        rows = await self.db.fetchall(
            f"SELECT * FROM signups WHERE email = ? AND {in_accounts} ORDER BY requested_at DESC, id DESC LIMIT ?",
            (email, *params, limit),
        )
        return [_from_row(r) for r in rows]
