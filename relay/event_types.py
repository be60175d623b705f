"""The names of account events (docs/SPEC.md §17), one vocabulary below the packages: relay/config.py checks
`[[accounts.webhooks]] events` with it, relay/store writes the events, relay/events serves them."""

from __future__ import annotations

REJECTED = "rejected"
QUARANTINED = "quarantined"
RELEASED = "released"
DELETED = "deleted"
DELIVERED = "delivered"
DEFERRED = "deferred"
UNSUBSCRIBED = "unsubscribed"
COMPLAINED = "complained"
BOUNCED = "bounced"
SUPPRESSION_ADDED = "suppression_added"
SUPPRESSION_REMOVED = "suppression_removed"
ACCOUNT_STATE = "account_state"
SIGNUP_CONFIRMED = "signup_confirmed"
EVENT_TYPES = (
    REJECTED, QUARANTINED, RELEASED, DELETED, DELIVERED, DEFERRED, UNSUBSCRIBED, COMPLAINED, BOUNCED,
    SUPPRESSION_ADDED, SUPPRESSION_REMOVED, ACCOUNT_STATE, SIGNUP_CONFIRMED,
)
# What a webhook gets when its config names no types: every one but `delivered`, one per message copy.
DEFAULT_WEBHOOK_EVENTS = tuple(t for t in EVENT_TYPES if t != DELIVERED)
