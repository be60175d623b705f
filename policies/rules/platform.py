"""Platform rules: who may relay at all, and which streams exist (POLICY.md, platform rules)."""

from __future__ import annotations

from policies.facts import ClientFacts, MessageFacts
from policies.findings import Action, Hit, Stage
from policies.rule import rule


@rule(
    "relay.denied",
    "The client is neither authenticated nor inside an account's trusted networks.",
    clauses=("platform",),
    stage=Stage.CLIENT,
    fixed_action=Action.REJECT,  # POLICY.md: nothing can override it (never an open relay)
)
def relay_denied(facts: ClientFacts) -> Hit | None:
    if facts.account is not None:
        return None
    return Hit("Relaying denied: authenticate or connect from a trusted network")


@rule(
    "stream.unknown",
    "The X-Relay-Stream header names a stream the account does not have.",
    clauses=("platform",),
    stage=Stage.MESSAGE,
)
def stream_unknown(facts: MessageFacts) -> Hit | None:
    if facts.stream is not None:
        return None
    name = facts.stream_requested or ""
    return Hit(f"Unknown stream {name!r} for account {facts.account.id}", evidence=name)


RULES = (relay_denied, stream_unknown)
