"""The core tables' stores (accounts, consent, decisions, outbox, quarantine, audit, rates): one set of
queries, run on either store through a relay/store/sql.py `Database`."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from functools import lru_cache
from itertools import islice
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from policies.facts import ConsentRecord, Suppression
from relay.store import account_events as ev
from relay.store import base
from relay.store.events_store import append_events
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
    CONSENT_SELECT,
    SUPPRESSION_LOOKUP,
    OUTBOX_INSERT,
    abandoned_release_audit,
    audit_from_row,
    claimed_outbox,
    consent_from_row,
    consent_from_values,
    consent_merge_expression,
    consent_to_row,
    decision_from_row,
    decision_to_row,
    delivery_from_row,
    delivery_to_row,
    outbox_to_row,
    quarantine_from_row,
    split_quarantine_counts,
    suppression_from_lookup,
    suppression_from_row,
)
from relay.store.sql import Database, Dialect, Row, Transaction

T = TypeVar("T")
_UPSERT_BATCH = 5000


async def insert_audit(tx: Transaction, entry: AuditEntry) -> None:
    await tx.execute(
        "INSERT INTO audit (at, actor, action, target, note, detail) VALUES (?,?,?,?,?,?)",
        (iso(entry.at or utcnow()), entry.actor, entry.action, entry.target, entry.note, json.dumps(entry.detail)),
    )


class SqlAccountStates(base.AccountStateStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, account: str) -> AccountState:
        row = await self.db.fetch_point("SELECT * FROM account_state WHERE account = ?", (account,))
        return _state_from_row(row) if row else AccountState(account)

    async def all(self) -> list[AccountState]:
        return [_state_from_row(r) for r in await self.db.fetchall("SELECT * FROM account_state ORDER BY account")]

    async def set(self, state: AccountState, *, actor: str, note: str) -> None:
        now = utcnow()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO account_state (account, state, reason, paused_streams, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (account) DO UPDATE SET state=excluded.state, reason=excluded.reason, "
                "paused_streams=excluded.paused_streams, updated_at=excluded.updated_at",
                (state.account, state.state, state.reason, ",".join(sorted(state.paused_streams)), iso(now)),
            )
            await insert_audit(
                tx, AuditEntry(actor, f"account.{state.state}", state.account, note, {"state": state.state}, now)
            )
            await append_events(tx, [ev.account_state_event(state, actor, note, now)])


def _state_from_row(row: Row) -> AccountState:
    streams = frozenset(s for s in row["paused_streams"].split(",") if s)
    return AccountState(row["account"], row["state"], row["reason"], streams, parse_iso(row["updated_at"]))


def _upsert_consents_sql(dialect: Dialect) -> str:
    """Insert or update, updating only rows whose content differs (so the count is of real changes)."""
    merged = {c: consent_merge_expression(c) for c in CONSENT_COLUMNS}
    compare = " OR ".join(f"({merged[c]}) {dialect.is_distinct} consents.{c}" for c in CONSENT_CONTENT_COLUMNS)
    updates = ",".join(f"{c}={merged[c]}" for c in CONSENT_COLUMNS if c != "created_at")
    kinds = ["int" if c in CONSENT_BOOL_FIELDS else "text" for c in CONSENT_COLUMNS]
    tail = f"ON CONFLICT (email, scope, topic) DO UPDATE SET {updates} WHERE {compare}"
    return dialect.insert_rows("consents", CONSENT_COLUMNS, kinds, tail)


_CONSENT_KEY = tuple(CONSENT_COLUMNS.index(c) for c in ("email", "scope", "topic"))


def _consent_batches(records: Iterable[ConsentRecord], stamp: str) -> Iterator[list[list[Any]]]:
    """Rows of at most _UPSERT_BATCH. One statement may not touch a row twice on PostgreSQL: a repeated
    key starts a new batch, so the later record applies after the earlier one, as row by row."""
    batch: list[list[Any]] = []
    keys: set[tuple[Any, ...]] = set()
    for record in records:
        row = consent_to_row(record, stamp)
        key = tuple(row[i] for i in _CONSENT_KEY)
        if key in keys or len(batch) >= _UPSERT_BATCH:
            yield batch
            batch, keys = [], set()
        batch.append(row)
        keys.add(key)
    if batch:
        yield batch


# A consent row (kind 'c': CONSENT_SELECT) or a suppression row (kind 's': SUPPRESSION_LOOKUP) of the
# recipients' lookup, in one result: the columns of both tables side by side, NULL where the row's
# table has none. Each branch reads its table's unique index (email, scope, …). The rows are put in
# (kind, id) order in Python: an ORDER BY made SQLite build a sorter per branch for the one or two
# rows of a recipient, a fifth of the statement's cost (callgrind, docs/benchmarks.md, issue 20).
_LOOKUP_WIDTH = 1 + len(CONSENT_SELECT)
_RECIPIENT_LOOKUP = (
    f"SELECT 'c' AS kind, {', '.join(CONSENT_SELECT)}, NULL AS reason, NULL AS via FROM consents {{where}} "
    "UNION ALL SELECT 's', "
    + ", ".join(c if c in SUPPRESSION_LOOKUP else "NULL" for c in CONSENT_SELECT)
    + ", reason, via FROM suppressions {where}"
)
_KIND_AND_ID = itemgetter(0, 1)  # unique: each kind's ids are its table's primary key


@lru_cache(maxsize=256)
def _recipient_lookup(in_emails: str, in_scopes: str) -> str:
    """The lookup for one shape of IN lists, made once: the same text each time also lets the
    driver's statement cache find it without hashing a new string."""
    return _RECIPIENT_LOOKUP.format(where=f"WHERE {in_emails} AND {in_scopes}")
