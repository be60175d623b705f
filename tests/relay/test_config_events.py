"""`[events]` and `[[accounts.webhooks]]` (docs/SPEC.md §17): a bad value is a ConfigError naming its key."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from relay.config import build_config
from relay.errors import ConfigError
from relay.event_types import DEFAULT_WEBHOOK_EVENTS
from tests.conftest import config_dict

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()


def load(tmp_path: Path, hooks: list[dict[str, Any]], **events: Any) -> Any:
    data = config_dict(tmp_path, 2525, account={"webhooks": hooks})
    if events:
        data["events"] = events
    return build_config(data, tmp_path / "relay.toml")


def test_a_webhook_gets_every_type_but_delivered_unless_it_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_HOOK", SECRET)
    config = load(tmp_path, [
        {"url": "https://app.example/a", "secret": "env:SHOP_HOOK"},
        {"url": "https://app.example/b", "secret": SECRET, "events": ["delivered", "complained"]},
    ], retention_days=7)
    first, second = config.accounts[0].webhooks
    assert first.secret == SECRET and first.events == DEFAULT_WEBHOOK_EVENTS and "delivered" not in first.events
    assert second.events == ("delivered", "complained") and first.endpoint != second.endpoint
    assert config.events.retention_days == 7


@pytest.mark.parametrize(
    ("hook", "key"),
    [
        ({"url": "https://app.example/a", "secret": "plain"}, "accounts[0].webhooks[0].secret"),
        ({"url": "https://app.example/a", "secret": "whsec_c2hvcnQ="}, "accounts[0].webhooks[0].secret"),
        ({"url": "https://app.example/a", "secret": "env:NOT_SET_ANYWHERE"}, "accounts[0].webhooks[0].secret"),
        ({"url": "ftp://app.example/a", "secret": SECRET}, "accounts[0].webhooks[0].url"),
        ({"secret": SECRET}, "accounts[0].webhooks[0].url"),
        ({"url": "https://app.example/a", "secret": SECRET, "events": ["opened"]}, "accounts[0].webhooks[0].events"),
        ({"url": "https://app.example/a", "secret": SECRET, "retries": 3}, "accounts[0].webhooks[0].retries"),
    ],
)
def test_a_bad_webhook_names_its_key(tmp_path: Path, hook: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, [hook])
    assert caught.value.key == key


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, [], retention_days=0)
    assert caught.value.key == "events.retention_days"
