"""Complaint enforcement and the message rate (POLICY.md, account rules): an unanswered complaint
suspends, a complaint spike pauses, a full token bucket tempfails. Pure checks on small facts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from policies.facts import MessageFacts
from policies.findings import Hit, Stage
from policies.rule import rule

UNANSWERED = "account.complaint_unanswered"
RATE = "account.complaint_rate"
RATE_LIMITED = "account.rate_limited"


@dataclass(frozen=True)
class OpenComplaint:
    id: str
    received_at: datetime
    deadline: datetime


@dataclass(frozen=True)
class UnansweredFacts:
    """An account's complaints still waiting for its answer, and the time of the check."""

    account: str
    open_complaints: tuple[OpenComplaint, ...]
    now: datetime


@dataclass(frozen=True)
class ComplaintRateFacts:
    """Complaints and delivered recipients of one account in the window before now."""

    account: str
    complaints: int
    delivered: int
    threshold: float  # complaints / delivered above this pauses (0.003 = 0.3%)
    min_complaints: int
    window_hours: float
    spam_trap_hits: int = 0  # verified reports from a spam trap (docs/SPEC.md §16): one pauses at once


def _hours(value: float) -> str:
    return f"{value:g} h"


@rule(
    UNANSWERED,
    "A complaint forwarded to the account got no answer before its deadline: suspend the account.",
    clauses=("M-violation",),
    stage=Stage.ACCOUNT,
)
def complaint_unanswered(facts: UnansweredFacts) -> Hit | None:
    overdue = sorted((c for c in facts.open_complaints if c.deadline <= facts.now), key=lambda c: (c.deadline, c.id))
    if not overdue:
        return None
    first = overdue[0]
    allowed = (first.deadline - first.received_at).total_seconds() / 3600
    more = f" (and {len(overdue) - 1} more)" if len(overdue) > 1 else ""
    return Hit(
        f"complaint {first.id} not acknowledged within {_hours(allowed)}{more}",
        evidence=",".join(c.id for c in overdue),
    )


@rule(
    RATE,
    "Complaints over the configured share of delivered recipients in the window: pause the account.",
    clauses=("M-onmiddellijk-opgeschort", "E-campagne-gepauzeerd"),
    stage=Stage.ACCOUNT,
)
def complaint_rate(facts: ComplaintRateFacts) -> Hit | None:
    if facts.spam_trap_hits > 0:
        return Hit(
            f"{facts.spam_trap_hits} spam-trap hit{'s' if facts.spam_trap_hits > 1 else ''} in {_hours(facts.window_hours)}: "
            "mail went to an address nobody signed up with",
            evidence=f"spam_trap_hits={facts.spam_trap_hits}",
        )
    if facts.complaints < max(1, facts.min_complaints):
        return None
    # Compared as the decimal the operator wrote: 3 of 1000 at 0.003 is at the limit, not over it.
    limit = Fraction(str(facts.threshold)) * facts.delivered
    if Fraction(facts.complaints) <= limit:
        return None
    share = f"{facts.complaints / facts.delivered:.2%}" if facts.delivered else "no deliveries"
    return Hit(
        f"{facts.complaints} complaints on {facts.delivered} delivered recipients in {_hours(facts.window_hours)} "
        f"({share}, limit {facts.threshold:.2%} with at least {facts.min_complaints})",
        evidence=f"complaints={facts.complaints} delivered={facts.delivered}",
    )


@rule(
    RATE_LIMITED,
    "The account is over its message rate (rate_limit_per_minute): 451 so the client retries later.",
    clauses=("platform",),
    stage=Stage.SESSION,
)
def rate_limited(facts: MessageFacts) -> Hit | None:
    # The shell takes a token from the store's shared bucket and reports an empty bucket here.
    if not facts.shell.rate_limited:
        return None
    per_minute = facts.shell.rate_limit_per_minute
    rate = f" of {per_minute} messages per minute" if per_minute else ""
    return Hit(f"Account {facts.account.id} is over its rate{rate}; try again later")


RULES = (complaint_unanswered, complaint_rate, rate_limited)
