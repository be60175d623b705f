"""Row <-> record conversion shared by the SQL backends."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any, Iterable, Mapping, Sequence

from policies.facts import ConsentRecord, Suppression
from relay.store.records import (
    AuditEntry,
    DecisionRecord,
    DeliveryRecord,
    OutboxItem,
    QuarantineItem,
    iso,
    parse_iso,
)

CONSENT_TIME_FIELDS = (
    "collected_at",
    "confirmed_at",
    "last_purchase_at",
    "last_interaction_at",
    "revoked_at",
    "created_at",
    "updated_at",
)
CONSENT_BOOL_FIELDS = (
    "prechecked",
    "frequency_disclosed",
    "informed_at_collection",
    "objection_offered",
    "email_contact_announced",
)
# Columns written on upsert, in order (id is generated, created_at kept on update).
CONSENT_COLUMNS = tuple(f.name for f in fields(ConsentRecord) if f.name != "id")
# Provenance columns compared to decide whether a re-import changes anything.
CONSENT_CONTENT_COLUMNS = tuple(c for c in CONSENT_COLUMNS if c not in ("created_at", "updated_at"))


_GET_CONSENT_COLUMNS = attrgetter(*CONSENT_COLUMNS)
_TIME_INDEXES = tuple(i for i, c in enumerate(CONSENT_COLUMNS) if c in CONSENT_TIME_FIELDS)
_BOOL_INDEXES = tuple(i for i, c in enumerate(CONSENT_COLUMNS) if c in CONSENT_BOOL_FIELDS)
_CREATED = CONSENT_COLUMNS.index("created_at")
_UPDATED = CONSENT_COLUMNS.index("updated_at")


def consent_to_row(record: ConsentRecord, stamp: str | None = None) -> list[Any]:
    """Column values in CONSENT_COLUMNS order; `stamp` fills a missing created_at/updated_at.
    On the import path for every row, so: one attrgetter, then only the columns needing conversion."""
    row = list(_GET_CONSENT_COLUMNS(record))
    for i in _TIME_INDEXES:
        value = row[i]
        if value is not None:
            row[i] = value.isoformat(timespec="microseconds") if value.tzinfo is timezone.utc else iso(value)
    for i in _BOOL_INDEXES:
        row[i] = 1 if row[i] else 0
    if stamp is not None:
        if row[_CREATED] is None:
            row[_CREATED] = stamp
        if row[_UPDATED] is None:
            row[_UPDATED] = stamp
    return row


# Re-importing a row must not undo what happened since: a revocation stays unless the row carries
# consent given after it, and interaction dates only move forward.
_KEEP_REVOCATION = (
    "consents.revoked_at IS NOT NULL AND (excluded.collected_at IS NULL OR excluded.collected_at <= consents.revoked_at)"
)
_FORWARD_ONLY = ("confirmed_at", "last_purchase_at", "last_interaction_at")


def consent_merge_expression(column: str) -> str:
    """The value a consent column takes when an upsert meets an existing row (portable SQL)."""
    if column in ("revoked_at", "revoked_via"):
        return f"CASE WHEN {_KEEP_REVOCATION} THEN consents.{column} ELSE excluded.{column} END"
    if column in _FORWARD_ONLY:
        return (
            f"CASE WHEN consents.{column} IS NULL OR excluded.{column} > consents.{column} "
            f"THEN excluded.{column} ELSE consents.{column} END"
        )
    return f"excluded.{column}"


_REVOCATION_INDEXES = tuple(CONSENT_COLUMNS.index(c) for c in ("revoked_at", "revoked_via"))
_FORWARD_INDEXES = tuple(CONSENT_COLUMNS.index(c) for c in _FORWARD_ONLY)
_CONTENT_INDEXES = tuple(CONSENT_COLUMNS.index(c) for c in CONSENT_CONTENT_COLUMNS)
_COLLECTED = CONSENT_COLUMNS.index("collected_at")
_REVOKED = CONSENT_COLUMNS.index("revoked_at")


def merged_consent_row(stored: list[Any], incoming: list[Any]) -> list[Any]:
    """What `consent_merge_expression` makes of a stored row meeting an incoming one, in Python:
    a dry run answers "unchanged" without writing. Both rows as `consent_to_row` gives them."""
    merged = list(incoming)
    revoked = stored[_REVOKED]
    if revoked is not None and (incoming[_COLLECTED] is None or incoming[_COLLECTED] <= revoked):
        for i in _REVOCATION_INDEXES:
            merged[i] = stored[i]
    for i in _FORWARD_INDEXES:
        if not (stored[i] is None or (incoming[i] is not None and incoming[i] > stored[i])):
            merged[i] = stored[i]
    return merged


def consent_row_unchanged(stored: list[Any], merged: list[Any]) -> bool:
    """The upsert's WHERE clause, negated: no provenance column would change."""
    return all(stored[i] == merged[i] for i in _CONTENT_INDEXES)


