"""Account events (docs/SPEC.md §17): what the relay decided that an application must know about.

The store writes them in the same transaction as the decision itself, numbered per account
(`seq` 1, 2, 3 … in commit order), so the feed's cursor — the last seq seen — is stable.
This module only builds them from the records the store writes; it does no I/O. It is the store's
(the names are relay/event_types.py's): relay/events reads the events, the store never imports it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Container, Iterable, Sequence

from policies.facts import Suppression
from relay.event_types import (
    ACCOUNT_STATE,
    BOUNCED,
    COMPLAINED,
    DEFERRED,
    DELETED,
    DELIVERED,
    EVENT_TYPES,
    QUARANTINED,
    REJECTED,
    RELEASED,
    SUPPRESSION_ADDED,
    SUPPRESSION_REMOVED,
    UNSUBSCRIBED,
)
from relay.store.complaints_base import Complaint
from relay.store.records import AccountState, DecisionRecord, DeliveryRecord, Event, event_from_row

__all__ = ["EVENT_TYPES", "Event", "event_from_row"]

# Suppressions a recipient made themselves (relay/unsubscribe/feature.py methods) are `unsubscribed`.
UNSUBSCRIBE_METHODS = frozenset({"one_click", "page", "mailto", "preferences"})
# Decision outcomes (relay/engine/pipeline.py) → the event each recipient of the decision gets.
# A `deferred` decision's recipients get their `deferred` from the queued copies instead.
_OUTCOMES = {"rejected": REJECTED, "tempfailed": DEFERRED, "quarantined": QUARANTINED}


def decision_events(
    decisions: Sequence[DecisionRecord], deliveries: Sequence[DeliveryRecord], delivered_for: Container[str] = ()
) -> list[Event]:
    """One event per recipient of a rejected, tempfailed or quarantined decision, one per queued copy,
    and one per delivered copy of the accounts in `delivered_for` (opt-in: it is every message)."""
    events: list[Event] = []
    for d in decisions:
        kind = _OUTCOMES.get(d.outcome)
        if kind is None or not d.account:
            continue
        detail: dict[str, Any] = {"rules": list(d.rules), "outcome": d.outcome}
        for recipient in d.recipients or ("",):
            events.append(Event(kind, d.account, d.created_at, d.stream, recipient, d.relay_id, d.message_id,
                                d.rules[0] if d.rules else "", detail))
    for copy in deliveries:
        kind = DELIVERED if copy.status == "delivered" else DEFERRED
        if kind == DELIVERED and copy.account not in delivered_for:
            continue
        events.append(Event(kind, copy.account, copy.delivered_at, copy.stream, copy.email, copy.relay_id,
                            copy.message_id, "", {"delivery": copy.id, "status": copy.status}))
    return events


def quarantine_event(status: str, account: str, stream: str, relay_id: str, recipients: Iterable[str],
                     rules: Sequence[str], actor: str, at: datetime) -> list[Event]:
    kind = RELEASED if status == "released" else DELETED
    return [
        Event(kind, account, at, stream, r, relay_id, "", rules[0] if rules else "", {"by": actor})
        for r in (tuple(recipients) or ("",))
    ]


def suppression_event(s: Suppression, at: datetime, *, added: bool = True, note: str = "") -> Event:
    if added and s.via in UNSUBSCRIBE_METHODS:
        kind = UNSUBSCRIBED
    elif added and "bounce" in s.reason:
        kind = BOUNCED  # a hard bounce suppresses the address (docs/SPEC.md §15): the application learns it as such
    else:
        kind = SUPPRESSION_ADDED if added else SUPPRESSION_REMOVED
    detail = {"scope": s.scope, "topic": s.topic, "reason": s.reason, "via": s.via}
    if note:
        detail["note"] = note
    return Event(kind, s.scope, at, recipient=s.email, detail=detail)


def account_state_event(state: AccountState, actor: str, note: str, at: datetime) -> Event:
    detail = {"state": state.state, "reason": state.reason, "paused_streams": sorted(state.paused_streams), "by": actor}
    if note:
        detail["note"] = note
    return Event(ACCOUNT_STATE, state.account, at, detail=detail)


def complaint_event(c: Complaint, complaint_id: int) -> Event:
    return Event(COMPLAINED, c.account, c.received_at, c.stream, c.email, c.relay_id, c.message_id, "",
                 {"complaint": complaint_id, "feedback_type": c.feedback_type, "status": c.status, "source": c.source})
