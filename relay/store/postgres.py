"""The shared store: PostgreSQL via an asyncpg pool, migrated on open, same behaviour as the SQLite store.

Several relay instances may share one database: migrations serialise on an advisory lock,
outbox leases use FOR UPDATE SKIP LOCKED, ids and rate buckets change in single locked steps.
Server settings such as `?search_path=tenant` can ride on the URL's query string.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator, Iterable, Sequence

import asyncpg

from policies.facts import ConsentRecord, Suppression
from relay import events as ev
from relay.errors import StoreUnavailable
from relay.store.bounces import PostgresBounces
from relay.store import base
from relay.store.postgres_complaints import PostgresComplaints
from relay.store.webhooks_store import PostgresWebhookStates
from relay.store.events_store import PostgresEvents, append_postgres
from relay.store.signups import SignupStore
from relay.store.postgres_schema import MIGRATIONS
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
    CONSENT_BOOL_FIELDS,
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

# Errors that mean "the database cannot answer right now"; callers see StoreUnavailable.
_DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# One fixed key for every instance: whoever migrates first holds it, the others wait, then see
# the new version and do nothing.
_MIGRATION_LOCK = 0x636F6E73656E74  # "consent"
_MIGRATION_TIMEOUT = 60.0  # a migration may rewrite tables; the per-query timeout is for traffic
_UPSERT_BATCH = 5000


def _count(status: str) -> int:
    """Rows affected, from a command tag such as 'UPDATE 3' or 'INSERT 0 1'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@asynccontextmanager
