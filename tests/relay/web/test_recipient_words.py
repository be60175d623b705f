"""The pieces of the recipient's pages that need no server: the config keys they read, the words for
a scope and topic, the masked address, language negotiation and the accent colour's contrast."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import base_account, config_dict, make_config, write_config

from policies.facts import ConsentRecord, Suppression
from relay.config import build_config, load_config
from relay.errors import ConfigError
from relay.unsubscribe.subscriptions import Describer, mask_address
from relay.web.contrast import DEFAULT_ACCENT, WHITE, accessible_accent, contrast_ratio
from relay.web.recipient_texts import TEXTS, negotiate

STREAMS = [
    {"id": "orders", "kind": "transactional"},
    {"id": "newsletter", "kind": "marketing", "topic": "weekly", "title": "the weekly newsletter"},
    {"id": "offers", "kind": "marketing"},
]


def holding_config(tmp_path: Path) -> object:
    data = config_dict(tmp_path, 2525, account={"parent": "holding", "parent_name": "Holding B.V.", "streams": STREAMS})
    data["accounts"].append(
        base_account() | {"id": "shop2", "name": "Shop Twee", "domains": ["shop2.example"], "parent": "holding",
                          "trusted_networks": [], "streams": [{"id": "deals", "kind": "marketing", "title": "deals"}],
                          "default_stream": "deals"}
    )
    return load_config(write_config(tmp_path, data))


def test_stream_title_falls_back_to_the_id_and_account_look_is_validated(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, 2525, account={"streams": STREAMS, "logo_url": "https://shop.example/logo.svg", "accent_color": "#FC0"}
    )
    account = config.accounts[0]
    assert [s.display_title for s in account.streams] == ["orders", "the weekly newsletter", "offers"]
    assert account.logo_url == "https://shop.example/logo.svg" and account.accent_color == "#ffcc00"
    assert make_config(tmp_path, 2525).accounts[0].accent_color is None


@pytest.mark.parametrize(
    ("account", "key"),
    [
        ({"accent_color": "red"}, "accounts[0].accent_color"),
        ({"accent_color": "#12345"}, "accounts[0].accent_color"),
        ({"logo_url": "javascript:alert(1)"}, "accounts[0].logo_url"),
        ({"logo_url": 'https://x.example/a" onerror="x'}, "accounts[0].logo_url"),
        ({"parent_name": "Holding B.V."}, "accounts[0].parent_name"),
        ({"streams": [{"id": "n", "kind": "marketing", "title": 3}]}, "accounts[0].streams[0].title"),
    ],
)
def test_bad_page_keys_name_their_key(tmp_path: Path, account: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(config_dict(tmp_path, 2525, account=account), tmp_path / "relay.toml")
    assert caught.value.key == key


def test_brands_of_one_parent_agree_on_its_name(tmp_path: Path) -> None:
    data = config_dict(tmp_path, 2525, account={"parent": "holding", "parent_name": "Holding B.V."})
    data["accounts"].append(
        base_account() | {"id": "shop2", "domains": ["shop2.example"], "parent": "holding", "parent_name": "Other"}
    )
    with pytest.raises(ConfigError) as caught:
        build_config(data, tmp_path / "relay.toml")
    assert caught.value.key == "accounts[1].parent_name" and "Holding B.V." in str(caught.value)


def test_masked_address_keeps_the_first_letter_and_the_domain_only() -> None:
    assert mask_address("jan@example.net") == "j**@example.net"
    assert mask_address("j@example.net") == "j**@example.net"  # the stars never tell the length
    assert mask_address("jan.de.vries+news@mail.example.org") == "j**@mail.example.org"


@pytest.mark.parametrize(
    ("header", "chosen", "lang"),
    [
        ("nl-NL,nl;q=0.9,en;q=0.5", None, "nl"),
        ("de-DE,fr;q=0.8,nl;q=0.3", None, "de"),
        ("es,fr;q=0.4,de;q=0.6", None, "de"),
        ("fr-BE", None, "fr"),
        ("da, sv;q=0.5", None, "en"),
        ("", None, "en"),
        ("en;q=0.9,nl;q=bogus", None, "en"),
        ("nl", "fr", "fr"),  # the visible switch wins over the browser
        ("nl", "xx", "nl"),  # an unknown choice is ignored
    ],
)
def test_language_from_accept_language_or_the_switch(header: str, chosen: str | None, lang: str) -> None:
    assert negotiate(header, chosen) == lang


def test_every_language_has_every_sentence() -> None:
    keys = set(TEXTS["en"])
    assert {"nl", "en", "de", "fr"} <= set(TEXTS)
    for lang, texts in TEXTS.items():
        assert set(texts) == keys, lang


@pytest.mark.parametrize("colour", ["#ffcc00", "#ffffff", "#00ff00", "#ff6600", "#777777", "#1a56db", "#000000", "#0000ff"])
def test_any_accent_becomes_readable_on_white_and_as_button_background(colour: str) -> None:
    accent = accessible_accent(colour)
    assert contrast_ratio(accent, WHITE) >= 4.5
    if contrast_ratio(colour, WHITE) >= 4.5:
        assert accent == colour  # a readable colour is used as the sender chose it


def test_contrast_ratio_matches_wcag_reference_values() -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio("#ffcc00", "#ffffff") < 1.7
    assert accessible_accent(None) == DEFAULT_ACCENT


def test_scope_and_topic_in_words(tmp_path: Path) -> None:
    describe = Describer(holding_config(tmp_path))  # type: ignore[arg-type]
    shop = describe.sender("shop", "weekly")
    assert shop.name == "Shop" and shop.legal_line == "Shop B.V., Keizersgracht 1, 1015 AA Amsterdam"
    parent = describe.reach("holding", "weekly")
    assert parent.scope.at_parent and parent.scope.name == "Holding B.V." and parent.scope.brands == ("Shop", "Shop Twee")
    assert parent.title == "the weekly newsletter" and describe.reach("shop", "offers").title == "offers"
    # A parent's topic sent by one brand only names that brand; '*' at the parent names the parent.
    assert describe.sender("holding", "deals").name == "Shop Twee"
    assert describe.sender("holding", "*").name == "Holding B.V." and describe.sender("holding", "*").account is None


def test_preferences_list_every_topic_held_at_the_signup_levels(tmp_path: Path) -> None:
    describe = Describer(holding_config(tmp_path))  # type: ignore[arg-type]
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    consents = [
        ConsentRecord("anna@example.nl", "shop", "weekly"),
        ConsentRecord("anna@example.nl", "holding", "*"),
        ConsentRecord("anna@example.nl", "shop", "offers", revoked_at=now, revoked_via="admin"),
    ]
    suppressions = [Suppression("anna@example.nl", "holding", "deals", "suppression.unsubscribed", "page", now)]
    sender = describe.sender("shop", "weekly")
    assert describe.scopes_in_view("shop", sender) == ["shop", "holding"]
    entries = describe.entries("shop", "weekly", sender, consents, suppressions)
    state = {(e.reach.scope.id, e.reach.topic): e.stopped for e in entries}
    # The parent's '*' consent covers every brand's marketing topic, one line each.
    assert state == {
        ("shop", "weekly"): False,
        ("shop", "offers"): True,  # withdrawn at the shop; the parent's line below still says what flows
        ("holding", "weekly"): False,
        ("holding", "offers"): False,
        ("holding", "deals"): True,
    }
    assert len({e.reach.key for e in entries}) == len(entries)
