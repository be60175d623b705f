"""`[policy.wordlists]` (issue 4 §3): site terms inline or from a file reach the rules; an unknown list
name or an unreadable file is one line naming the key, exit 2 in check-config."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import asend, config_dict, make_config, message, write_config

from policies.engine import Engine
from policies.facts import MessageFacts
from policies.message import parse_message
from policies.registry import ALL_RULES
from relay.config import load_config
from relay.errors import ConfigError
from relay.services import build_profile

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)


def hits(config_path: Path, subject: str, body: str = "Thank you for your order 1234.") -> dict[str, str]:
    """rule id -> evidence of a message judged by the profile the config builds (as the relay does)."""
    config = load_config(config_path)
    account = config.accounts[0]
    raw = message(subject=subject, body=body)
    facts = MessageFacts(
        account=account.facts(), mail_from="orders@shop.example", now=NOW,
        params=build_profile(config).params, stream=account.stream("orders").facts,  # type: ignore[union-attr]
        message=parse_message(raw),
    )
    verdict = Engine(ALL_RULES, build_profile(config)).message(facts, [])
    return {f.rule: f.evidence for f in verdict.findings}


def test_terms_from_a_file_and_inline_reach_the_rules(tmp_path: Path) -> None:
    # policy: clang E-aanstootgevende-onderwerpsregel — the site extends the offensive list
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "offensive-extra.txt").write_text(
        "# our own additions\nprutswerk\nHaring Kaak   # inline comment\n\n", encoding="utf-8"
    )
    path = write_config(
        tmp_path,
        config_dict(
            tmp_path, 2525,
            policy={"wordlists": {
                "offensive": {"file": "lists/offensive-extra.txt", "terms": ["knoeiboël"]},
                "hateful": ["bakkersgespuis"],
            }},
        ),
    )
    config = load_config(path)
    assert config.policy.wordlists["offensive"] == ("knoeiboël", "prutswerk", "Haring Kaak")
    assert hits(path, "Your order 1234 is shipped") == {}
    assert hits(path, "Geen PRUTSWERK meer: order 1234") == {"content.offensive_subject": "prutswerk"}
    assert hits(path, "Haring-kaak deals for order 1234") == {"content.offensive_subject": "Haring Kaak"}
    assert hits(path, "Knoeiboel? Order 1234") == {"content.offensive_subject": "knoeiboël"}  # accent-insensitive
    # policy: mailpro M-code-of-conduct — an inline term for the body's hateful list
    assert hits(path, "Order 1234", body="Thank you, bakkersgespuis.") == {"content.hateful": "bakkersgespuis"}


def test_without_the_config_the_term_passes(tmp_path: Path) -> None:
    path = write_config(tmp_path, config_dict(tmp_path, 2525))
    assert hits(path, "Geen PRUTSWERK meer: order 1234") == {}


async def test_the_running_relay_holds_mail_with_a_configured_term(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: clang E-aanstootgevende-onderwerpsregel (strict quarantines it) — end to end over SMTP
    (tmp_path / "extra.txt").write_text("prutswerk\n", encoding="utf-8")
    config = make_config(tmp_path, upstream.port, policy={"wordlists": {"offensive": {"file": "extra.txt"}}})
    relay = await start_relay(config)
    out = await asend(relay.smtp_port, message(subject="Geen prutswerk: order 1234"))
    assert out.code == 250 and out.text.startswith("2.6.0 Held for review as Q"), out
    assert "[content.offensive_subject]" in out.text
    out = await asend(relay.smtp_port, message(subject="Your order 1234"))
    assert out.code == 250 and "Delivered" in out.text, out
    assert len(upstream.messages) == 1


@pytest.mark.parametrize(
    ("wordlists", "key", "says"),
    [
        ({"offensiv": ["x"]}, "policy.wordlists.offensiv", "unknown word list"),
        ({"offensive": "prutswerk"}, "policy.wordlists.offensive", "list of strings"),
        ({"offensive": [1]}, "policy.wordlists.offensive[0]", "string"),
        ({"offensive": {"file": "missing.txt"}}, "policy.wordlists.offensive.file", "cannot read"),
        ({"offensive": {"files": ["a.txt"]}}, "policy.wordlists.offensive.files", "unknown key"),
    ],
)
def test_bad_wordlists_name_the_key(tmp_path: Path, wordlists: dict[str, Any], key: str, says: str) -> None:
    path = write_config(tmp_path, config_dict(tmp_path, 2525, policy={"wordlists": wordlists}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key and says in caught.value.problem


def test_check_config_refuses_an_unknown_list_in_one_line_exit_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, config_dict(tmp_path, 2525, policy={"wordlists": {"swearing": ["x"]}}))
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli.main", "check-config", "-c", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert "policy.wordlists.swearing" in line and "unknown word list" in line and "offensive" in line
