"""The shared parts one process wires together: config, store, engine, metrics, clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from policies.engine import Engine
from policies.profiles import Profile, load_profile
from policies.registry import ALL_RULES
from relay.config import Config
from relay.metrics import Metrics
from relay.outgoing import Outgoing
from relay.store import open_store_for
from relay.store.base import Store


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Clock:
    """Wall time for records and deadlines; tests inject a fixed or advancing one."""

    now: Callable[[], datetime] = _utcnow
    monotonic: Callable[[], float] = time.monotonic

    def timestamp(self) -> float:
        return self.now().timestamp()


def build_profile(config: Config) -> Profile:
    params: dict[str, Any] = {
        "placeholder": config.unsubscribe.placeholder,
        "wordlists": dict(config.policy.wordlists),
    }
    return load_profile(config.policy.profile).with_site_config(config.policy.actions, config.policy.mode, params)


@dataclass
class Services:
    config: Config
    store: Store
    metrics: Metrics
    engine: Engine
    clock: Clock = field(default_factory=Clock)
    # A relay process's way out for its own notices (relay.assembly.build_relay); None in a CLI command.
    outgoing: Outgoing | None = None

    @classmethod
    def build(cls, config: Config, *, metrics: Metrics | None = None, clock: Clock | None = None) -> Services:
        return cls(
            config=config,
            store=open_store_for(config.store),
            metrics=metrics or Metrics(),
            engine=Engine(ALL_RULES, build_profile(config)),
            clock=clock or Clock(),
        )
