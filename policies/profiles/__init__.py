"""Shipped profiles (strict, mailpro, clang) as data: rule id -> action, plus the numbers."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Mapping

from policies.findings import Action

PROFILE_NAMES = ("strict", "mailpro", "clang")
# `mode = "monitor"` rolls out the policy safely; it does not undo an admin's suspension, and a
# message naming a stream the account does not have cannot be delivered on any stream.
# Relay permission is never rolled out: the relay is never an open relay.
ENFORCED_IN_MONITOR_MODE = frozenset({"account.suspended", "stream.unknown", "relay.denied"})


class UnknownProfile(ValueError):
    pass


class ProfileError(ValueError):
    """A profile (or the site config's overrides) gives a rule an action the policy does not allow."""


def fixed_action_errors(actions: Mapping[str, Action | str], *, only_given: bool = False) -> list[str]:
    """One message per rule whose action is fixed by POLICY.md ("nothing can override it") and set otherwise
    (missing counts as off, unless only_given: an override table names only what it changes)."""
    from policies.registry import ALL_RULES

    errors = []
    for r in ALL_RULES:
        if r.fixed_action is None or (only_given and r.id not in actions):
            continue
        given = actions.get(r.id)
        value = Action(given) if given is not None else Action.OFF
        if value is not r.fixed_action:
            errors.append(
                f"{r.id} must be {r.fixed_action.value!r}, not {value.value!r}: "
                "nothing may grant relay permission (docs/POLICY.md, platform rules)"
            )
    return errors


@dataclass(frozen=True)
class Profile:
    name: str
    actions: Mapping[str, Action]
    params: Mapping[str, Any] = field(default_factory=dict)
    monitor: bool = False

    def action(self, rule_id: str) -> Action:
        action = self.actions.get(rule_id, Action.OFF)
        if self.monitor and action in (Action.REJECT, Action.QUARANTINE) and rule_id not in ENFORCED_IN_MONITOR_MODE:
            return Action.MONITOR
        return action

    def with_site_config(
        self,
        overrides: Mapping[str, str],
        mode: str = "enforce",
        params: Mapping[str, Any] | None = None,
    ) -> Profile:
        actions = dict(self.actions)
        changed = {rule_id: Action(value) for rule_id, value in overrides.items()}
        actions.update(changed)
        errors = fixed_action_errors(changed, only_given=True)
        if errors:
            raise ProfileError("; ".join(errors))
        merged = dict(self.params)
        merged.update(params or {})
        return replace(self, actions=actions, params=merged, monitor=(mode == "monitor"))


def load_profile(name: str) -> Profile:
    if name not in PROFILE_NAMES:
        raise UnknownProfile(name)
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text("utf-8")
    data = tomllib.loads(text)
    actions = {rule_id: Action(value) for rule_id, value in data["actions"].items()}
    errors = fixed_action_errors(actions)
    if errors:
        raise ProfileError(f"profile {name}: " + "; ".join(errors))
    return Profile(name=name, actions=actions, params=dict(data.get("params", {})))