# A consent's columns as the recipients' lookup selects them: id, then the record's fields in order.
CONSENT_SELECT = ("id", *CONSENT_COLUMNS)
_SELECT_TIMES = tuple(i for i, c in enumerate(CONSENT_SELECT) if c in CONSENT_TIME_FIELDS)
_SELECT_BOOLS = tuple(i for i, c in enumerate(CONSENT_SELECT) if c in CONSENT_BOOL_FIELDS)
if fields(ConsentRecord)[-1].name != "id":  # consent_from_values passes the other fields by position
    raise TypeError("ConsentRecord.id must be its last field")


def consent_from_values(values: Sequence[Any]) -> ConsentRecord:
    """A consent from its columns in CONSENT_SELECT order. By position: on the path of every
    recipient, where looking up two dozen columns by name cost more than the query."""
    v = list(values)
    for i in _SELECT_TIMES:
        v[i] = parse_iso(v[i])
    for i in _SELECT_BOOLS:
        v[i] = bool(v[i])
    return ConsentRecord(*v[1:], id=str(v[0]))


def consent_from_row(row: Mapping[str, Any]) -> ConsentRecord:
    return consent_from_values([row[name] for name in CONSENT_SELECT])


# The suppression columns the recipients' lookup (relay/store/tables.py) puts in consent columns of
# the same name; reason and via follow the consent columns.
SUPPRESSION_LOOKUP = ("id", "email", "scope", "topic", "created_at")
_LOOKUP_EMAIL, _LOOKUP_SCOPE, _LOOKUP_TOPIC, _LOOKUP_CREATED = (
    1 + CONSENT_SELECT.index(c) for c in ("email", "scope", "topic", "created_at")
)
_LOOKUP_REASON = 1 + len(CONSENT_SELECT)


def suppression_from_lookup(row: Sequence[Any]) -> Suppression:
    """A suppression row of the recipients' lookup (kind, CONSENT_SELECT columns, reason, via)."""
    return Suppression(
        email=row[_LOOKUP_EMAIL],
        scope=row[_LOOKUP_SCOPE],
        topic=row[_LOOKUP_TOPIC],
        reason=row[_LOOKUP_REASON],
        via=row[_LOOKUP_REASON + 1],
        created_at=parse_iso(row[_LOOKUP_CREATED]),
    )


def suppression_from_row(row: Mapping[str, Any]) -> Suppression:
    return Suppression(
        email=row["email"],
        scope=row["scope"],
        topic=row["topic"],
        reason=row["reason"],
        via=row["via"],
        created_at=parse_iso(row["created_at"]),
    )


@lru_cache(maxsize=512)
def _json_names(names: tuple[str, ...]) -> str:
    return json.dumps(list(names))


def _json_list(values: Sequence[Any]) -> str:
    """A decision's rule ids as JSON: the same few tuples on message after message (the rules a
    profile ran and found nothing are most of a decision's row), so their text is kept."""
    if not values:
        return "[]"
    try:
        return _json_names(values)  # type: ignore[arg-type]
    except TypeError:  # a list, not a tuple
        return json.dumps(list(values))


def _json_strs(values: Sequence[str]) -> str:
    """json.dumps(list(values)) for strs, without the encoder json.dumps makes per call (a decision's
    recipients, on every message): its ', ' between and its ASCII escapes, the same text."""
    if all(type(v) is str for v in values):
        return "[" + ", ".join(map(encode_basestring_ascii, values)) + "]"
    return json.dumps(list(values))


def decision_to_row(d: DecisionRecord) -> tuple[Any, ...]:
    return (
        d.relay_id,
        d.message_id,
        d.account,
        d.stream,
        d.mail_from,
        _json_strs(d.recipients),
        d.outcome,
        _json_list(d.rules),
        json.dumps(list(d.findings)) if d.findings else "[]",
        iso(d.created_at),
        _json_list(d.misses),
    )


