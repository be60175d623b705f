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
ENFORCED_IN_MONITOR_MODE = frozenset({"account.suspended", "stream.unknown"})


class UnknownProfile(ValueError):
    pass


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
        actions.update({rule_id: Action(value) for rule_id, value in overrides.items()})
        merged = dict(self.params)
        merged.update(params or {})
        return replace(self, actions=actions, params=merged, monitor=(mode == "monitor"))


def load_profile(name: str) -> Profile:
    if name not in PROFILE_NAMES:
        raise UnknownProfile(name)
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text("utf-8")
    data = tomllib.loads(text)
    actions = {rule_id: Action(value) for rule_id, value in data["actions"].items()}
    return Profile(name=name, actions=actions, params=dict(data.get("params", {})))
