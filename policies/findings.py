"""What a rule reports (a Hit), what the engine records (a Finding) and what it decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from policies.frozen import quick_init


class Action(str, Enum):
    """What happens when a rule hits; profiles map rule ids to these."""

    REJECT = "reject"
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"
    MONITOR = "monitor"
    OFF = "off"
    # Account rules change the account's state instead of deciding one message.
    SUSPEND = "suspend"
    PAUSE = "pause"


class Stage(str, Enum):
    """When a rule can be evaluated in an SMTP transaction."""

    CLIENT = "client"  # at RCPT, before any account applies: may this client relay at all
    SESSION = "session"  # at MAIL FROM: account state
    RECIPIENT = "recipient"  # per recipient: consent, suppression
    MESSAGE = "message"  # at end of DATA: identity, content, opt-out
    ACCOUNT = "account"  # outside a transaction: complaint enforcement


class Outcome(str, Enum):
    DELIVER = "deliver"
    REJECT = "reject"
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"


@quick_init
@dataclass(frozen=True)
class Hit:
    """A rule's report: why it matched and the evidence (already masked if sensitive)."""

    detail: str
    evidence: str = ""
    # For recipient rules: the consent record the rule looked at, if any.
    consent_id: str | None = None


@quick_init
@dataclass(frozen=True)
class Finding:
    """A hit tied to its rule, the action the profile gave it, and the recipient if per-recipient."""

    rule: str
    action: Action
    detail: str
    evidence: str = ""
    recipient: str | None = None
    # The consent record the rule looked at (Hit.consent_id), for recipient rules that read one.
    # Not in as_dict: the evidence names it already, and the stored findings keep their shape.
    consent_id: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "rule": self.rule,
            "action": self.action.value,
            "detail": self.detail,
            "evidence": self.evidence,
            "recipient": self.recipient,
        }


@quick_init
@dataclass(frozen=True)
class ReliedConsent:
    """The consent a permitted recipient's copy relies on: the id the proof of consent names, and
    the scope and topic its unsubscribe withdraws."""

    id: str | None
    scope: str
    topic: str


@quick_init
@dataclass(frozen=True)
class Verdict:
    """The engine's decision for one stage, with every hit and every miss kept for the audit trail."""

    outcome: Outcome
    findings: tuple[Finding, ...] = ()
    misses: tuple[str, ...] = ()
    # recipient -> the finding that refused it (per-recipient rejects only)
    refused: dict[str, Finding] = field(default_factory=dict)
    # the finding that decided a message-level outcome (reject/quarantine/tempfail)
    deciding: Finding | None = None
    # recipient -> the consent the engine relied on to permit it (end of DATA, marketing streams):
    # every recipient not refused that a consent covers; none for a refused one, none on a
    # transactional stream, none where no consent covers (a consent rule off or in monitor mode).
    relied_on: dict[str, ReliedConsent] = field(default_factory=dict)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.rule for f in self.findings))
