"""Complaints and refused feedback reports in the PostgreSQL store (tables of migration 2), as in SQLite."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from relay.store.complaints_base import ACKNOWLEDGED, INFORMATIONAL, OPEN, Complaint, ComplaintStore, RejectedReport
from relay.events import complaint_event
from relay.store.events_store import append_postgres
from relay.store.records import DeliveryRecord, iso
from relay.store.rows import delivery_from_row
from relay.store.sqlite_complaints import COMPLAINT_COLUMNS, complaint_from_row, complaint_to_row, rejected_from_row

if TYPE_CHECKING:
    from relay.store.postgres import PgTransaction, PostgresDatabase

_LIST_COLUMNS = "id, " + ", ".join(COMPLAINT_COLUMNS)


async def _audit(
    tx: PgTransaction, at: datetime, actor: str, action: str, target: str, note: str, detail: dict[str, Any]
) -> None:
    await tx.execute(
        "INSERT INTO audit (at, actor, action, target, note, detail) VALUES ($1,$2,$3,$4,$5,$6)",
        iso(at), actor, action, target, note, json.dumps(detail),
    )


class PostgresComplaints(ComplaintStore):
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def add(self, complaint: Complaint, report: bytes) -> tuple[Complaint, bool]:
        columns = ",".join(COMPLAINT_COLUMNS)
        marks = ",".join(f"${i}" for i in range(1, len(COMPLAINT_COLUMNS) + 2))
        async with self.db.transaction() as tx:
            new_id = await tx.fetchval(
                f"INSERT INTO complaints ({columns}, report) VALUES ({marks}) "
                "ON CONFLICT (report_key) DO NOTHING RETURNING id",
                *complaint_to_row(complaint),
                report,
            )
            if new_id is not None:
                await _audit(
                    tx, complaint.received_at, complaint.reporter or complaint.source, "complaint.received",
                    f"complaint:{new_id}", f"{complaint.feedback_type} via {complaint.source}",
                    {"account": complaint.account, "status": complaint.status, "mapped_by": complaint.mapped_by,
                     "verified": complaint.verified, "spam_trap": complaint.spam_trap},
                )
                row = await tx.fetchrow(f"SELECT {_LIST_COLUMNS} FROM complaints WHERE id=$1", new_id)
                await append_postgres(tx, [complaint_event(complaint, int(new_id))])
            else:
                # Known report (perhaps ingested by another instance): ON CONFLICT waited for that insert
                # to commit, and this next statement's snapshot sees it.
                row = await tx.fetchrow(
                    f"SELECT {_LIST_COLUMNS} FROM complaints WHERE report_key=$1", complaint.report_key
                )
        assert row is not None
        return complaint_from_row(row), new_id is not None

    async def get(self, complaint_id: int) -> Complaint | None:
        row = await self.db.fetchrow(f"SELECT {_LIST_COLUMNS} FROM complaints WHERE id=$1", complaint_id)
        return complaint_from_row(row) if row else None

    async def report(self, complaint_id: int) -> bytes | None:
        row = await self.db.fetchrow("SELECT report FROM complaints WHERE id=$1", complaint_id)
        return bytes(row["report"]) if row else None

    async def list(self, *, open_only: bool = False, account: str | None = None, limit: int = 1000) -> list[Complaint]:
        where: list[str] = []
        params: list[Any] = []
        if open_only:
            params.append(OPEN)
            where.append(f"status=${len(params)}")
        if account:
            params.append(account)
            where.append(f"account=${len(params)}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.append(limit)
        rows = await self.db.fetch(
            f"SELECT {_LIST_COLUMNS} FROM complaints {clause} ORDER BY id DESC LIMIT ${len(params)}", *params
        )
        return [complaint_from_row(r) for r in rows]

    async def acknowledge(self, complaint_id: int, *, actor: str, note: str, at: datetime) -> bool:
        async with self.db.transaction() as tx:
            status = await tx.execute(
                "UPDATE complaints SET status=$1, acknowledged_at=$2, acknowledged_by=$3, ack_note=$4 "
                "WHERE id=$5 AND status=$6",
                ACKNOWLEDGED, iso(at), actor, note, complaint_id, OPEN,
            )
            if status.endswith(" 0"):
                return False
            await _audit(tx, at, actor, "complaint.acknowledged", f"complaint:{complaint_id}", note, {})
        return True

    async def overdue(self, now: datetime) -> list[Complaint]:
        rows = await self.db.fetch(
            f"SELECT {_LIST_COLUMNS} FROM complaints WHERE status=$1 AND deadline IS NOT NULL AND deadline <= $2 "
            "AND escalated_at IS NULL ORDER BY deadline, id",
            OPEN,
            iso(now),
        )
        return [complaint_from_row(r) for r in rows]

    async def mark_escalated(self, complaint_ids: list[int], *, at: datetime) -> int:
        if not complaint_ids:
            return 0
        return await self.db.write(
            "UPDATE complaints SET escalated_at=$1 WHERE id = ANY($2::bigint[]) AND escalated_at IS NULL",
            iso(at),
            list(complaint_ids),
        )

    async def verify(self, complaint_id: int, *, actor: str, note: str, at: datetime, deadline: datetime | None) -> bool:
        async with self.db.transaction() as tx:
            status = await tx.execute(
                "UPDATE complaints SET verified=1, deadline=$1 WHERE id=$2 AND verified=0", iso(deadline), complaint_id
            )
            if status.endswith(" 0"):
                return False
            await _audit(tx, at, actor, "complaint.verified", f"complaint:{complaint_id}", note, {})
        return True

    async def set_forwarded(self, complaint_id: int, *, to: str, at: datetime | None, error: str = "") -> None:
        await self.db.write(
            "UPDATE complaints SET forwarded_to=$1, forwarded_at=$2, forward_error=$3 WHERE id=$4",
            to, iso(at), error[:1000], complaint_id,
        )

    async def count_since(self, account: str, since: datetime) -> int:
        value = await self.db.fetchval(
            "SELECT count(*) FROM complaints WHERE account=$1 AND received_at >= $2 AND status != $3 AND verified=1",
            account, iso(since), INFORMATIONAL,
        )
        return int(value or 0)

    async def delivered_since(self, account: str, since: datetime) -> int:
        value = await self.db.fetchval(
            "SELECT count(*) FROM deliveries WHERE account=$1 AND delivered_at >= $2", account, iso(since)
        )
        return int(value or 0)

    async def deliveries_for_relay_id(self, relay_id: str) -> list[DeliveryRecord]:
        rows = await self.db.fetch("SELECT * FROM deliveries WHERE relay_id=$1 ORDER BY id", relay_id)
        return [delivery_from_row(r) for r in rows]

    async def keep_rejected(self, *, source: str, reason: str, report: bytes, at: datetime) -> int:
        new_id = await self.db.fetchval(
            "INSERT INTO feedback_rejects (source, reason, received_at, size, report) VALUES ($1,$2,$3,$4,$5) RETURNING id",
            source, reason[:1000], iso(at), len(report), report,
        )
        return int(new_id)

    async def list_rejected(self, *, limit: int = 100, with_report: bool = False) -> list[RejectedReport]:
        columns = "id, source, reason, received_at, size, " + ("report" if with_report else "''::bytea AS report")
        rows = await self.db.fetch(f"SELECT {columns} FROM feedback_rejects ORDER BY id DESC LIMIT $1", limit)
        return [rejected_from_row(r, with_report) for r in rows]
