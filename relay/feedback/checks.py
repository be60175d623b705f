"""What `check-config` can tell offline about the feedback loop (docs/feedback-loop.md): the
addresses mailbox providers will write to, and what is missing for them to work."""

from __future__ import annotations

from relay.config import MARKETING, Config


def feedback_notes(config: Config) -> list[str]:
    """One line each; empty when nothing is missing."""
    notes: list[str] = []
    domain = config.unsubscribe.mailto_domain.lower()
    marketing = [a.id for a in config.accounts if any(s.kind == MARKETING for s in a.streams)]
    if domain in ("localhost", "") or "." not in domain:
        notes.append(
            f"unsubscribe.mailto_domain is {domain or 'empty'!r}: unsubscribe+…@, fbl@ and bounce+…@ need a real "
            "domain with an MX record pointing at this relay"
        )
    if marketing and not config.complaints.sources:
        notes.append(
            "complaints.sources is empty: every feedback report is unverified (it suppresses, but never counts "
            "toward account.complaint_rate); list the feedback loops you signed up for"
        )
    if marketing and config.bounces.verp and not any(k.domain == domain for k in config.dkim_keys):
        notes.append(
            f"no [[dkim.keys]] for {domain}: bounce and complaint notices from the relay go out unsigned"
        )
    for account in config.accounts:
        if account.id in marketing and not account.abuse_contact:
            notes.append(f"accounts {account.id!r} has no abuse_contact: its complaints cannot be forwarded")
    return notes
