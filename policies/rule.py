"""A rule: a stable id, a one-line description, the clauses it enforces and a pure check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from policies.findings import Action, Hit, Stage


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    clauses: tuple[str, ...]
    stage: Stage
    # CLIENT rules: check(ClientFacts); SESSION/MESSAGE rules: check(MessageFacts);
    # RECIPIENT rules: check(MessageFacts, RecipientFacts)
    check: Callable[..., Hit | None]
    # RECIPIENT rules that can already be decided at RCPT once the stream kind is known
    before_data: bool = False
    # applies to marketing streams only (consent, opt-out)
    marketing_only: bool = False
    # skipped for a delivery status notification (null sender) from an account's own MTA (docs/SPEC.md §15):
    # a bounce is not the account's own mail, so its identity rules do not apply
    skip_for_null_sender: bool = False
    # decided from the consent record alone (consent.record_findings): the importer checks it per row
    from_record: bool = False
    # the only action a profile or the site config may give the rule (POLICY.md: "nothing can override it")
    fixed_action: Action | None = None


def rule(
    rule_id: str,
    description: str,
    *,
    clauses: tuple[str, ...],
    stage: Stage,
    before_data: bool = False,
    marketing_only: bool = False,
    skip_for_null_sender: bool = False,
    fixed_action: Action | None = None,
    from_record: bool = False,
) -> Callable[[Callable[..., Hit | None]], Rule]:
    """Decorator turning a check function into a Rule."""

    def wrap(check: Callable[..., Hit | None]) -> Rule:
        return Rule(
            rule_id, description, clauses, stage, check,
            before_data=before_data, marketing_only=marketing_only, skip_for_null_sender=skip_for_null_sender,
            from_record=from_record, fixed_action=fixed_action,
        )

    return wrap
