"""One SMTP transaction as the relay knows it between MAIL FROM and the final reply."""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.facts import MessageFacts, RecipientFacts
from policies.findings import Finding
from relay.config import AccountConfig, StreamConfig


@dataclass
class Transaction:
    relay_id: str
    client_ip: str
    mail_from: str
    account: AccountConfig | None = None
    stream: StreamConfig | None = None  # known before DATA when envelope_from selects it
    facts: MessageFacts | None = None
    recipients: list[str] = field(default_factory=list)
    own_recipients: list[tuple[str, str]] = field(default_factory=list)  # (address, name of its relay.engine.feature.Feature)
    rcpt_refusals: list[Finding] = field(default_factory=list)
    delivery_ids: dict[str, int] = field(default_factory=dict)  # recipient -> id used in its copy
    # Consent and suppressions read at RCPT (marketing known before DATA), reused at end of DATA.
    rcpt_facts: dict[str, RecipientFacts] = field(default_factory=dict)
    # The account's session rules run at the first recipient that is not one of the relay's own
    # addresses (as Postfix's smtpd_delay_reject): mail to those is taken whatever the sender.
    session_checked: bool = False
    session_refusal: Finding | None = None

    @property
    def null_sender(self) -> bool:
        """MAIL FROM:<> from an account: a bounce its own MTA generated (docs/SPEC.md §15)."""
        return self.account is not None and not self.mail_from
