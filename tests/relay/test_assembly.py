"""relay.assembly.build_relay: the one place the parts of a relay process are made and handed to
each other (docs/STYLE.md: a constructor that takes its parts, one build_relay, a Feature protocol)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_config

from relay.assembly import build_relay, opened_relay
from relay.engine.feature import Feature


def names(features: tuple[Feature, ...]) -> list[str]:
    return [f.name for f in features]


def test_features_follow_the_config(tmp_path: Path) -> None:
    parts = build_relay(make_config(tmp_path, 2525, malware={"clamd": "tcp:127.0.0.1:3310"}))
    assert names(parts.features) == [
        "unsubscribe", "bounce", "signups", "fbl", "quarantine", "events", "webhooks", "malware"
    ]
    assert parts.pipeline.features == parts.features  # the addresses and facts the pipeline asks of
    transactional = {"streams": [{"id": "orders", "kind": "transactional"}]}
    bare = build_relay(make_config(tmp_path, 2525, unsubscribe={"secrets": []}, account=transactional))
    # Without unsubscribe secrets there are no tokens: no list-unsubscribe, VERP or double opt-in.
    assert names(bare.features) == ["fbl", "quarantine", "events", "webhooks"]


def test_own_addresses_are_the_features(tmp_path: Path) -> None:
    parts = build_relay(make_config(tmp_path, 2525))
    domain = parts.config.unsubscribe.mailto_domain.lower()
    assert parts.pipeline.own_address(f"fbl@{domain}") == "fbl"
    assert parts.pipeline.own_address(f"unsubscribe+forged@{domain}") is None  # a token must verify
    assert parts.pipeline.own_address("anna@example.nl") is None


def test_one_set_of_parts_shared_by_all(tmp_path: Path) -> None:
    parts = build_relay(make_config(tmp_path, 2525))
    outgoing = parts.services.outgoing
    assert outgoing is not None
    # Notices, copies and the outbox leave through the same upstream connection and signer.
    assert outgoing.upstream is parts.upstream is parts.pipeline.upstream is parts.outbox.upstream
    assert outgoing.recorder is parts.recorder is parts.pipeline.recorder
    assert outgoing.signer is parts.signer
    assert parts.pipeline.services is parts.services


async def test_a_cli_command_gets_the_same_wiring_with_its_store_open(tmp_path: Path) -> None:
    async with opened_relay(make_config(tmp_path, 2525)) as parts:
        assert await parts.services.store.quarantine.count() == 0
        assert names(parts.features)[:3] == ["unsubscribe", "bounce", "signups"]
