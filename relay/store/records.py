"""Rows the store reads and writes, as frozen dataclasses shared by every backend."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from policies.frozen import quick_init


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_last_iso: tuple[datetime | None, str | None] = (None, None)  # the last moment iso wrote, and its text


def iso(value: datetime | None) -> str | None:
    global _last_iso
    if value is None:
        return None
    # A message's decision and its deliveries carry the one `now` of their recording: its text is
    # made once (the object itself, immutable, is the key; one tuple, so a thread reads a pair).
    last, text = _last_iso
    if value is last:
        return text
    moment = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    elif moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    text = moment.isoformat(timespec="microseconds")
    _last_iso = (value, text)
    return text


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@quick_init
@dataclass(frozen=True)
class AccountState:
    account: str
    state: str = "active"  # active | paused | suspended
    reason: str = ""
    paused_streams: frozenset[str] = frozenset()
    updated_at: datetime | None = None


@quick_init
@dataclass(frozen=True)
class DecisionRecord:
    relay_id: str
    outcome: str
    created_at: datetime
    message_id: str = ""
    account: str = ""
    stream: str = ""
    mail_from: str = ""
    recipients: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    findings: tuple[dict[str, object], ...] = ()
    misses: tuple[str, ...] = ()  # the rules that ran and found nothing: the whole evaluation is kept


@quick_init
@dataclass(frozen=True)
class DeliveryRecord:
    """One recipient's copy, for the proof, complaint mapping and mailto unsubscribe tokens."""

    id: int
    relay_id: str
    account: str
    stream: str
    email: str
    status: str  # delivered | queued
    delivered_at: datetime
    message_id: str = ""
    scope: str = ""
    topic: str = ""
    consent_id: int | None = None


@dataclass(frozen=True)
class OutboxItem:
    relay_id: str
    account: str
    stream: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    id: int = 0
    attempts: int = 0
    next_attempt_at: float = 0.0
    created_at: float = 0.0
    last_error: str = ""
    # Attempts whose acceptance by the upstream is unknown (connection lost after the message was
    # sent, or a holder that stopped during a send): a later delivery is then "maybe twice".
    uncertain: int = 0
    # Set by claim_due when the previous holder's lease ran out during a send (it was killed or
    # lost the store): this attempt is uncertain from the start.
    interrupted_send: bool = False


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    target: str
    note: str = ""
    detail: dict[str, object] = field(default_factory=dict)
    at: datetime | None = None
    id: int = 0


@dataclass(frozen=True)
class QuarantineItem:
    id: str
    relay_id: str
    account: str
    stream: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    rules: tuple[str, ...]
    findings: tuple[dict[str, object], ...]
    size: int
    received_at: datetime
    status: str = "held"
    content: bytes = b""


@dataclass(frozen=True)
class Event:
    type: str
    account: str
    at: datetime
    stream: str = ""
    recipient: str = ""
    relay_id: str = ""
    message_id: str = ""
    rule: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    seq: int = 0  # given by the store when written

    @property
    def id(self) -> str:
        """Unique and stable across deliveries: the webhook-id of the Standard Webhooks headers."""
        return f"evt_{self.account}_{self.seq}"

    def body(self) -> str:
        """What the store keeps besides (account, seq, type, at)."""
        return json.dumps(
            {"stream": self.stream, "recipient": self.recipient, "relay_id": self.relay_id,
             "message_id": self.message_id, "rule": self.rule, "detail": self.detail},
            ensure_ascii=False, sort_keys=True, default=str,
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of docs/SPEC.md §17 (the feed, webhooks, `events tail --json`)."""
        return {
            "id": self.id, "type": self.type, "at": iso(self.at), "account": self.account, "stream": self.stream,
            "recipient": self.recipient, "relay_id": self.relay_id, "message_id": self.message_id,
            "rule": self.rule, "detail": self.detail, "cursor": str(self.seq),
        }


def event_from_row(account: str, seq: int, type_: str, at: datetime, body: str) -> Event:
    data = json.loads(body)
    return Event(type_, account, at, data.get("stream", ""), data.get("recipient", ""), data.get("relay_id", ""),
                 data.get("message_id", ""), data.get("rule", ""), data.get("detail", {}), seq)