# A message's recipients (RCPT by RCPT, or those left at DATA) are a few index lookups, answered from
# pages in memory; a longer list (an import's batch, a very long envelope) reads the ordinary way.
_INDEXED_LOOKUP_MAX = 64


class SqlConsents(base.ConsentStore):
    def __init__(self, db: Database) -> None:
        self.db = db
        self._upsert = _upsert_consents_sql(db.dialect)

    async def _by_email(
        self, table: str, scopes: Sequence[str], emails: Sequence[str], convert: Callable[[Row], T]
    ) -> dict[str, list[T]]:
        found: dict[str, list[T]] = {}
        dialect = self.db.dialect
        in_scopes, scope_params = dialect.any_of("scope", scopes)
        for chunk in dialect.chunks(list(dict.fromkeys(emails))):
            in_emails, email_params = dialect.any_of("email", chunk)
            rows = await self.db.fetchall(
                f"SELECT * FROM {table} WHERE {in_emails} AND {in_scopes} ORDER BY id", (*email_params, *scope_params)
            )
            for row in rows:
                found.setdefault(row["email"], []).append(convert(row))
        return found

    async def find_consents(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[ConsentRecord]]:
        return await self._by_email("consents", scopes, emails, consent_from_row)

    async def find_consents_and_suppressions(
        self, scopes: Sequence[str], emails: Sequence[str]
    ) -> tuple[dict[str, list[ConsentRecord]], dict[str, list[Suppression]]]:
        """One statement for both tables (one round trip); a message's few recipients through
        `fetch_indexed`, which SQLite answers on the loop without a thread hand-off."""
        consents: dict[str, list[ConsentRecord]] = {}
        suppressions: dict[str, list[Suppression]] = {}
        dialect = self.db.dialect
        in_scopes, scope_params = dialect.any_of("scope", scopes)
        for chunk in dialect.chunks(list(dict.fromkeys(emails))):
            in_emails, email_params = dialect.any_of("email", chunk)
            params = (*email_params, *scope_params)
            fetch = self.db.fetch_indexed if len(chunk) <= _INDEXED_LOOKUP_MAX else self.db.fetchall
            rows = await fetch(_recipient_lookup(in_emails, in_scopes), params + params)
            if len(rows) > 1:
                rows = sorted(rows, key=_KIND_AND_ID)  # ORDER BY kind, id
            for row in rows:
                values = tuple(row)
                if values[0] == "c":
                    record = consent_from_values(values[1:_LOOKUP_WIDTH])
                    consents.setdefault(record.email, []).append(record)
                else:
                    suppression = suppression_from_lookup(values)
                    suppressions.setdefault(suppression.email, []).append(suppression)
        return consents, suppressions

    async def find_suppressions(self, scopes: Sequence[str], emails: Sequence[str]) -> dict[str, list[Suppression]]:
        return await self._by_email("suppressions", scopes, emails, suppression_from_row)

    async def upsert_consents(self, records: Iterable[ConsentRecord], *, now: datetime) -> tuple[int, int]:
        written = total = 0
        batches = _consent_batches(records, iso(now) or "")
        async with self.db.transaction() as tx:
            # The next batch is converted while the previous one is written.
            pending: asyncio.Future[int] | None = None
            try:
                while True:
                    batch = next(batches, None)
                    if pending is not None:
                        written += await pending
                        pending = None
                    if batch is None:
                        break
                    total += len(batch)
                    pending = asyncio.ensure_future(tx.insert_rows(self._upsert, batch))
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
        # PostgreSQL refuses two assignments to one column: a plain interaction sets only one.
        columns = [column, "last_interaction_at"] if column != "last_interaction_at" else [column]
        sets = [f"{c}=CASE WHEN {c} IS NULL OR {c} < ? THEN ? ELSE {c} END" for c in columns]
        in_scopes, scope_params = self.db.dialect.any_of("scope", scopes)
        sql = f"UPDATE consents SET {', '.join(sets)}, updated_at=? WHERE email=? AND {in_scopes} AND revoked_at IS NULL"
        return await self.db.write(sql, (*[stamp] * (2 * len(sets) + 1), email, *scope_params))

    async def add_suppression(self, suppression: Suppression, *, note: str = "") -> bool:
        at = suppression.created_at or utcnow()
        s = suppression
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO suppressions (scope, email, topic, reason, via, note, created_at) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (email, scope, topic, reason) DO NOTHING",
                (s.scope, s.email, s.topic, s.reason, s.via, note, iso(at)),
            )
            if added:
                await append_events(tx, [ev.suppression_event(suppression, at, note=note)])
        return added > 0

    async def remove_suppression(self, scope: str, email: str, reason: str | None = None) -> int:
        sql = "DELETE FROM suppressions WHERE scope=? AND email=?"
        params: list[Any] = [scope, email]
        if reason:
            sql += " AND reason=?"
            params.append(reason)
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(sql + " RETURNING scope, email, topic, reason, via", params)
            now = utcnow()
            await append_events(tx, [
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


_DECISION_COLUMNS = (
    "relay_id", "message_id", "account", "stream", "mail_from", "recipients", "outcome", "rules", "findings",
    "created_at", "misses",
)
_DELIVERY_COLUMNS = (
    "id", "relay_id", "message_id", "account", "stream", "scope", "topic", "email", "consent_id", "status",
    "delivered_at",
)
_DELIVERY_KINDS = tuple("bigint" if c in ("id", "consent_id") else "text" for c in _DELIVERY_COLUMNS)
# A delivery id written again replaces the row (the last one wins).
_DELIVERY_REPLACES = "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{c}=excluded.{c}" for c in _DELIVERY_COLUMNS if c != "id"
)


class SqlDecisions(base.DecisionStore):
    def __init__(self, db: Database) -> None:
        self.db = db
        d = db.dialect
        self._decisions = d.insert_rows("decisions", _DECISION_COLUMNS, ["text"] * len(_DECISION_COLUMNS))
        self._deliveries = d.insert_rows("deliveries", _DELIVERY_COLUMNS, _DELIVERY_KINDS, _DELIVERY_REPLACES)

    async def record(
        self, decisions: Sequence[DecisionRecord], deliveries: Sequence[DeliveryRecord], events: Sequence[ev.Event] = ()
    ) -> None:
        latest = {d.id: d for d in deliveries}  # one statement may not touch a row twice
        batches = [
            (sql, rows)
            for sql, rows in (
                (self._decisions, [decision_to_row(d) for d in decisions]),
                (self._deliveries, [delivery_to_row(d) for d in latest.values()]),
            )
            if rows
        ]
        if not events:
            # On the path of every message: one round trip where the database allows it.
            await self.db.insert_at_once(batches)
            return
        async with self.db.transaction() as tx:
            await append_events(tx, events)
            await tx.insert_at_once(batches)

    async def reserve_ids(self, name: str, count: int) -> int:
        # One statement: the row lock taken by the upsert makes concurrent reservations queue.
        (row,) = await self.db.write_returning(
            "INSERT INTO id_blocks AS b (name, next_id) VALUES (?, 1 + CAST(? AS BIGINT)) "
            "ON CONFLICT (name) DO UPDATE SET next_id = b.next_id + CAST(? AS BIGINT) "
            "RETURNING next_id - CAST(? AS BIGINT)",
            (name, count, count, count),
        )
        return int(row[0])

    async def for_relay_id(self, relay_id: str) -> list[DecisionRecord]:
        rows = await self.db.fetchall("SELECT * FROM decisions WHERE relay_id=? ORDER BY id", (relay_id,))
        return [decision_from_row(r) for r in rows]

    async def deliveries_to(self, email: str, accounts: Sequence[str], limit: int = 1000) -> list[DeliveryRecord]:
        in_accounts, params = self.db.dialect.any_of("account", accounts)
        rows = await self.db.fetchall(
            f"SELECT * FROM deliveries WHERE email=? AND {in_accounts} ORDER BY delivered_at DESC, id DESC LIMIT ?",
            (email, *params, limit),
        )
        return [delivery_from_row(r) for r in rows]

    async def delivery(self, delivery_id: int) -> DeliveryRecord | None:
        row = await self.db.fetchone("SELECT * FROM deliveries WHERE id=?", (delivery_id,))
        return delivery_from_row(row) if row else None

    async def deliveries_by_message_id(self, message_id: str) -> list[DeliveryRecord]:
        rows = await self.db.fetchall("SELECT * FROM deliveries WHERE message_id=? ORDER BY id", (message_id,))
        return [delivery_from_row(r) for r in rows]


# The copies a claim takes (the WHERE and ORDER BY of `outbox_claim`; parameters: now, now), in the
# order of the outbox_due index (SQLite's ends in the rowid, the id), so a claim reads `limit` rows.
OUTBOX_DUE = "status='pending' AND next_attempt_at <= ? AND lease_until <= ? ORDER BY next_attempt_at, id"
# Copies not due yet, after an id (parameters: after_id, now). The status as an expression: an index
# on it would have the planner read every pending row and sort them (SQLite, 0.8 s with 57,000
# queued); the primary key reads `limit` rows.
OUTBOX_EARLY = "coalesce(status, '')='pending' AND id > ? AND lease_until <= ? ORDER BY id"


def outbox_claim(dialect: Dialect, where: str) -> str:
    """The SELECT of a claim (one more parameter: the limit), run after `dialect.ordered_reads`."""
    return f"SELECT * FROM outbox WHERE {where} LIMIT ?{dialect.skip_locked}"


class SqlOutbox(base.OutboxStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(self, items: Sequence[OutboxItem], *, now: float) -> list[int]:
        if not items:
            return []
        async with self.db.transaction() as tx:
            return [int((await tx.fetchall(OUTBOX_INSERT, outbox_to_row(item, now)))[0][0]) for item in items]

    async def claim_due(
        self, *, now: float, owner: str, lease_seconds: float, limit: int, fenced: bool = False
    ) -> list[OutboxItem]:
        return await self._claim(
            OUTBOX_DUE, (float(now), float(now)),
            now=now, owner=owner, lease_seconds=lease_seconds, limit=limit, fenced=fenced,
        )

    async def claim_early(
        self, *, now: float, owner: str, lease_seconds: float, limit: int, after_id: int, fenced: bool = False
    ) -> list[OutboxItem]:
        return await self._claim(
            OUTBOX_EARLY, (int(after_id), float(now)),
            now=now, owner=owner, lease_seconds=lease_seconds, limit=limit, fenced=fenced,
        )

    async def _claim(
        self, where: str, params: tuple[Any, ...], *,
        now: float, owner: str, lease_seconds: float, limit: int, fenced: bool,
    ) -> list[OutboxItem]:
        # A racing instance passes over rows another is leasing (SKIP LOCKED, on PostgreSQL; SQLite's
        # BEGIN IMMEDIATE lets one writer at a time), and a locked row's WHERE is checked again.
        dialect = self.db.dialect
        async with self.db.transaction() as tx:
            if dialect.ordered_reads:
                await tx.execute(dialect.ordered_reads)
            rows = await tx.fetchall(outbox_claim(dialect, where), (*params, limit))
            # One statement for the claim's rows (they all get the same lease), not one per row. A
            # fenced claim is its own fence: each UPDATE rewrites the whole row (the copy's content
            # with it, on SQLite about 12 KB of pages for a 6 KB copy), so a fence after the claim
            # cost a second rewrite of every copy and a second commit.
            for ids in dialect.chunks([r["id"] for r in rows]):
                in_ids, id_params = dialect.any_of("id", ids, "bigint")
                await tx.execute(
                    "UPDATE outbox SET lease_owner=?, lease_until=?, sending_since=?, "
                    f"uncertain=uncertain + (CASE WHEN sending_since > 0 THEN 1 ELSE 0 END) WHERE {in_ids}",
                    (owner, float(now + lease_seconds), float(now) if fenced else 0.0, *id_params),
                )
        # As the rows were before this claim: sending_since > 0 means the last holder's send was cut short.
        return [claimed_outbox(r, r["sending_since"] > 0) for r in rows]

    async def renew(self, item_ids: Sequence[int], owner: str, *, lease_until: float) -> set[int]:
        if not item_ids:
            return set()
        in_ids, params = self.db.dialect.any_of("id", item_ids, "bigint")
        rows = await self.db.write_returning(
            f"UPDATE outbox SET lease_until=? WHERE lease_owner=? AND status='pending' AND {in_ids} RETURNING id",
            (float(lease_until), owner, *params),
        )
        return {int(r[0]) for r in rows}

    async def fence(self, item_id: int, owner: str, *, now: float, lease_until: float) -> bool:
        changed = await self.db.write(
            "UPDATE outbox SET lease_until=?, sending_since=? WHERE id=? AND lease_owner=? AND status='pending'",
            (float(lease_until), float(now), item_id, owner),
        )
        return changed == 1

    async def settle(
        self, owner: str, *, delivered: Sequence[int], fence: Sequence[int], now: float, lease_until: float
    ) -> set[int]:
        held: set[int] = set()
        async with self.db.transaction() as tx:
            for ids in self.db.dialect.chunks(list(delivered)):
                in_ids, params = self.db.dialect.any_of("id", ids, "bigint")
                await tx.execute(f"DELETE FROM outbox WHERE lease_owner=? AND {in_ids}", (owner, *params))
            for ids in self.db.dialect.chunks(list(fence)):
                in_ids, params = self.db.dialect.any_of("id", ids, "bigint")
                rows = await tx.fetchall(
                    f"UPDATE outbox SET lease_until=?, sending_since=? WHERE lease_owner=? AND status='pending' AND {in_ids} "
                    "RETURNING id",
                    (float(lease_until), float(now), owner, *params),
                )
                held.update(int(r[0]) for r in rows)
        return held

    async def release(self, item_ids: Sequence[int], owner: str) -> None:
        if item_ids:
            in_ids, params = self.db.dialect.any_of("id", item_ids, "bigint")
            await self.db.write(
                f"UPDATE outbox SET lease_owner='', lease_until=0, sending_since=0 WHERE lease_owner=? AND {in_ids}",
                (owner, *params),
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
                float(next_attempt_at), error[:1000], int(uncertain),
                None if rcpt_tos is None else json.dumps(list(rcpt_tos)), item_id, owner,
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
_HOLD = (
    "INSERT INTO quarantine (id, relay_id, account, stream, mail_from, rcpt_tos, subject, rules, findings, "
    "content, size, received_at, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _quarantine_events(row: Row, status: str, audit: AuditEntry) -> list[ev.Event]:
    return ev.quarantine_event(
        status, row["account"], row["stream"], row["relay_id"], json.loads(row["rcpt_tos"]), json.loads(row["rules"]),
        audit.actor, audit.at or utcnow(),
    )


class SqlQuarantine(base.QuarantineStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def hold(self, item: QuarantineItem) -> None:
        await self.db.write(
            _HOLD,
            (
                item.id, item.relay_id, item.account, item.stream, item.mail_from, json.dumps(list(item.rcpt_tos)),
                item.subject, json.dumps(list(item.rules)), json.dumps(list(item.findings)), item.content, item.size,
                iso(item.received_at), item.status,
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
            where.append(self.db.dialect.json_array_has("quarantine.rules"))
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
        columns = (
            "id, relay_id, account, stream, mail_from, rcpt_tos, subject, rules, findings, size, received_at, status, "
            f"{self.db.dialect.empty_blob} AS content"
        )
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

    async def _finish(self, sql: str, params: Sequence[Any], status: str, audit: AuditEntry) -> bool:
        """A held or releasing message moved on by `sql` (RETURNING _EVENT_COLUMNS), with its audit
        entry and events; False when `sql` found it not in the state it expects."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(sql, params)
            if not rows:
                return False
            await insert_audit(tx, audit)
            await append_events(tx, _quarantine_events(rows[0], status, audit))
        return True

    async def set_status(self, item_id: str, status: str, audit: AuditEntry) -> bool:
        return await self._finish(
            f"UPDATE quarantine SET status=?, content=CASE WHEN ?='deleted' THEN {self.db.dialect.empty_blob} "
            f"ELSE content END WHERE id=? AND status='held' RETURNING {_EVENT_COLUMNS}",
            (status, status, item_id), status, audit,
        )

    async def claim_release(self, item_id: str, at: datetime | None = None) -> QuarantineItem | None:
        # One conditional UPDATE: of two claims, the second (serialised by SQLite's BEGIN IMMEDIATE, or
        # waiting on PostgreSQL's row lock) sees the message not held any more and finds nothing.
        rows = await self.db.write_returning(
            "UPDATE quarantine SET status='releasing', claimed_at=? WHERE id=? AND status='held' RETURNING *",
            (iso(at or utcnow()), item_id),
        )
        return quarantine_from_row(rows[0], True) if rows else None

    async def unclaim_release(self, item_id: str) -> None:
        await self.db.write("UPDATE quarantine SET status='held' WHERE id=? AND status='releasing'", (item_id,))

    async def finish_release(self, item_id: str, audit: AuditEntry) -> bool:
        return await self._finish(
            f"UPDATE quarantine SET status='released' WHERE id=? AND status='releasing' RETURNING {_EVENT_COLUMNS}",
            (item_id,), "released", audit,
        )

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
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE quarantine SET status='held', claimed_at=NULL "
                "WHERE status='releasing' AND claimed_at < ? RETURNING id",
                (iso(claimed_before),),
            )
            for row in rows:
                await insert_audit(tx, abandoned_release_audit(audit_actor, row["id"], at))
        return sorted(row["id"] for row in rows)

    async def purge_older_than(self, when: datetime, audit_actor: str) -> int:
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                f"UPDATE quarantine SET status='purged', content={self.db.dialect.empty_blob} "
                "WHERE status='held' AND received_at < ? RETURNING id",
                (iso(when),),
            )
            for row in rows:
                await insert_audit(
                    tx, AuditEntry(audit_actor, "quarantine.purge", row["id"], "retention expired", {}, utcnow())
                )
        return len(rows)


class SqlAudit(base.AuditStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, entry: AuditEntry) -> None:
        async with self.db.transaction() as tx:
            await insert_audit(tx, entry)

    async def list(self, *, limit: int = 100, target: str | None = None) -> list[AuditEntry]:
        if target:
            rows = await self.db.fetchall("SELECT * FROM audit WHERE target=? ORDER BY id DESC LIMIT ?", (target, limit))
        else:
            rows = await self.db.fetchall("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [audit_from_row(r) for r in rows]


class SqlRates(base.RateStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def take(self, key: str, *, rate_per_minute: int, now: float) -> bool:
        capacity = float(rate_per_minute)
        async with self.db.transaction() as tx:
            # Create the bucket full if missing (a racing creator wins harmlessly), then hold its row
            # while refilling and taking, so instances sharing the bucket queue on it.
            await tx.execute(
                "INSERT INTO rate_buckets (account, tokens, updated_at) VALUES (?,?,?) ON CONFLICT (account) DO NOTHING",
                (key, capacity, float(now)),
            )
            row = await tx.fetchone(
                f"SELECT tokens, updated_at FROM rate_buckets WHERE account=?{self.db.dialect.for_update}", (key,)
            )
            assert row is not None
            tokens = min(capacity, row["tokens"] + (now - row["updated_at"]) * capacity / 60.0)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            await tx.execute("UPDATE rate_buckets SET tokens=?, updated_at=? WHERE account=?", (tokens, float(now), key))
        return allowed
