"""The embedded store: one SQLite file in WAL mode via aiosqlite, migrated on open."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
import urllib.parse
from contextlib import asynccontextmanager
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence

import aiosqlite

from policies.facts import ConsentRecord, Suppression
from relay import events as ev
from relay.errors import StoreUnavailable
from relay.store.bounces import SqliteBounces
from relay.store import base
from relay.store.records import (
    AccountState,
    AuditEntry,
    DecisionRecord,
    DeliveryRecord,
    OutboxItem,
    QuarantineItem,
    iso,
    parse_iso,
    utcnow,
)
from relay.store.rows import (
    CONSENT_COLUMNS,
    CONSENT_CONTENT_COLUMNS,
    abandoned_release_audit,
    audit_from_row,
    consent_from_row,
    consent_merge_expression,
    consent_to_row,
    decision_from_row,
    decision_to_row,
    delivery_from_row,
    delivery_to_row,
    claimed_outbox,
    quarantine_from_row,
    split_quarantine_counts,
    suppression_from_row,
)
from relay.store.webhooks_store import SqliteWebhookStates
from relay.store.events_store import SqliteEvents, append_sqlite
from relay.store.schema import MIGRATIONS
from relay.store.sqlite_complaints import SqliteComplaints
from relay.store.signups import SignupStore

_CHUNK = 500  # SQLite's host-parameter limit is 32766; keep IN lists modest
# Below this much free space on its file system the store reports itself not ready (/readyz).
MIN_FREE_BYTES = 1 << 20


class SqliteDatabase:
    """A writer connection serialised by a lock, and a reader connection (WAL lets them overlap)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._while_busy(lambda: self._migrate(self._conn(True)))
            self._reader = await self._connect()
            self._point = self._connect_point_reader()
        except BaseException as exc:
            await self.close()  # a half-open store would keep its connection threads (and the process) alive
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc
            raise

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=self.timeout)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            await self._while_busy(lambda: self._enter_wal(conn))
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            await conn.close()
            raise
        return conn

    @staticmethod
    async def _enter_wal(conn: aiosqlite.Connection) -> None:
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode=WAL"))
        mode = str(rows[0][0]).lower() if rows else ""
        if mode != "wal":  # SQLite keeps the old mode, without an error, when it cannot switch
            raise sqlite3.OperationalError(f"cannot switch {conn} to WAL (journal_mode is {mode!r})")

    async def _while_busy(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Retry `attempt` while another connection holds the file, within the store's timeout.

        Fresh files are contended when several processes start at once (`[smtp] workers = N`), and
        SQLite answers some of that contention with an immediate SQLITE_BUSY that bypasses
        busy_timeout (switching to WAL needs an exclusive lock while another connection reads the
        header or runs WAL recovery), so the back-off is ours.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                await attempt()
                return
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                left = deadline - time.monotonic()
                if not busy or left <= 0:
                    raise
                await asyncio.sleep(min(delay * (1 + random.random()), left))
                delay = min(delay * 2, 0.2)

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for another instance's migration
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = await conn.execute_fetchall("SELECT version FROM schema_version")
            version = rows[0][0] if rows else 0
            if not rows:
                await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number <= version:
                    continue
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("UPDATE schema_version SET version = ?", (number,))
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise

    def _connect_point_reader(self) -> sqlite3.Connection:
        """A read-only connection used on the event loop itself, for reads by primary key.

        aiosqlite hands every query to its thread and back: for a one-row lookup on every MAIL
        FROM the hand-offs cost far more than the lookup (an A/B in one benchmark run, two workers
        on two cores: +2-4% msg/s at concurrency 10, +9-10% at 50). The account_state table is a
        few pages, always in SQLite's and the OS's cache, so the read does not wait on the disk;
        WAL readers never wait for writers, and with busy_timeout 0 anything unusual fails at
        once and goes the threaded way instead. Only primary-key reads may come here."""
        conn = sqlite3.connect(
            f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=0")
        return conn

    async def close(self) -> None:
        if self._point is not None:
            self._point.close()
            self._point = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    def _conn(self, writer: bool) -> aiosqlite.Connection:
        conn = self._writer if writer else self._reader
        if conn is None:
            raise StoreUnavailable("store is not open")
        return conn

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            async with asyncio.timeout(self.timeout):
                return list(await self._conn(False).execute_fetchall(sql, params))
        except (sqlite3.Error, TimeoutError, ValueError) as exc:
            raise StoreUnavailable(f"store read failed: {exc or type(exc).__name__}") from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetch_point(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """fetchone for a lookup by primary key: on the loop, no thread hand-off (see
        _connect_point_reader); the threaded reader when that fails."""
        conn = self._point
        if conn is not None:
            try:
                row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
                return row
            except sqlite3.Error:
                pass
        return await self.fetchone(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the writer; any failure rolls back and becomes StoreUnavailable."""
        conn = self._conn(True)
        try:
            async with asyncio.timeout(self.timeout):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise StoreUnavailable("store write lock timed out") from exc
        try:
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"store write failed: {exc}") from exc
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    await conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(f"store write failed: {exc}") from exc
                raise
        finally:
            self._lock.release()

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.transaction() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class SqliteAccountStates(base.AccountStateStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def get(self, account: str) -> AccountState:
        row = await self.db.fetch_point("SELECT * FROM account_state WHERE account = ?", (account,))
        return _state_from_row(row) if row else AccountState(account)

    async def all(self) -> list[AccountState]:
        return [_state_from_row(r) for r in await self.db.fetchall("SELECT * FROM account_state ORDER BY account")]

    async def set(self, state: AccountState, *, actor: str, note: str) -> None:
        now = utcnow()
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO account_state (account, state, reason, paused_streams, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (account) DO UPDATE SET state=excluded.state, reason=excluded.reason, "
                "paused_streams=excluded.paused_streams, updated_at=excluded.updated_at",
                (state.account, state.state, state.reason, ",".join(sorted(state.paused_streams)), iso(now)),
            )
            await _insert_audit(
                conn,
                AuditEntry(actor, f"account.{state.state}", state.account, note, {"state": state.state}, now),
            )
            await append_sqlite(conn, [ev.account_state_event(state, actor, note, now)])


def _state_from_row(row: sqlite3.Row) -> AccountState:
    streams = frozenset(s for s in row["paused_streams"].split(",") if s)
    return AccountState(row["account"], row["state"], row["reason"], streams, parse_iso(row["updated_at"]))


async def _insert_audit(conn: aiosqlite.Connection, entry: AuditEntry) -> None:
    await conn.execute(
        "INSERT INTO audit (at, actor, action, target, note, detail) VALUES (?,?,?,?,?,?)",
        (iso(entry.at or utcnow()), entry.actor, entry.action, entry.target, entry.note, json.dumps(entry.detail)),
    )


class SqliteConsents(base.ConsentStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def find_consents(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[ConsentRecord]]:
        found: dict[str, list[ConsentRecord]] = {}
        unique = list(dict.fromkeys(emails))
        for chunk in _chunks(unique):
            rows = await self.db.fetchall(
                f"SELECT * FROM consents WHERE email IN ({_marks(len(chunk))}) AND scope IN ({_marks(len(scopes))})",
                (*chunk, *scopes),
            )
            for row in rows:
                found.setdefault(row["email"], []).append(consent_from_row(row))
        return found

    async def find_suppressions(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[Suppression]]:
        found: dict[str, list[Suppression]] = {}
        unique = list(dict.fromkeys(emails))
        for chunk in _chunks(unique):
            rows = await self.db.fetchall(
                f"SELECT * FROM suppressions WHERE email IN ({_marks(len(chunk))}) AND scope IN ({_marks(len(scopes))})",
                (*chunk, *scopes),
            )
            for row in rows:
                found.setdefault(row["email"], []).append(suppression_from_row(row))
        return found

    async def upsert_consents(self, records: Iterable[ConsentRecord], *, now: datetime) -> tuple[int, int]:
        stamp = iso(now)
        columns = ",".join(CONSENT_COLUMNS)
        merged = {c: consent_merge_expression(c) for c in CONSENT_COLUMNS}
        compare = " OR ".join(f"({merged[c]}) IS NOT consents.{c}" for c in CONSENT_CONTENT_COLUMNS)
        updates = ",".join(f"{c}={merged[c]}" for c in CONSENT_COLUMNS if c != "created_at")
        sql = (
            f"INSERT INTO consents ({columns}) VALUES ({_marks(len(CONSENT_COLUMNS))}) "
            f"ON CONFLICT (email, scope, topic) DO UPDATE SET {updates} WHERE {compare}"
        )
        written = total = 0
        rows = iter(records)
        async with self.db.transaction() as conn:
            # The next batch is converted while the previous one runs in aiosqlite's thread.
            pending: asyncio.Future[int] | None = None
            try:
                while True:
                    batch = [consent_to_row(r, stamp) for r in islice(rows, 5000)]
                    if pending is not None:
                        written += await pending
                        pending = None
                    if not batch:
                        break
                    total += len(batch)
                    pending = asyncio.ensure_future(_upsert_batch(conn, sql, batch))
            finally:
                if pending is not None:  # a bad record: let the running batch finish before the rollback
                    await asyncio.gather(pending, return_exceptions=True)
        return written, total - written

    async def revoke(self, scope: str, email: str, topic: str | None, *, via: str, at: datetime) -> int:
        sql = "UPDATE consents SET revoked_at=?, revoked_via=?, updated_at=? WHERE scope=? AND email=? AND revoked_at IS NULL"
        params: list[Any] = [iso(at), via, iso(at), scope, email]
        if topic is not None:
            sql += " AND topic=?"
            params.append(topic)
        return await self.db.write(sql, params)

    async def touch(self, scopes: Sequence[str], email: str, kind: str, at: datetime) -> int:
        column = {
            "purchase": "last_purchase_at",
            "confirmation": "confirmed_at",
        }.get(kind, "last_interaction_at")
        stamp = iso(at)
        # Every stamp only moves forward: a late-reported older interaction must not shorten a
        # consent's life. ISO times in UTC with fixed precision compare correctly as text.
        forward = "{0}=CASE WHEN {0} IS NULL OR {0} < ?1 THEN ?1 ELSE {0} END"
        sets = [forward.format("last_interaction_at")]
        if column != "last_interaction_at":
            sets.insert(0, forward.format(column))
        sql = (
            f"UPDATE consents SET {', '.join(sets)}, updated_at=?1 "
            f"WHERE email=?2 AND scope IN ({', '.join(f'?{i + 3}' for i in range(len(scopes)))}) AND revoked_at IS NULL"
        )
        return await self.db.write(sql, (stamp, email, *scopes))

    async def add_suppression(self, suppression: Suppression, *, note: str = "") -> bool:
        at = suppression.created_at or utcnow()
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO suppressions (scope, email, topic, reason, via, note, created_at) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (email, scope, topic, reason) DO NOTHING",
                (suppression.scope, suppression.email, suppression.topic, suppression.reason, suppression.via, note, iso(at)),
            )
            if cursor.rowcount > 0:
                await append_sqlite(conn, [ev.suppression_event(suppression, at, note=note)])
        return cursor.rowcount > 0

    async def remove_suppression(self, scope: str, email: str, reason: str | None = None) -> int:
        sql = "DELETE FROM suppressions WHERE scope=? AND email=?"
        params: list[Any] = [scope, email]
        if reason:
            sql += " AND reason=?"
            params.append(reason)
        async with self.db.transaction() as conn:
            rows = list(await conn.execute_fetchall(sql + " RETURNING scope, email, topic, reason, via", params))
            now = utcnow()
            await append_sqlite(conn, [
                ev.suppression_event(Suppression(r["email"], r["scope"], r["topic"], r["reason"], r["via"]), now, added=False)
                for r in rows
            ])
        return len(rows)

    async def list_suppressions(self, scope: str | None = None, limit: int = 1000) -> list[Suppression]:
        if scope is None:
            rows = await self.db.fetchall("SELECT * FROM suppressions ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = await self.db.fetchall(
                "SELECT * FROM suppressions WHERE scope=? ORDER BY id DESC LIMIT ?", (scope, limit)
            )
        return [suppression_from_row(r) for r in rows]

    async def count(self) -> int:
        row = await self.db.fetchone("SELECT count(*) FROM consents")
        return int(row[0]) if row else 0


async def _upsert_batch(conn: aiosqlite.Connection, sql: str, batch: list[list[Any]]) -> int:
    before = conn.total_changes
    await conn.executemany(sql, batch)
    return conn.total_changes - before


class SqliteDecisions(base.DecisionStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def record(
        self, decisions: Sequence[DecisionRecord], deliveries: Sequence[DeliveryRecord], events: Sequence[ev.Event] = ()
    ) -> None:
        async with self.db.transaction() as conn:
            await append_sqlite(conn, events)
            if decisions:
                await conn.executemany(
                    "INSERT INTO decisions (relay_id, message_id, account, stream, mail_from, recipients, outcome, "
                    "rules, findings, created_at, misses) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [decision_to_row(d) for d in decisions],
                )
            if deliveries:
                await conn.executemany(
                    "INSERT OR REPLACE INTO deliveries (id, relay_id, message_id, account, stream, scope, topic, email, "
                    "consent_id, status, delivered_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [delivery_to_row(d) for d in deliveries],
                )

    async def reserve_ids(self, name: str, count: int) -> int:
        async with self.db.transaction() as conn:
            await conn.execute("INSERT OR IGNORE INTO id_blocks (name, next_id) VALUES (?, 1)", (name,))
            rows = await conn.execute_fetchall("SELECT next_id FROM id_blocks WHERE name=?", (name,))
            first = int(list(rows)[0][0])
            await conn.execute("UPDATE id_blocks SET next_id=? WHERE name=?", (first + count, name))
            return first

    async def for_relay_id(self, relay_id: str) -> list[DecisionRecord]:
        rows = await self.db.fetchall("SELECT * FROM decisions WHERE relay_id=? ORDER BY id", (relay_id,))
        return [decision_from_row(r) for r in rows]

    async def deliveries_to(self, email: str, accounts: Sequence[str], limit: int = 1000) -> list[DeliveryRecord]:
        rows = await self.db.fetchall(
            f"SELECT * FROM deliveries WHERE email=? AND account IN ({_marks(len(accounts))}) "
            "ORDER BY delivered_at DESC LIMIT ?",
            (email, *accounts, limit),
        )
        return [delivery_from_row(r) for r in rows]

    async def delivery(self, delivery_id: int) -> DeliveryRecord | None:
        row = await self.db.fetchone("SELECT * FROM deliveries WHERE id=?", (delivery_id,))
        return delivery_from_row(row) if row else None

    async def deliveries_by_message_id(self, message_id: str) -> list[DeliveryRecord]:
        rows = await self.db.fetchall("SELECT * FROM deliveries WHERE message_id=?", (message_id,))
        return [delivery_from_row(r) for r in rows]


class SqliteOutbox(base.OutboxStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def enqueue(self, items: Sequence[OutboxItem], *, now: float) -> list[int]:
        ids = []
        async with self.db.transaction() as conn:
            for item in items:
                cursor = await conn.execute(
                    "INSERT INTO outbox (relay_id, account, stream, mail_from, rcpt_tos, content, attempts, "
                    "next_attempt_at, created_at, last_error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        item.relay_id,
                        item.account,
                        item.stream,
                        item.mail_from,
                        json.dumps(list(item.rcpt_tos)),
                        item.content,
                        item.attempts,
                        item.next_attempt_at or now,
                        item.created_at or now,
                        item.last_error,
                    ),
                )
                ids.append(int(cursor.lastrowid or 0))
        return ids

    async def claim_due(self, *, now: float, owner: str, lease_seconds: float, limit: int) -> list[OutboxItem]:
        async with self.db.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT * FROM outbox WHERE status='pending' AND next_attempt_at <= ? AND lease_until <= ? "
                    "ORDER BY next_attempt_at LIMIT ?",
                    (now, now, limit),
                )
            )
            if rows:
                await conn.executemany(
                    "UPDATE outbox SET lease_owner=?, lease_until=?, sending_since=0, "
                    "uncertain=uncertain + (sending_since > 0) WHERE id=?",
                    [(owner, now + lease_seconds, r["id"]) for r in rows],
                )
        return [claimed_outbox(r, r["sending_since"] > 0) for r in rows]

    async def renew(self, item_ids: Sequence[int], owner: str, *, lease_until: float) -> set[int]:
        if not item_ids:
            return set()
        async with self.db.transaction() as conn:
            await conn.execute(
                f"UPDATE outbox SET lease_until=? WHERE lease_owner=? AND status='pending' AND id IN ({_marks(len(item_ids))})",
                (lease_until, owner, *item_ids),
            )
            rows = await conn.execute_fetchall(
                f"SELECT id FROM outbox WHERE lease_owner=? AND status='pending' AND id IN ({_marks(len(item_ids))})",
                (owner, *item_ids),
            )
        return {int(r[0]) for r in rows}

    async def fence(self, item_id: int, owner: str, *, now: float, lease_until: float) -> bool:
        changed = await self.db.write(
            "UPDATE outbox SET lease_until=?, sending_since=? WHERE id=? AND lease_owner=? AND status='pending'",
            (lease_until, now, item_id, owner),
        )
        return changed == 1

    async def release(self, item_ids: Sequence[int], owner: str) -> None:
        if item_ids:
            await self.db.write(
                f"UPDATE outbox SET lease_owner='', lease_until=0 WHERE lease_owner=? AND id IN ({_marks(len(item_ids))})",
                (owner, *item_ids),
            )

    async def delivered(self, item_id: int, owner: str) -> None:
        await self.db.write("DELETE FROM outbox WHERE id=? AND lease_owner=?", (item_id, owner))

    async def retry_later(
        self,
        item_id: int,
        owner: str,
        *,
        next_attempt_at: float,
        error: str,
        rcpt_tos: Sequence[str] | None = None,
        uncertain: bool = False,
    ) -> None:
        await self.db.write(
            "UPDATE outbox SET attempts=attempts+1, next_attempt_at=?, last_error=?, lease_owner='', lease_until=0, "
            "sending_since=0, uncertain=uncertain+?, rcpt_tos=coalesce(?, rcpt_tos) WHERE id=? AND lease_owner=?",
            (
                next_attempt_at, error[:1000], int(uncertain), None if rcpt_tos is None else json.dumps(list(rcpt_tos)),
                item_id, owner,
            ),
        )

    async def give_up(self, item_id: int, owner: str, *, error: str) -> None:
        await self.db.write(
            "UPDATE outbox SET attempts=attempts+1, status='failed', last_error=?, lease_owner='', lease_until=0, "
            "sending_since=0 WHERE id=? AND lease_owner=?",
            (error[:1000], item_id, owner),
        )

    async def depth(self) -> int:
        row = await self.db.fetchone("SELECT count(*) FROM outbox WHERE status='pending'")
        return int(row[0]) if row else 0


_EVENT_COLUMNS = "account, stream, relay_id, rcpt_tos, rules"


def _quarantine_events(row: Any, status: str, audit: AuditEntry) -> list[ev.Event]:
    return ev.quarantine_event(
        status, row["account"], row["stream"], row["relay_id"], json.loads(row["rcpt_tos"]), json.loads(row["rules"]),
        audit.actor, audit.at or utcnow(),
    )


class SqliteQuarantine(base.QuarantineStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def hold(self, item: QuarantineItem) -> None:
        await self.db.write(
            "INSERT INTO quarantine (id, relay_id, account, stream, mail_from, rcpt_tos, subject, rules, findings, "
            "content, size, received_at, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                item.id,
                item.relay_id,
                item.account,
                item.stream,
                item.mail_from,
                json.dumps(list(item.rcpt_tos)),
                item.subject,
                json.dumps(list(item.rules)),
                json.dumps(list(item.findings)),
                item.content,
                item.size,
                iso(item.received_at),
                item.status,
            ),
        )

    async def get(self, item_id: str, *, with_content: bool = False) -> QuarantineItem | None:
        row = await self.db.fetchone("SELECT * FROM quarantine WHERE id=? AND status='held'", (item_id,))
        return quarantine_from_row(row, with_content) if row else None

    async def list(
        self,
        *,
        account: str | None = None,
        rule: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[QuarantineItem], str | None]:
        where = ["status='held'"]
        params: list[Any] = []
        if account:
            where.append("account=?")
            params.append(account)
        if rule:
            where.append("EXISTS (SELECT 1 FROM json_each(quarantine.rules) WHERE value = ?)")
            params.append(rule)
        if since:
            where.append("received_at >= ?")
            params.append(iso(since))
        if before:
            where.append("received_at < ?")
            params.append(iso(before))
        if cursor:
            at, _, last_id = cursor.partition("|")
            where.append("(received_at < ? OR (received_at = ? AND id < ?))")
            params += [at, at, last_id]
        columns = "id, relay_id, account, stream, mail_from, rcpt_tos, subject, rules, findings, size, received_at, status, x'' AS content"
        rows = await self.db.fetchall(
            f"SELECT {columns} FROM quarantine WHERE {' AND '.join(where)} ORDER BY received_at DESC, id DESC LIMIT ?",
            (*params, limit + 1),
        )
        items = [quarantine_from_row(r, False) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = f"{last['received_at']}|{last['id']}"
        return items, next_cursor

    async def set_status(self, item_id: str, status: str, audit: AuditEntry) -> bool:
        async with self.db.transaction() as conn:
            rows = list(await conn.execute_fetchall(
                "UPDATE quarantine SET status=?, content=CASE WHEN ?='deleted' THEN x'' ELSE content END "
                f"WHERE id=? AND status='held' RETURNING {_EVENT_COLUMNS}",
                (status, status, item_id),
            ))
            if not rows:
                return False
            await _insert_audit(conn, audit)
            await append_sqlite(conn, _quarantine_events(rows[0], status, audit))
        return True

    async def claim_release(self, item_id: str, at: datetime | None = None) -> QuarantineItem | None:
        # BEGIN IMMEDIATE serialises writers across processes: of two claims, one sees 'held'.
        async with self.db.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "UPDATE quarantine SET status='releasing', claimed_at=? WHERE id=? AND status='held' RETURNING *",
                    (iso(at or utcnow()), item_id),
                )
            )
        return quarantine_from_row(rows[0], True) if rows else None

    async def unclaim_release(self, item_id: str) -> None:
        await self.db.write("UPDATE quarantine SET status='held' WHERE id=? AND status='releasing'", (item_id,))

    async def finish_release(self, item_id: str, audit: AuditEntry) -> bool:
        async with self.db.transaction() as conn:
            rows = list(await conn.execute_fetchall(
                f"UPDATE quarantine SET status='released' WHERE id=? AND status='releasing' RETURNING {_EVENT_COLUMNS}",
                (item_id,),
            ))
            if not rows:
                return False
            await _insert_audit(conn, audit)
            await append_sqlite(conn, _quarantine_events(rows[0], "released", audit))
        return True

    async def count(self) -> int:
        row = await self.db.fetchone("SELECT count(*) FROM quarantine WHERE status='held'")
        return int(row[0]) if row else 0

    async def counts(
        self, *, since: datetime | None = None, before: datetime | None = None
    ) -> tuple[dict[str, int], dict[str, int]]:
        where, params = "status='held'", []
        if since:
            where += " AND received_at >= ?"
            params.append(iso(since))
        if before:
            where += " AND received_at < ?"
            params.append(iso(before))
        # One pass over the quarantine_counts index; the few (account, rules) groups are split here.
        groups = await self.db.fetchall(
            f"SELECT account, rules, count(*) FROM quarantine WHERE {where} GROUP BY account, rules", params
        )
        return split_quarantine_counts((r[0], r[1], int(r[2])) for r in groups)

    async def reclaim_abandoned(self, claimed_before: datetime, audit_actor: str, at: datetime) -> list[str]:
        async with self.db.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "UPDATE quarantine SET status='held', claimed_at=NULL "
                    "WHERE status='releasing' AND claimed_at < ? RETURNING id",
                    (iso(claimed_before),),
                )
            )
            for row in rows:
                await _insert_audit(conn, abandoned_release_audit(audit_actor, row["id"], at))
        return sorted(row["id"] for row in rows)

    async def purge_older_than(self, when: datetime, audit_actor: str) -> int:
        async with self.db.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT id FROM quarantine WHERE status='held' AND received_at < ?", (iso(when),)
                )
            )
            for row in rows:
                await conn.execute("UPDATE quarantine SET status='purged', content=x'' WHERE id=?", (row["id"],))
                await _insert_audit(
                    conn, AuditEntry(audit_actor, "quarantine.purge", row["id"], "retention expired", {}, utcnow())
                )
        return len(rows)


class SqliteAudit(base.AuditStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def add(self, entry: AuditEntry) -> None:
        async with self.db.transaction() as conn:
            await _insert_audit(conn, entry)

    async def list(self, *, limit: int = 100, target: str | None = None) -> list[AuditEntry]:
        if target:
            rows = await self.db.fetchall("SELECT * FROM audit WHERE target=? ORDER BY id DESC LIMIT ?", (target, limit))
        else:
            rows = await self.db.fetchall("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [audit_from_row(r) for r in rows]


class SqliteRates(base.RateStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def take(self, key: str, *, rate_per_minute: int, now: float) -> bool:
        capacity = float(rate_per_minute)
        async with self.db.transaction() as conn:
            rows = list(await conn.execute_fetchall("SELECT tokens, updated_at FROM rate_buckets WHERE account=?", (key,)))
            if rows:
                tokens = min(capacity, rows[0]["tokens"] + (now - rows[0]["updated_at"]) * capacity / 60.0)
            else:
                tokens = capacity
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            await conn.execute(
                "INSERT INTO rate_buckets (account, tokens, updated_at) VALUES (?,?,?) "
                "ON CONFLICT (account) DO UPDATE SET tokens=excluded.tokens, updated_at=excluded.updated_at",
                (key, tokens, now),
            )
        return allowed


class SqliteStore(base.Store):
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.db = SqliteDatabase(path, timeout)
        self.accounts = SqliteAccountStates(self.db)
        self.consent = SqliteConsents(self.db)
        self.decisions = SqliteDecisions(self.db)
        self.outbox = SqliteOutbox(self.db)
        self.quarantine = SqliteQuarantine(self.db)
        self.audit = SqliteAudit(self.db)
        self.rates = SqliteRates(self.db)
        self.complaints = SqliteComplaints(self.db)
        self.webhooks = SqliteWebhookStates(self.db)
        self.events = SqliteEvents(self.db)
        self.bounces = SqliteBounces(self.db)
        self.signups = SignupStore(self.db, postgres=False)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetchone("SELECT 1")

    async def check_writable(self) -> None:
        # A small write can still succeed on a full disk (SQLite reuses the space of its WAL file),
        # while the next message, its outbox row or its delivery record would not fit: look at the
        # file system itself first.
        folder = self.db.path.parent
        try:
            fs = os.statvfs(folder)
        except OSError as exc:
            raise StoreUnavailable(f"cannot inspect the store's file system {folder}: {exc}") from exc
        if fs.f_flag & os.ST_RDONLY:
            raise StoreUnavailable(f"the store's file system {folder} is read-only")
        free = fs.f_bavail * fs.f_frsize
        if free < MIN_FREE_BYTES:
            raise StoreUnavailable(f"the store's file system {folder} is full ({free} bytes free)")
        await super().check_writable()