async def _guard(timeout: float, what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(timeout):
            yield
    except _DB_ERRORS as exc:
        raise StoreUnavailable(f"store {what} failed: {exc or type(exc).__name__}") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default RESET ALL / UNLISTEN round trip (it doubled the cost of a
    pooled query). Safe because the store never changes session state: no SET, LISTEN, cursors or
    session advisory locks; asyncpg still rolls back a transaction left open."""


class PgTransaction:
    """The connection of one open transaction; every statement gets the store's timeout."""

    def __init__(self, conn: asyncpg.Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout

    async def execute(self, sql: str, *args: Any) -> str:
        async with _guard(self.timeout, "write"):
            return str(await self.conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with _guard(self.timeout, "write"):
            await self.conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with _guard(self.timeout, "write"):
            return list(await self.conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with _guard(self.timeout, "write"):
            return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with _guard(self.timeout, "write"):
            return await self.conn.fetchval(sql, *args)


class PostgresDatabase:
    """An asyncpg pool; reads run on any pooled connection, writes in explicit transactions."""

    def __init__(self, url: str, timeout: float, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.timeout = timeout
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                pool = await asyncpg.create_pool(
                    self.url, min_size=self.min_size, max_size=self.max_size, reset=_keep_session
                )
        except (*_DB_ERRORS, ValueError) as exc:  # ValueError: a malformed URL
            raise StoreUnavailable(f"cannot open PostgreSQL store: {exc or type(exc).__name__}") from exc
        try:
            async with _guard(max(self.timeout, _MIGRATION_TIMEOUT), "migration"):
                async with pool.acquire() as conn:
                    await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT version FROM schema_version")
            if version is None:
                version = 0
                await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number <= version:
                    continue
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("UPDATE schema_version SET version = $1", number)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            except _DB_ERRORS:
                pool.terminate()

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        return self._pool

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        pool = self._require()
        async with _guard(self.timeout, "read"):
            return list(await pool.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        pool = self._require()
        async with _guard(self.timeout, "read"):
            return await pool.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        pool = self._require()
        async with _guard(self.timeout, "read"):
            return await pool.fetchval(sql, *args)

    async def write(self, sql: str, *args: Any) -> int:
        """One statement in its own (implicit) transaction; returns the rows it affected."""
        pool = self._require()
        async with _guard(self.timeout, "write"):
            return _count(str(await pool.execute(sql, *args)))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """BEGIN … COMMIT on one pooled connection; any failure rolls back (errors become StoreUnavailable)."""
        pool = self._require()
        async with _guard(self.timeout, "connect"):
            conn = await pool.acquire()
        try:
            tx = conn.transaction()
            async with _guard(self.timeout, "write"):
                await tx.start()
            try:
                yield PgTransaction(conn, self.timeout)
            except BaseException:
                try:
                    async with asyncio.timeout(self.timeout):
                        await tx.rollback()
                except _DB_ERRORS:
                    pass  # a broken connection is discarded by the pool on release
                raise
            async with _guard(self.timeout, "commit"):
                await tx.commit()
        finally:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.release(conn)
            except _DB_ERRORS:
                conn.terminate()


async def _insert_audit(tx: PgTransaction, entry: AuditEntry) -> None:
    await tx.execute(
        "INSERT INTO audit (at, actor, action, target, note, detail) VALUES ($1,$2,$3,$4,$5,$6)",
        iso(entry.at or utcnow()),
        entry.actor,
        entry.action,
        entry.target,
        entry.note,
        json.dumps(entry.detail),
    )


class PostgresAccountStates(base.AccountStateStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def get(self, account: str) -> AccountState:
        row = await self.db.fetchrow("SELECT * FROM account_state WHERE account = $1", account)
        return _state_from_row(row) if row else AccountState(account)

    async def all(self) -> list[AccountState]:
        return [_state_from_row(r) for r in await self.db.fetch("SELECT * FROM account_state ORDER BY account")]

    async def set(self, state: AccountState, *, actor: str, note: str) -> None:
        now = utcnow()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO account_state (account, state, reason, paused_streams, updated_at) "
                "VALUES ($1,$2,$3,$4,$5) ON CONFLICT (account) DO UPDATE SET state=EXCLUDED.state, "
                "reason=EXCLUDED.reason, paused_streams=EXCLUDED.paused_streams, updated_at=EXCLUDED.updated_at",
                state.account,
                state.state,
                state.reason,
                ",".join(sorted(state.paused_streams)),
                iso(now),
            )
            await _insert_audit(
                tx, AuditEntry(actor, f"account.{state.state}", state.account, note, {"state": state.state}, now)
            )
            await append_postgres(tx, [ev.account_state_event(state, actor, note, now)])


def _state_from_row(row: asyncpg.Record) -> AccountState:
    streams = frozenset(s for s in row["paused_streams"].split(",") if s)
    return AccountState(row["account"], row["state"], row["reason"], streams, parse_iso(row["updated_at"]))


def _unnest_sql() -> str:
    """INSERT … SELECT FROM unnest(one array per column) upsert, updating only rows whose content differs."""
    arrays = ",".join(
        f"${i}::{'int' if name in CONSENT_BOOL_FIELDS else 'text'}[]" for i, name in enumerate(CONSENT_COLUMNS, 1)
    )
    merged = {c: consent_merge_expression(c) for c in CONSENT_COLUMNS}
    compare = " OR ".join(f"({merged[c]}) IS DISTINCT FROM consents.{c}" for c in CONSENT_CONTENT_COLUMNS)
    updates = ",".join(f"{c}={merged[c]}" for c in CONSENT_COLUMNS if c != "created_at")
    return (
        f"INSERT INTO consents ({','.join(CONSENT_COLUMNS)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT (email, scope, topic) DO UPDATE SET {updates} WHERE {compare}"
    )


_UPSERT_CONSENTS = _unnest_sql()


class PostgresConsents(base.ConsentStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def find_consents(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[ConsentRecord]]:
        found: dict[str, list[ConsentRecord]] = {}
        rows = await self.db.fetch(
            "SELECT * FROM consents WHERE email = ANY($1::text[]) AND scope = ANY($2::text[]) ORDER BY id",
            list(dict.fromkeys(emails)),
            list(scopes),
        )
        for row in rows:
            found.setdefault(row["email"], []).append(consent_from_row(row))
        return found

    async def find_suppressions(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[Suppression]]:
        found: dict[str, list[Suppression]] = {}
        rows = await self.db.fetch(
            "SELECT * FROM suppressions WHERE email = ANY($1::text[]) AND scope = ANY($2::text[]) ORDER BY id",
            list(dict.fromkeys(emails)),
            list(scopes),
        )
        for row in rows:
            found.setdefault(row["email"], []).append(suppression_from_row(row))
        return found

    async def upsert_consents(self, records: Iterable[ConsentRecord], *, now: datetime) -> tuple[int, int]:
        written = unchanged = 0
        stamp = iso(now)
        key_at = (CONSENT_COLUMNS.index("email"), CONSENT_COLUMNS.index("scope"), CONSENT_COLUMNS.index("topic"))
        async with self.db.transaction() as tx:
            batch: list[tuple[Any, ...]] = []
            keys: set[tuple[Any, ...]] = set()

            async def flush() -> None:
                nonlocal written, unchanged, batch, keys
                columns = [list(col) for col in zip(*batch)]
                w = _count(await tx.execute(_UPSERT_CONSENTS, *columns))
                written += w
                unchanged += len(batch) - w
                batch, keys = [], set()

            for record in records:
                row = tuple(
                    (value if value is not None else stamp) if name in ("created_at", "updated_at") else value
                    for name, value in zip(CONSENT_COLUMNS, consent_to_row(record))
                )
                key = tuple(row[i] for i in key_at)
                # One statement may not touch a row twice; a repeated key starts a new statement so
                # the later record applies after the earlier one, as row-by-row SQLite does.
                if key in keys or len(batch) >= _UPSERT_BATCH:
                    await flush()
                batch.append(row)
                keys.add(key)
            if batch:
                await flush()
        return written, unchanged

    async def revoke(self, scope: str, email: str, topic: str | None, *, via: str, at: datetime) -> int:
        sql = (
            "UPDATE consents SET revoked_at=$1, revoked_via=$2, updated_at=$1 "
            "WHERE scope=$3 AND email=$4 AND revoked_at IS NULL"
        )
        params: list[Any] = [iso(at), via, scope, email]
        if topic is not None:
            sql += " AND topic=$5"
            params.append(topic)
        return await self.db.write(sql, *params)

    async def touch(self, scopes: Sequence[str], email: str, kind: str, at: datetime) -> int:
        column = {
            "purchase": "last_purchase_at",
            "confirmation": "confirmed_at",
        }.get(kind, "last_interaction_at")
        # Every stamp only moves forward: a late-reported older interaction must not shorten a
        # consent's life. PostgreSQL refuses two assignments to one column, so a plain interaction
        # sets only last_interaction_at.
        forward = "{0}=CASE WHEN {0} IS NULL OR {0} < $1 THEN $1 ELSE {0} END"
        sets = [forward.format("last_interaction_at")]
        if column != "last_interaction_at":
            sets.insert(0, forward.format(column))
        sql = (
            f"UPDATE consents SET {', '.join(sets)}, updated_at=$1 "
            f"WHERE email=$2 AND scope = ANY($3::text[]) AND revoked_at IS NULL"
        )
        return await self.db.write(sql, iso(at), email, list(scopes))

    async def add_suppression(self, suppression: Suppression, *, note: str = "") -> bool:
        at = suppression.created_at or utcnow()
        async with self.db.transaction() as tx:
            count = _count(await tx.execute(
                "INSERT INTO suppressions (scope, email, topic, reason, via, note, created_at) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (email, scope, topic, reason) DO NOTHING",
                suppression.scope, suppression.email, suppression.topic, suppression.reason, suppression.via, note, iso(at),
            ))
            if count > 0:
                await append_postgres(tx, [ev.suppression_event(suppression, at, note=note)])
        return count > 0

    async def remove_suppression(self, scope: str, email: str, reason: str | None = None) -> int:
        sql = "DELETE FROM suppressions WHERE scope=$1 AND email=$2"
        params: list[Any] = [scope, email]
        if reason:
            sql += " AND reason=$3"
            params.append(reason)
        async with self.db.transaction() as tx:
            rows = await tx.fetch(sql + " RETURNING scope, email, topic, reason, via", *params)
            now = utcnow()
            await append_postgres(tx, [
                ev.suppression_event(Suppression(r["email"], r["scope"], r["topic"], r["reason"], r["via"]), now, added=False)
                for r in rows
            ])
        return len(rows)

    async def list_suppressions(self, scope: str | None = None, limit: int = 1000) -> list[Suppression]:
        if scope is None:
            rows = await self.db.fetch("SELECT * FROM suppressions ORDER BY id DESC LIMIT $1", limit)
        else:
            rows = await self.db.fetch(
                "SELECT * FROM suppressions WHERE scope=$1 ORDER BY id DESC LIMIT $2", scope, limit
            )
        return [suppression_from_row(r) for r in rows]

    async def count(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM consents") or 0)


_RECORD = (
    "WITH new_decisions AS (INSERT INTO decisions (relay_id, message_id, account, stream, mail_from, recipients, "
    "outcome, rules, findings, created_at, misses) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
    "$4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])) "
    "INSERT INTO deliveries (id, relay_id, message_id, account, stream, scope, topic, email, consent_id, status, "
    "delivered_at) SELECT * FROM unnest($12::bigint[], $13::text[], $14::text[], $15::text[], $16::text[], "
    "$17::text[], $18::text[], $19::text[], $20::bigint[], $21::text[], $22::text[]) "
    "ON CONFLICT (id) DO UPDATE SET relay_id=EXCLUDED.relay_id, message_id=EXCLUDED.message_id, "
    "account=EXCLUDED.account, stream=EXCLUDED.stream, scope=EXCLUDED.scope, topic=EXCLUDED.topic, "
    "email=EXCLUDED.email, consent_id=EXCLUDED.consent_id, status=EXCLUDED.status, delivered_at=EXCLUDED.delivered_at"
)


class PostgresDecisions(base.DecisionStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def record(
        self, decisions: Sequence[DecisionRecord], deliveries: Sequence[DeliveryRecord], events: Sequence[ev.Event] = ()
    ) -> None:
        if not decisions and not deliveries:
            return
        # SQLite's INSERT OR REPLACE: a delivery id written again replaces the row (the last one wins).
        latest = {d.id: d for d in deliveries}
        decision_columns = [list(c) for c in zip(*map(decision_to_row, decisions))] or [[] for _ in range(11)]
        delivery_columns = [list(c) for c in zip(*map(delivery_to_row, latest.values()))] or [[] for _ in range(11)]
        if not events:
            # One statement is one transaction and one round trip, on the path of every message.
            await self.db.write(_RECORD, *decision_columns, *delivery_columns)
            return
        async with self.db.transaction() as tx:
            await tx.execute(_RECORD, *decision_columns, *delivery_columns)
            await append_postgres(tx, events)

    async def reserve_ids(self, name: str, count: int) -> int:
        # One statement: the row lock taken by the upsert makes concurrent reservations queue.
        first = await self.db.fetchval(
            "INSERT INTO id_blocks AS b (name, next_id) VALUES ($1, 1 + $2::bigint) "
            "ON CONFLICT (name) DO UPDATE SET next_id = b.next_id + $2::bigint RETURNING next_id - $2::bigint",
            name,
            count,
        )
        return int(first)

    async def for_relay_id(self, relay_id: str) -> list[DecisionRecord]:
        rows = await self.db.fetch("SELECT * FROM decisions WHERE relay_id=$1 ORDER BY id", relay_id)
        return [decision_from_row(r) for r in rows]

    async def deliveries_to(self, email: str, accounts: Sequence[str], limit: int = 1000) -> list[DeliveryRecord]:
        rows = await self.db.fetch(
            "SELECT * FROM deliveries WHERE email=$1 AND account = ANY($2::text[]) "
            "ORDER BY delivered_at DESC, id DESC LIMIT $3",
            email,
            list(accounts),
            limit,
        )
        return [delivery_from_row(r) for r in rows]

    async def delivery(self, delivery_id: int) -> DeliveryRecord | None:
        row = await self.db.fetchrow("SELECT * FROM deliveries WHERE id=$1", delivery_id)
        return delivery_from_row(row) if row else None

    async def deliveries_by_message_id(self, message_id: str) -> list[DeliveryRecord]:
        rows = await self.db.fetch("SELECT * FROM deliveries WHERE message_id=$1 ORDER BY id", message_id)
        return [delivery_from_row(r) for r in rows]


class PostgresOutbox(base.OutboxStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def enqueue(self, items: Sequence[OutboxItem], *, now: float) -> list[int]:
        if not items:
            return []
        async with self.db.transaction() as tx:
            # Draw the ids first so they match the items one to one, then insert in one pipelined batch.
            ids = [
                int(r[0])
                for r in await tx.fetch(
                    "SELECT nextval(pg_get_serial_sequence('outbox', 'id')) FROM generate_series(1, $1)", len(items)
                )
            ]
            await tx.executemany(
                "INSERT INTO outbox (id, relay_id, account, stream, mail_from, rcpt_tos, content, attempts, "
                "next_attempt_at, created_at, last_error) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
                [
                    (
                        item_id,
                        item.relay_id,
                        item.account,
                        item.stream,
                        item.mail_from,
                        json.dumps(list(item.rcpt_tos)),
                        item.content,
                        item.attempts,
                        float(item.next_attempt_at or now),
                        float(item.created_at or now),
                        item.last_error,
                    )
                    for item_id, item in zip(ids, items)
                ],
            )
        return ids

    async def claim_due(self, *, now: float, owner: str, lease_seconds: float, limit: int) -> list[OutboxItem]:
        # SKIP LOCKED: a racing instance passes over rows another is leasing; the re-checked WHERE
        # drops rows whose lease was committed after this statement's snapshot. `was` is the
        # sending mark before this claim cleared it.
        rows = await self.db.fetch(
            "UPDATE outbox o SET lease_owner=$1, lease_until=$2, sending_since=0, "
            "uncertain=o.uncertain + (CASE WHEN o.sending_since > 0 THEN 1 ELSE 0 END) FROM ("
            "SELECT id, sending_since AS was FROM outbox WHERE status='pending' AND next_attempt_at <= $3 "
            "AND lease_until <= $3 ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) s "
            "WHERE o.id = s.id RETURNING o.*, o.uncertain - (CASE WHEN s.was > 0 THEN 1 ELSE 0 END) AS uncertain_before, "
            "s.was",
            owner,
            float(now + lease_seconds),
            float(now),
            limit,
        )
        rows.sort(key=lambda r: (r["next_attempt_at"], r["id"]))
        return [claimed_outbox({**dict(r), "uncertain": r["uncertain_before"]}, r["was"] > 0) for r in rows]

    async def renew(self, item_ids: Sequence[int], owner: str, *, lease_until: float) -> set[int]:
        if not item_ids:
            return set()
        rows = await self.db.fetch(
            "UPDATE outbox SET lease_until=$1 WHERE lease_owner=$2 AND status='pending' AND id = ANY($3::bigint[]) "
            "RETURNING id",
            float(lease_until),
            owner,
            list(item_ids),
        )
        return {int(r["id"]) for r in rows}

    async def fence(self, item_id: int, owner: str, *, now: float, lease_until: float) -> bool:
        changed = await self.db.write(
            "UPDATE outbox SET lease_until=$1, sending_since=$2 WHERE id=$3 AND lease_owner=$4 AND status='pending'",
            float(lease_until),
            float(now),
            item_id,
            owner,
        )
        return changed == 1

    async def release(self, item_ids: Sequence[int], owner: str) -> None:
        if item_ids:
            await self.db.write(
                "UPDATE outbox SET lease_owner='', lease_until=0 WHERE lease_owner=$1 AND id = ANY($2::bigint[])",
                owner,
                list(item_ids),
            )

    async def delivered(self, item_id: int, owner: str) -> None:
        await self.db.write("DELETE FROM outbox WHERE id=$1 AND lease_owner=$2", item_id, owner)

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
            "UPDATE outbox SET attempts=attempts+1, next_attempt_at=$1, last_error=$2, lease_owner='', "
            "lease_until=0, sending_since=0, uncertain=uncertain+$3, rcpt_tos=coalesce($4, rcpt_tos) "
            "WHERE id=$5 AND lease_owner=$6",
            float(next_attempt_at),
            error[:1000],
            int(uncertain),
            None if rcpt_tos is None else json.dumps(list(rcpt_tos)),
            item_id,
            owner,
        )

    async def give_up(self, item_id: int, owner: str, *, error: str) -> None:
        await self.db.write(
            "UPDATE outbox SET attempts=attempts+1, status='failed', last_error=$1, lease_owner='', lease_until=0, "
            "sending_since=0 WHERE id=$2 AND lease_owner=$3",
            error[:1000],
            item_id,
            owner,
        )

    async def depth(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM outbox WHERE status='pending'") or 0)


_EVENT_COLUMNS = "account, stream, relay_id, rcpt_tos, rules"


def _quarantine_events(row: Any, status: str, audit: AuditEntry) -> list[ev.Event]:
    return ev.quarantine_event(
        status, row["account"], row["stream"], row["relay_id"], json.loads(row["rcpt_tos"]), json.loads(row["rules"]),
        audit.actor, audit.at or utcnow(),
    )


class PostgresQuarantine(base.QuarantineStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def hold(self, item: QuarantineItem) -> None:
        await self.db.write(
            "INSERT INTO quarantine (id, relay_id, account, stream, mail_from, rcpt_tos, subject, rules, findings, "
            "content, size, received_at, status) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
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
        )

    async def get(self, item_id: str, *, with_content: bool = False) -> QuarantineItem | None:
        row = await self.db.fetchrow("SELECT * FROM quarantine WHERE id=$1 AND status='held'", item_id)
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

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if account:
            where.append(f"account={param(account)}")
        if rule:
            where.append(f"rules::jsonb ? {param(rule)}")
        if since:
            where.append(f"received_at >= {param(iso(since))}")
        if before:
            where.append(f"received_at < {param(iso(before))}")
        if cursor:
            at, _, last_id = cursor.partition("|")
            at_mark = param(at)
            where.append(f"(received_at < {at_mark} OR (received_at = {at_mark} AND id < {param(last_id)}))")
        columns = (
            "id, relay_id, account, stream, mail_from, rcpt_tos, subject, rules, findings, size, received_at, "
            "status, ''::bytea AS content"
        )
        rows = await self.db.fetch(
            f"SELECT {columns} FROM quarantine WHERE {' AND '.join(where)} "
            f"ORDER BY received_at DESC, id DESC LIMIT {param(limit + 1)}",
            *params,
        )
        items = [quarantine_from_row(r, False) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = f"{last['received_at']}|{last['id']}"
        return items, next_cursor

    async def set_status(self, item_id: str, status: str, audit: AuditEntry) -> bool:
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE quarantine SET status=$1, content=CASE WHEN $1='deleted' THEN ''::bytea ELSE content END "
                f"WHERE id=$2 AND status='held' RETURNING {_EVENT_COLUMNS}",
                status,
                item_id,
            )
            if row is None:
                return False
            await _insert_audit(tx, audit)
            await append_postgres(tx, _quarantine_events(row, status, audit))
        return True

    async def claim_release(self, item_id: str, at: datetime | None = None) -> QuarantineItem | None:
        # The row lock makes a concurrent claim wait, then re-check status='held' and find nothing.
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE quarantine SET status='releasing', claimed_at=$2 WHERE id=$1 AND status='held' RETURNING *",
                item_id,
                iso(at or utcnow()),
            )
        return quarantine_from_row(row, True) if row else None

    async def unclaim_release(self, item_id: str) -> None:
        await self.db.write("UPDATE quarantine SET status='held' WHERE id=$1 AND status='releasing'", item_id)

    async def finish_release(self, item_id: str, audit: AuditEntry) -> bool:
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                f"UPDATE quarantine SET status='released' WHERE id=$1 AND status='releasing' RETURNING {_EVENT_COLUMNS}",
                item_id,
            )
            if row is None:
                return False
            await _insert_audit(tx, audit)
            await append_postgres(tx, _quarantine_events(row, "released", audit))
        return True

    async def count(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM quarantine WHERE status='held'") or 0)

    async def counts(
        self, *, since: datetime | None = None, before: datetime | None = None
    ) -> tuple[dict[str, int], dict[str, int]]:
        where, params = ["status='held'"], []
        if since:
            params.append(iso(since))
            where.append(f"received_at >= ${len(params)}")
        if before:
            params.append(iso(before))
            where.append(f"received_at < ${len(params)}")
        clause = " AND ".join(where)
        # One pass over the quarantine_counts index; the few (account, rules) groups are split here.
        groups = await self.db.fetch(
            f"SELECT account, rules, count(*) FROM quarantine WHERE {clause} GROUP BY account, rules", *params
        )
        return split_quarantine_counts((r[0], r[1], int(r[2])) for r in groups)

    async def reclaim_abandoned(self, claimed_before: datetime, audit_actor: str, at: datetime) -> list[str]:
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE quarantine SET status='held', claimed_at=NULL "
                "WHERE status='releasing' AND claimed_at < $1 RETURNING id",
                iso(claimed_before),
            )
            for row in rows:
                await _insert_audit(tx, abandoned_release_audit(audit_actor, row["id"], at))
        return sorted(row["id"] for row in rows)

    async def purge_older_than(self, when: datetime, audit_actor: str) -> int:
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE quarantine SET status='purged', content=''::bytea "
                "WHERE status='held' AND received_at < $1 RETURNING id",
                iso(when),
            )
            for row in rows:
                await _insert_audit(
                    tx, AuditEntry(audit_actor, "quarantine.purge", row["id"], "retention expired", {}, utcnow())
                )
        return len(rows)


class PostgresAudit(base.AuditStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def add(self, entry: AuditEntry) -> None:
        async with self.db.transaction() as tx:
            await _insert_audit(tx, entry)

    async def list(self, *, limit: int = 100, target: str | None = None) -> list[AuditEntry]:
        if target:
            rows = await self.db.fetch("SELECT * FROM audit WHERE target=$1 ORDER BY id DESC LIMIT $2", target, limit)
        else:
            rows = await self.db.fetch("SELECT * FROM audit ORDER BY id DESC LIMIT $1", limit)
        return [audit_from_row(r) for r in rows]


class PostgresRates(base.RateStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def take(self, key: str, *, rate_per_minute: int, now: float) -> bool:
        capacity = float(rate_per_minute)
        async with self.db.transaction() as tx:
            # Create the bucket full if missing (a racing creator wins harmlessly), then hold its row
            # lock while refilling and taking, so instances sharing the bucket queue on it.
            await tx.execute(
                "INSERT INTO rate_buckets (account, tokens, updated_at) VALUES ($1,$2,$3) "
                "ON CONFLICT (account) DO NOTHING",
                key,
                capacity,
                float(now),
            )
            row = await tx.fetchrow("SELECT tokens, updated_at FROM rate_buckets WHERE account=$1 FOR UPDATE", key)
            assert row is not None
            tokens = min(capacity, row["tokens"] + (now - row["updated_at"]) * capacity / 60.0)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            await tx.execute(
                "UPDATE rate_buckets SET tokens=$2, updated_at=$3 WHERE account=$1", key, tokens, float(now)
            )
        return allowed


class PostgresStore(base.Store):
    def __init__(self, url: str, timeout: float = 5.0, *, min_size: int = 1, max_size: int = 10) -> None:
        self.db = PostgresDatabase(url, timeout, min_size=min_size, max_size=max_size)
        self.accounts = PostgresAccountStates(self.db)
        self.consent = PostgresConsents(self.db)
        self.decisions = PostgresDecisions(self.db)
        self.outbox = PostgresOutbox(self.db)
        self.quarantine = PostgresQuarantine(self.db)
        self.audit = PostgresAudit(self.db)
        self.rates = PostgresRates(self.db)
        self.complaints = PostgresComplaints(self.db)
        self.webhooks = PostgresWebhookStates(self.db)
        self.events = PostgresEvents(self.db)
        self.bounces = PostgresBounces(self.db)
        self.signups = SignupStore(self.db, postgres=True)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self.db.fetchval("SELECT 1")
