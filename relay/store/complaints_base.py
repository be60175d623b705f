"""The complaint store interface (docs/SPEC.md §9): complaints with their deadlines, malformed reports kept
for inspection, and the counts the complaint rate needs."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime

from relay.store.records import DeliveryRecord

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
INFORMATIONAL = "informational"  # not-spam and similar: recorded, never counted, nothing to answer
STATUSES = (OPEN, ACKNOWLEDGED, INFORMATIONAL)


@dataclass(frozen=True)
class Complaint:
    account: str
    email: str
    feedback_type: str
    status: str
    source: str  # mail | api | cli
    received_at: datetime
    report_key: str  # the same report ingested twice is one complaint
    id: int = 0
    arrived_at: datetime | None = None
    deadline: datetime | None = None
    message_id: str = ""
    relay_id: str = ""
    delivery_id: int | None = None
    stream: str = ""
    mapped_by: str = ""  # unsubscribe_token | mailto_token | relay_id | message_id | original_rcpt_to | api
    reporter: str = ""  # the feedback loop's User-Agent, or the admin who entered it
    forwarded_to: str = ""
    forwarded_at: datetime | None = None
    forward_error: str = ""
    acknowledged_at: datetime | None = None
    acknowledged_by: str = ""
    ack_note: str = ""
    escalated_at: datetime | None = None
    # docs/SPEC.md §16: from a configured feedback loop (or an admin). An unverified one suppresses but neither
    # counts toward account.complaint_rate nor has a deadline until an admin verifies it.
    verified: bool = True
    spam_trap: bool = False  # a spam-trap hit: pauses the account at once (account.complaint_rate)

    @property
    def counts(self) -> bool:
        """Whether it is a recipient's complaint (suppresses, counts towards the rate)."""
        return self.status != INFORMATIONAL


@dataclass(frozen=True)
class RejectedReport:
    id: int
    source: str
    reason: str
    received_at: datetime
    size: int
    report: bytes = b""


class ComplaintStore(abc.ABC):
    @abc.abstractmethod
    async def add(self, complaint: Complaint, report: bytes) -> tuple[Complaint, bool]:
        """Record a complaint and its audit entry; (the existing one, False) when its report_key is known."""

    @abc.abstractmethod
    async def get(self, complaint_id: int) -> Complaint | None: ...

    @abc.abstractmethod
    async def report(self, complaint_id: int) -> bytes | None:
        """The report as received."""

    @abc.abstractmethod
    async def list(self, *, open_only: bool = False, account: str | None = None, limit: int = 1000) -> list[Complaint]:
        """Newest first."""

    @abc.abstractmethod
    async def acknowledge(self, complaint_id: int, *, actor: str, note: str, at: datetime) -> bool:
        """Close an open complaint with its audit entry; False when it is not open."""

    @abc.abstractmethod
    async def overdue(self, now: datetime) -> list[Complaint]:
        """Open complaints whose deadline has passed and that did not yet lead to a suspension."""

    @abc.abstractmethod
    async def mark_escalated(self, complaint_ids: list[int], *, at: datetime) -> int: ...

    @abc.abstractmethod
    async def verify(self, complaint_id: int, *, actor: str, note: str, at: datetime, deadline: datetime | None) -> bool:
        """Mark an unverified complaint verified (its deadline starts) with its audit entry; False when
        it is not an unverified one."""

    @abc.abstractmethod
    async def set_forwarded(self, complaint_id: int, *, to: str, at: datetime | None, error: str = "") -> None: ...

    @abc.abstractmethod
    async def count_since(self, account: str, since: datetime) -> int:
        """Verified counting complaints (not informational ones) received at or after `since`."""

    @abc.abstractmethod
    async def delivered_since(self, account: str, since: datetime) -> int:
        """Recipients the account's mail was delivered (or queued) to at or after `since`."""

    @abc.abstractmethod
    async def deliveries_for_relay_id(self, relay_id: str) -> list[DeliveryRecord]: ...

    @abc.abstractmethod
    async def keep_rejected(self, *, source: str, reason: str, report: bytes, at: datetime) -> int:
        """Keep a refused report for inspection; returns its id."""

    @abc.abstractmethod
    async def list_rejected(self, *, limit: int = 100, with_report: bool = False) -> list[RejectedReport]: ...
