"""Account rules: suspended and paused accounts (POLICY.md, account rules)."""

from __future__ import annotations

from policies.facts import MessageFacts
from policies.findings import Hit, Stage
from policies.rule import rule


@rule(
    "account.suspended",
    "The account is suspended: every MAIL FROM gets 554 5.7.1.",
    clauses=("M-violation", "E-toegang-ontzeggen"),
    stage=Stage.SESSION,
)
def suspended(facts: MessageFacts) -> Hit | None:
    if facts.account.state != "suspended":
        return None
    reason = facts.account.state_reason or "contact the relay operator"
    return Hit(f"Account {facts.account.id} is suspended: {reason}")


@rule(
    "account.paused",
    "The account or the stream is paused pending review: 451 so the client keeps its mail.",
    clauses=("E-campagne-gepauzeerd",),
    stage=Stage.SESSION,
)
def paused(facts: MessageFacts) -> Hit | None:
    account = facts.account
    if account.state == "paused":
        return Hit(f"Account {account.id} is paused: {account.state_reason or 'pending review'}")
    if facts.stream is not None and facts.stream.id in account.paused_streams:
        return Hit(f"Stream {facts.stream.id} of account {account.id} is paused")
    return None


RULES = (suspended, paused)
