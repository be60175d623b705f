"""Complaints and refused feedback reports (docs/SPEC.md §9, tables of migration 2), one set of queries for
both stores (relay/store/sql.py)."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from relay.store.account_events import complaint_event
from relay.store.complaints_base import ACKNOWLEDGED, INFORMATIONAL, OPEN, Complaint, ComplaintStore, RejectedReport
from relay.store.events_store import append_events
from relay.store.records import AuditEntry, DeliveryRecord, iso, parse_iso
from relay.store.rows import delivery_from_row
from relay.store.sql import Database, Row
from relay.store.tables import insert_audit

_TIME_FIELDS = ("received_at", "arrived_at", "deadline", "forwarded_at", "acknowledged_at", "escalated_at")
_FLAG_FIELDS = ("verified", "spam_trap")  # INTEGER 0/1 columns on both stores
COMPLAINT_COLUMNS = tuple(f.name for f in fields(Complaint) if f.name != "id")
_SELECT = f"SELECT id, {', '.join(COMPLAINT_COLUMNS)} FROM complaints"
_INSERT = (
    f"INSERT INTO complaints ({','.join(COMPLAINT_COLUMNS)}, report) "
    f"VALUES ({','.join('?' * (len(COMPLAINT_COLUMNS) + 1))}) ON CONFLICT (report_key) DO NOTHING RETURNING id"
)


def complaint_to_row(complaint: Complaint) -> tuple[Any, ...]:
    def column(name: str) -> Any:
        value = getattr(complaint, name)
        if name in _TIME_FIELDS:
            return iso(value)
        return int(value) if name in _FLAG_FIELDS else value

    return tuple(column(name) for name in COMPLAINT_COLUMNS)


def complaint_from_row(row: Row) -> Complaint:
    values: dict[str, Any] = {name: row[name] for name in COMPLAINT_COLUMNS}
    for name in _TIME_FIELDS:
        values[name] = parse_iso(values[name])
    for name in _FLAG_FIELDS:
        values[name] = bool(values[name])
    return Complaint(id=int(row["id"]), **values)


def rejected_from_row(row: Row, with_report: bool) -> RejectedReport:
    return RejectedReport(
        id=int(row["id"]),
        source=row["source"],
        reason=row["reason"],
        received_at=parse_iso(row["received_at"]),  # type: ignore[arg-type]
        size=int(row["size"]),
        report=bytes(row["report"]) if with_report else b"",
    )


class SqlComplaints(ComplaintStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, complaint: Complaint, report: bytes) -> tuple[Complaint, bool]:
        async with self.db.transaction() as tx:
            inserted = await tx.fetchall(_INSERT, (*complaint_to_row(complaint), report))
            if inserted:
                new_id = int(inserted[0][0])
                detail = {
                    "account": complaint.account, "status": complaint.status, "mapped_by": complaint.mapped_by,
                    "verified": complaint.verified, "spam_trap": complaint.spam_trap,
                }
                await insert_audit(tx, AuditEntry(
                    complaint.reporter or complaint.source, "complaint.received", f"complaint:{new_id}",
                    f"{complaint.feedback_type} via {complaint.source}", detail, complaint.received_at,
                ))
                row = await tx.fetchone(f"{_SELECT} WHERE id=?", (new_id,))
                await append_events(tx, [complaint_event(complaint, new_id)])
            else:
                # Known report (perhaps ingested by another instance): on PostgreSQL, ON CONFLICT waited
                # for that insert to commit, and this next statement's snapshot sees it.
                row = await tx.fetchone(f"{_SELECT} WHERE report_key=?", (complaint.report_key,))
        assert row is not None
        return complaint_from_row(row), bool(inserted)

    async def get(self, complaint_id: int) -> Complaint | None:
        row = await self.db.fetchone(f"{_SELECT} WHERE id=?", (complaint_id,))
        return complaint_from_row(row) if row else None

    async def report(self, complaint_id: int) -> bytes | None:
        row = await self.db.fetchone("SELECT report FROM complaints WHERE id=?", (complaint_id,))
        return bytes(row["report"]) if row else None

    async def list(self, *, open_only: bool = False, account: str | None = None, limit: int = 1000) -> list[Complaint]:
        where: list[str] = []
        params: list[Any] = []
        if open_only:
            where.append("status=?")
            params.append(OPEN)
        if account:
            where.append("account=?")
            params.append(account)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.fetchall(f"{_SELECT}{clause} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [complaint_from_row(r) for r in rows]

    async def _change(self, sql: str, params: tuple[Any, ...], audit: AuditEntry) -> bool:
        """`sql` and, when it changed the complaint, its audit entry, in one transaction."""
        async with self.db.transaction() as tx:
            if not await tx.execute(sql, params):
                return False
            await insert_audit(tx, audit)
        return True

    async def acknowledge(self, complaint_id: int, *, actor: str, note: str, at: datetime) -> bool:
        return await self._change(
            "UPDATE complaints SET status=?, acknowledged_at=?, acknowledged_by=?, ack_note=? WHERE id=? AND status=?",
            (ACKNOWLEDGED, iso(at), actor, note, complaint_id, OPEN),
            AuditEntry(actor, "complaint.acknowledged", f"complaint:{complaint_id}", note, {}, at),
        )

    async def overdue(self, now: datetime) -> list[Complaint]:
        rows = await self.db.fetchall(
            f"{_SELECT} WHERE status=? AND deadline IS NOT NULL AND deadline <= ? AND escalated_at IS NULL "
            "ORDER BY deadline, id",
            (OPEN, iso(now)),
        )
        return [complaint_from_row(r) for r in rows]

    async def mark_escalated(self, complaint_ids: list[int], *, at: datetime) -> int:
        if not complaint_ids:
            return 0
        in_ids, params = self.db.dialect.any_of("id", complaint_ids, "bigint")
        return await self.db.write(
            f"UPDATE complaints SET escalated_at=? WHERE {in_ids} AND escalated_at IS NULL", (iso(at), *params)
        )

    async def verify(self, complaint_id: int, *, actor: str, note: str, at: datetime, deadline: datetime | None) -> bool:
        return await self._change(
            "UPDATE complaints SET verified=1, deadline=? WHERE id=? AND verified=0",
            (iso(deadline), complaint_id),
            AuditEntry(actor, "complaint.verified", f"complaint:{complaint_id}", note, {}, at),
        )

    async def set_forwarded(self, complaint_id: int, *, to: str, at: datetime | None, error: str = "") -> None:
        await self.db.write(
            "UPDATE complaints SET forwarded_to=?, forwarded_at=?, forward_error=? WHERE id=?",
            (to, iso(at), error[:1000], complaint_id),
        )

    async def count_since(self, account: str, since: datetime) -> int:
        row = await self.db.fetchone(
            "SELECT count(*) FROM complaints WHERE account=? AND received_at >= ? AND status != ? AND verified=1",
            (account, iso(since), INFORMATIONAL),
        )
        return int(row[0]) if row else 0

    async def delivered_since(self, account: str, since: datetime) -> int:
        row = await self.db.fetchone(
            "SELECT count(*) FROM deliveries WHERE account=? AND delivered_at >= ?", (account, iso(since))
        )
        return int(row[0]) if row else 0

    async def deliveries_for_relay_id(self, relay_id: str) -> list[DeliveryRecord]:
        rows = await self.db.fetchall("SELECT * FROM deliveries WHERE relay_id=? ORDER BY id", (relay_id,))
        return [delivery_from_row(r) for r in rows]

    async def keep_rejected(self, *, source: str, reason: str, report: bytes, at: datetime) -> int:
        (row,) = await self.db.write_returning(
            "INSERT INTO feedback_rejects (source, reason, received_at, size, report) VALUES (?,?,?,?,?) RETURNING id",
            (source, reason[:1000], iso(at), len(report), report),
        )
        return int(row[0])

    async def list_rejected(self, *, limit: int = 100, with_report: bool = False) -> list[RejectedReport]:
        report = "report" if with_report else f"{self.db.dialect.empty_blob} AS report"
        rows = await self.db.fetchall(
            f"SELECT id, source, reason, received_at, size, {report} FROM feedback_rejects ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [rejected_from_row(r, with_report) for r in rows]
