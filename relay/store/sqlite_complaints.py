"""Complaints and refused feedback reports in the embedded SQLite store (tables of migration 2)."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiosqlite

from relay.store.complaints_base import ACKNOWLEDGED, INFORMATIONAL, OPEN, Complaint, ComplaintStore, RejectedReport
from relay.events import complaint_event
from relay.store.events_store import append_sqlite
from relay.store.records import DeliveryRecord, iso, parse_iso
from relay.store.rows import delivery_from_row

if TYPE_CHECKING:
    from relay.store.sqlite import SqliteDatabase

_TIME_FIELDS = ("received_at", "arrived_at", "deadline", "forwarded_at", "acknowledged_at", "escalated_at")
_FLAG_FIELDS = ("verified", "spam_trap")  # INTEGER 0/1 columns on both backends
COMPLAINT_COLUMNS = tuple(f.name for f in fields(Complaint) if f.name != "id")


def complaint_to_row(complaint: Complaint) -> tuple[Any, ...]:
    def column(name: str) -> Any:
        value = getattr(complaint, name)
        if name in _TIME_FIELDS:
            return iso(value)
        return int(value) if name in _FLAG_FIELDS else value

    return tuple(column(name) for name in COMPLAINT_COLUMNS)


def complaint_from_row(row: Any) -> Complaint:
    values: dict[str, Any] = {name: row[name] for name in COMPLAINT_COLUMNS}
    for name in _TIME_FIELDS:
        values[name] = parse_iso(values[name])
    for name in _FLAG_FIELDS:
        values[name] = bool(values[name])
    return Complaint(id=int(row["id"]), **values)


def rejected_from_row(row: Any, with_report: bool) -> RejectedReport:
    return RejectedReport(
        id=int(row["id"]),
        source=row["source"],
        reason=row["reason"],
        received_at=parse_iso(row["received_at"]),  # type: ignore[arg-type]
        size=int(row["size"]),
        report=bytes(row["report"]) if with_report else b"",
    )


async def _audit(conn: aiosqlite.Connection, at: datetime, actor: str, action: str, target: str, note: str, detail: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO audit (at, actor, action, target, note, detail) VALUES (?,?,?,?,?,?)",
        (iso(at), actor, action, target, note, json.dumps(detail)),
    )


_LIST_COLUMNS = "id, " + ", ".join(COMPLAINT_COLUMNS)


class SqliteComplaints(ComplaintStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def add(self, complaint: Complaint, report: bytes) -> tuple[Complaint, bool]:
        columns = ",".join(COMPLAINT_COLUMNS)
        marks = ",".join("?" * (len(COMPLAINT_COLUMNS) + 1))
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                f"INSERT INTO complaints ({columns}, report) VALUES ({marks}) ON CONFLICT (report_key) DO NOTHING",
                (*complaint_to_row(complaint), report),
            )
            created = cursor.rowcount > 0
            if created:
                new_id = int(cursor.lastrowid or 0)
                await _audit(
                    conn, complaint.received_at, complaint.reporter or complaint.source, "complaint.received",
                    f"complaint:{new_id}", f"{complaint.feedback_type} via {complaint.source}",
                    {"account": complaint.account, "status": complaint.status, "mapped_by": complaint.mapped_by,
                     "verified": complaint.verified, "spam_trap": complaint.spam_trap},
                )
                rows = list(await conn.execute_fetchall(f"SELECT {_LIST_COLUMNS} FROM complaints WHERE id=?", (new_id,)))
                await append_sqlite(conn, [complaint_event(complaint, new_id)])
            else:
                rows = list(
                    await conn.execute_fetchall(
                        f"SELECT {_LIST_COLUMNS} FROM complaints WHERE report_key=?", (complaint.report_key,)
                    )
                )
        return complaint_from_row(rows[0]), created

    async def get(self, complaint_id: int) -> Complaint | None:
        row = await self.db.fetchone(f"SELECT {_LIST_COLUMNS} FROM complaints WHERE id=?", (complaint_id,))
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
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.fetchall(
            f"SELECT {_LIST_COLUMNS} FROM complaints {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [complaint_from_row(r) for r in rows]

    async def acknowledge(self, complaint_id: int, *, actor: str, note: str, at: datetime) -> bool:
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE complaints SET status=?, acknowledged_at=?, acknowledged_by=?, ack_note=? WHERE id=? AND status=?",
                (ACKNOWLEDGED, iso(at), actor, note, complaint_id, OPEN),
            )
            if cursor.rowcount == 0:
                return False
            await _audit(conn, at, actor, "complaint.acknowledged", f"complaint:{complaint_id}", note, {})
        return True

    async def overdue(self, now: datetime) -> list[Complaint]:
        rows = await self.db.fetchall(
            f"SELECT {_LIST_COLUMNS} FROM complaints WHERE status=? AND deadline IS NOT NULL AND deadline <= ? "
            "AND escalated_at IS NULL ORDER BY deadline, id",
            (OPEN, iso(now)),
        )
        return [complaint_from_row(r) for r in rows]

    async def mark_escalated(self, complaint_ids: list[int], *, at: datetime) -> int:
        if not complaint_ids:
            return 0
        marks = ",".join("?" * len(complaint_ids))
        return await self.db.write(
            f"UPDATE complaints SET escalated_at=? WHERE id IN ({marks}) AND escalated_at IS NULL",
            (iso(at), *complaint_ids),
        )

    async def verify(self, complaint_id: int, *, actor: str, note: str, at: datetime, deadline: datetime | None) -> bool:
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE complaints SET verified=1, deadline=? WHERE id=? AND verified=0", (iso(deadline), complaint_id)
            )
            if cursor.rowcount == 0:
                return False
            await _audit(conn, at, actor, "complaint.verified", f"complaint:{complaint_id}", note, {})
        return True

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
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO feedback_rejects (source, reason, received_at, size, report) VALUES (?,?,?,?,?)",
                (source, reason[:1000], iso(at), len(report), report),
            )
            return int(cursor.lastrowid or 0)

    async def list_rejected(self, *, limit: int = 100, with_report: bool = False) -> list[RejectedReport]:
        columns = "id, source, reason, received_at, size, " + ("report" if with_report else "x'' AS report")
        rows = await self.db.fetchall(f"SELECT {columns} FROM feedback_rejects ORDER BY id DESC LIMIT ?", (limit,))
        return [rejected_from_row(r, with_report) for r in rows]

