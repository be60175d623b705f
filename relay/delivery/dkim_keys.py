"""Load the configured DKIM keys; an unreadable or unparseable key is a config error naming its key."""

from __future__ import annotations

from typing import Any

from relay.config import Config
from relay.errors import ConfigError


def load_configured_keys(config: Config) -> list[Any]:
    from relay.delivery.dkim import DkimKeyError, load_dkim_key

    keys = []
    for i, entry in enumerate(config.dkim_keys):
        try:
            keys.append(load_dkim_key(entry.domain, entry.selector, entry.private_key))
        except (DkimKeyError, OSError, ValueError) as exc:
            raise ConfigError(f"dkim.keys[{i}].private_key", str(exc)) from exc
    return keys