def decision_from_row(row: Mapping[str, Any]) -> DecisionRecord:
    return DecisionRecord(
        relay_id=row["relay_id"],
        outcome=row["outcome"],
        created_at=parse_iso(row["created_at"]),  # type: ignore[arg-type]
        message_id=row["message_id"],
        account=row["account"],
        stream=row["stream"],
        mail_from=row["mail_from"],
        recipients=tuple(json.loads(row["recipients"])),
        rules=tuple(json.loads(row["rules"])),
        findings=tuple(json.loads(row["findings"])),
        misses=tuple(json.loads(row["misses"])),
    )


def delivery_to_row(d: DeliveryRecord) -> tuple[Any, ...]:
    return (
        d.id,
        d.relay_id,
        d.message_id,
        d.account,
        d.stream,
        d.scope,
        d.topic,
        d.email,
        d.consent_id,
        d.status,
        iso(d.delivered_at),
    )


def delivery_from_row(row: Mapping[str, Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row["id"],
        relay_id=row["relay_id"],
        account=row["account"],
        stream=row["stream"],
        email=row["email"],
        status=row["status"],
        delivered_at=parse_iso(row["delivered_at"]),  # type: ignore[arg-type]
        message_id=row["message_id"],
        scope=row["scope"],
        topic=row["topic"],
        consent_id=row["consent_id"],
    )


OUTBOX_INSERT = (
    "INSERT INTO outbox (relay_id, account, stream, mail_from, rcpt_tos, content, attempts, next_attempt_at, "
    "created_at, last_error) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id"
)


def outbox_to_row(item: OutboxItem, now: float) -> tuple[Any, ...]:
    """OUTBOX_INSERT's parameters; `now` where the item has no times yet."""
    return (
        item.relay_id, item.account, item.stream, item.mail_from, json.dumps(list(item.rcpt_tos)), item.content,
        item.attempts, float(item.next_attempt_at or now), float(item.created_at or now), item.last_error,
    )


def outbox_from_row(row: Mapping[str, Any]) -> OutboxItem:
    return OutboxItem(
        id=row["id"],
        relay_id=row["relay_id"],
        account=row["account"],
        stream=row["stream"],
        mail_from=row["mail_from"],
        rcpt_tos=tuple(json.loads(row["rcpt_tos"])),
        content=bytes(row["content"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        last_error=row["last_error"],
        uncertain=row["uncertain"],
    )


def claimed_outbox(row: Mapping[str, Any], interrupted_send: bool) -> OutboxItem:
    """A copy as its claimer sees it, from the row as it was before the claim: an interrupted
    send counts as one more uncertain attempt (the claim wrote the same into the row)."""
    item = outbox_from_row(row)
    if not interrupted_send:
        return item
    return dataclasses.replace(item, interrupted_send=True, uncertain=item.uncertain + 1)


def audit_from_row(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=parse_iso(row["at"]),
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        note=row["note"],
        detail=json.loads(row["detail"]),
    )


def quarantine_from_row(row: Mapping[str, Any], with_content: bool) -> QuarantineItem:
    return QuarantineItem(
        id=row["id"],
        relay_id=row["relay_id"],
        account=row["account"],
        stream=row["stream"],
        mail_from=row["mail_from"],
        rcpt_tos=tuple(json.loads(row["rcpt_tos"])),
        subject=row["subject"],
        rules=tuple(json.loads(row["rules"])),
        findings=tuple(json.loads(row["findings"])),
        size=row["size"],
        received_at=parse_iso(row["received_at"]),  # type: ignore[arg-type]
        status=row["status"],
        content=bytes(row["content"]) if with_content else b"",
    )


def split_quarantine_counts(groups: Iterable[tuple[str, str, int]]) -> tuple[dict[str, int], dict[str, int]]:
    """(account, rules as JSON, held) groups -> (held per rule, held per account)."""
    by_rule: dict[str, int] = {}
    by_account: dict[str, int] = {}
    for account, rules, n in groups:
        by_account[account] = by_account.get(account, 0) + n
        for rule in dict.fromkeys(json.loads(rules)):
            by_rule[rule] = by_rule.get(rule, 0) + n
    return by_rule, by_account


def abandoned_release_audit(actor: str, item_id: str, at: datetime) -> AuditEntry:
    """The audit entry of a release claim given back because its process never finished it."""
    note = "a release never finished (its process stopped); held again"
    return AuditEntry(actor, "quarantine.release_abandoned", item_id, note, {}, at)
