"""Immutable snapshots the shell hands to the rules: account, stream, envelope, message, consent."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from policies.frozen import quick_init

if TYPE_CHECKING:
    from policies.message import ParsedMessage

_T = TypeVar("_T")

MARKETING = "marketing"
TRANSACTIONAL = "transactional"


@quick_init
@dataclass(frozen=True)
class StreamFacts:
    id: str
    kind: str  # marketing | transactional
    topic: str

    @property
    def is_marketing(self) -> bool:
        return self.kind == MARKETING


@quick_init
@dataclass(frozen=True)
class ClientFacts:
    """The SMTP client as the relay knows it before any account applies (relay permission)."""

    ip: str
    # the account the client authenticated as, or whose trusted_networks hold its address; None: neither
    account: str | None = None


@quick_init
@dataclass(frozen=True)
class AccountFacts:
    id: str
    name: str = ""
    domains: frozenset[str] = frozenset()
    legal_name: str = ""
    postal_address: str = ""
    registration_number: str = ""
    parent: str | None = None
    allow_adult: bool = False
    state: str = "active"  # active | paused | suspended
    state_reason: str = ""
    paused_streams: frozenset[str] = frozenset()
    # The sender's own IBANs (donations, payments): never a third party's personal data.
    own_ibans: frozenset[str] = frozenset()
    # Click-tracking hosts of the account's e-mail platform: their links are not deceptive.
    tracking_hosts: frozenset[str] = frozenset()

    @property
    def scopes(self) -> tuple[str, ...]:
        """Consent scopes that cover this account: its own id, then its parent organisation."""
        return (self.id, self.parent) if self.parent else (self.id,)


@quick_init
@dataclass(frozen=True)
class ConsentRecord:
    """One consent, keyed by (scope, email, topic), with the provenance of docs/SPEC.md §5."""

    email: str
    scope: str
    topic: str = "*"
    basis: str = "opt_in"
    source: str = "signup_form"
    collected_at: datetime | None = None
    source_url: str = ""
    source_ip: str = ""
    confirmed_at: datetime | None = None
    statement_text: str = ""
    co_registration_partners: str = ""
    prechecked: bool = False
    frequency_disclosed: bool = False
    customer_relationship: str = ""
    last_purchase_at: datetime | None = None
    informed_at_collection: bool = False
    objection_offered: bool = False
    email_contact_announced: bool = False
    last_interaction_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_via: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    id: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.scope, self.email, self.topic)


@quick_init
@dataclass(frozen=True)
class Suppression:
    email: str
    scope: str
    topic: str  # '*' = everything marketing from the scope
    reason: str  # rule id: suppression.unsubscribed | suppression.complaint
    via: str = ""  # one_click | page | mailto | admin | complaint
    created_at: datetime | None = None


@quick_init
@dataclass(frozen=True)
class RecipientFacts:
    """Everything known about one recipient: the consents and suppressions that could apply."""

    address: str
    consents: tuple[ConsentRecord, ...] = ()
    suppressions: tuple[Suppression, ...] = ()

    def derived(self, facts: MessageFacts, compute: Callable[[MessageFacts, RecipientFacts], _T]) -> _T:
        """`compute(facts, self)`, computed once per evaluation: the first rule that asks computes it,
        the other rules and the engine reuse it (the consent the consent rules pick, issue 20).

        Kept per `compute` for one MessageFacts object, held weakly: the shell reuses a recipient's
        facts from RCPT (stream topic maybe '*') at end of DATA with other MessageFacts, which never
        see the RCPT value; the memo keeps no message alive, and is neither compared nor pickled.
        """
        memo: dict[object, tuple[weakref.ref[MessageFacts], Any]] | None = self.__dict__.get("_derived")
        if memo is None:
            memo = {}
            object.__setattr__(self, "_derived", memo)
        kept = memo.get(compute)
        if kept is not None and kept[0]() is facts:
            return kept[1]  # type: ignore[no-any-return]
        value = compute(facts, self)
        memo[compute] = (weakref.ref(facts), value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        # The memo holds weak references (which cannot be pickled) and is only good in this process.
        return {k: v for k, v in self.__dict__.items() if k != "_derived"}


@quick_init
@dataclass(frozen=True)
class ShellFacts:
    """What the shell found out with I/O for this transaction (no rule does any): the account's rate
    bucket at MAIL FROM, the malware scanner's answer at the end of DATA."""

    rate_limited: bool = False  # the store's shared bucket had no token for this MAIL FROM
    rate_limit_per_minute: int = 0
    clamd_result: str | None = None  # None: not scanned; "": clean; else the signature clamd named


NOTHING_FOUND = ShellFacts()


@quick_init
@dataclass(frozen=True)
class MessageFacts:
    """One transaction as far as it is known: before DATA `message` is None."""

    account: AccountFacts
    mail_from: str
    now: datetime
    params: Mapping[str, Any] = field(default_factory=dict)  # profile numbers and word lists
    stream: StreamFacts | None = None
    stream_requested: str | None = None  # the X-Relay-Stream value, if it named an unknown one
    message: ParsedMessage | None = None
    # MAIL FROM:<> from an account: a delivery status notification its own MTA generated (docs/SPEC.md §15)
    null_sender: bool = False
    shell: ShellFacts = NOTHING_FOUND
