"""Every rule the relay knows, in evaluation order."""

from __future__ import annotations

from policies.rule import Rule
from policies.rules import account, complaints, consent, content, identity, optout, platform

ALL_RULES: tuple[Rule, ...] = (
    *platform.RULES,
    *account.RULES,
    *complaints.RULES,  # the engine runs rate_limited at MAIL FROM; the others are the complaint service's
    *identity.RULES,
    *consent.RULES,
    *optout.RULES,
    *content.RULES,
)

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in ALL_RULES}
