"""`consent-relay explain` as an application's CI runs it: the real CLI in a subprocess against a
relay-ci.toml. Exit 0 clean, 1 when a rule would refuse or hold (naming it), 2 on bad input; --json,
--assume-consent against the consent store, --stream, and the clamd scan when one is configured."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import to_toml

from policies.findings import Action, Stage
from policies.registry import ALL_RULES
from tests.relay.engine.test_clamd import PAYLOAD, clamd_socket, with_attachment  # noqa: F401  (clamd_socket: a fixture)

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "corpus"
CLEAN = sorted(CORPUS.glob("clean-*.eml"))
BAD = sorted(CORPUS.glob("bad-*.eml"))
WEEKLY = CORPUS / "clean-nl-shop-weekly.eml"
OFFENSIVE = CORPUS / "bad-content.offensive_subject-1.eml"
VERDICTS = {"hit", "pass", "off", "not applicable"}


def ci_config(tmp_path: Path, name: str = "relay-ci.toml", **sections: Any) -> Path:
    """A relay-ci.toml: the corpus accounts with a marketing and a transactional stream, a local store."""
    accounts = tomllib.loads((CORPUS / "accounts.toml").read_text("utf-8"))["accounts"]
    for account in accounts:
        account["default_stream"] = "newsletter"
        account["streams"] = [
            {"id": "newsletter", "kind": "marketing", "topic": "newsletter"},
            {"id": "orders", "kind": "transactional"},
        ]
    data: dict[str, Any] = {
        "store": {"url": "sqlite:///ci.db"},
        # marketing streams need a secret to sign List-Unsubscribe with, even when nothing is sent
        "unsubscribe": {"secrets": ["ci-only-unsubscribe-secret-0123456789"]},
        **sections,
        "accounts": accounts,
    }
    path = tmp_path / name
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def cli(config: Path, *argv: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli.main", *argv, "-c", str(config)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    return done.returncode, done.stdout, done.stderr


def explain(config: Path, message: Path, *argv: str) -> tuple[int, str, str]:
    return cli(config, "explain", str(message), *argv)


def account_of(path: Path) -> str:
    head = path.read_bytes().split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("latin-1")
    sender = next(line for line in head.splitlines() if line.lower().startswith("from:"))
    domain = sender.rsplit("@", 1)[1].strip(" >").lower()
    return {"shop.example": "shop", "bakkerijdevries.example": "bakkerij", "trailhead.example": "trailhead"}[domain]


def hits(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("HIT ")]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return ci_config(tmp_path)


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.name)
def test_clean_corpus_mail_exits_0(config: Path, path: Path) -> None:
    # policy: mailpro M-legal-notice, M-opt-out, M-code-of-conduct — a clean template lints clean
    code, out, err = explain(config, path, "--account", account_of(path), "--assume-consent")
    assert code == 0, out + err
    assert hits(out) == [] and out.rstrip().endswith("=> would pass") and err == ""


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_corpus_mail_exits_1_naming_its_rule(config: Path, path: Path) -> None:
    # policy: every identity, opt-out and content rule of POLICY.md, by the rule id in the file name
    expected = path.name.removeprefix("bad-").rsplit("-", 1)[0]
    code, out, err = explain(config, path, "--account", account_of(path), "--assume-consent")
    assert code == 1, out + err
    assert hits(out) == [expected]
    assert out.rstrip().endswith("=> would be refused or held")


def test_bad_input_exits_2_with_one_line(tmp_path: Path, config: Path) -> None:
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("[smtp\nlisten = ", encoding="utf-8")
    unknown_key = ci_config(tmp_path, "unknown-key.toml", policy={"profiel": "strict"})
    cases = [
        (config, [str(tmp_path / "missing.eml"), "--account", "shop"], "missing.eml"),
        (config, [str(WEEKLY), "--account", "nobody"], "nobody"),
        (config, [str(WEEKLY), "--account", "shop", "--to", "not an address"], "not an address"),
        (config, [str(WEEKLY), "--account", "shop", "--from", "@@"], "@@"),
        (garbage, [str(WEEKLY), "--account", "shop"], "invalid TOML"),
        (unknown_key, [str(WEEKLY), "--account", "shop"], "policy.profiel"),
        (config, [str(WEEKLY)], "--account"),
    ]
    for path, argv, named in cases:
        code, out, err = cli(path, "explain", *argv)
        assert code == 2, (argv, out, err)
        assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert named in err, (named, err)


def test_json_has_every_rule_with_verdict_evidence_and_action(config: Path) -> None:
    code, out, err = explain(
        config, OFFENSIVE, "--account", "shop",
        "--to", "anna@example.nl", "bob@example.nl", "--assume-consent", "--json",
    )
    assert code == 1, err
    report = json.loads(out)
    assert report["account"] == "shop" and report["stream"] == "newsletter" and report["profile"] == "strict"
    assert report["recipients"] == ["anna@example.nl", "bob@example.nl"] and report["would_block"] is True
    assert report["clamd"] is None  # none configured: the output says so rather than pretending
    rows = report["rules"]
    for row in rows:
        assert {"rule", "verdict", "evidence", "action", "detail", "recipient", "clauses"} <= set(row), row
        assert row["verdict"] in VERDICTS and row["action"] in {a.value for a in Action}
    expected: list[tuple[str, str | None]] = []
    for rule in ALL_RULES:
        if rule.stage is Stage.RECIPIENT:
            expected += [(rule.id, "anna@example.nl"), (rule.id, "bob@example.nl")]
        elif rule.stage is not Stage.ACCOUNT:
            expected.append((rule.id, None))
    assert [(r["rule"], r["recipient"]) for r in rows] == expected
    (hit,) = [r for r in rows if r["verdict"] == "hit"]
    # policy: clang E-aanstootgevende-onderwerpsregel — the hit carries its evidence and the profile's action
    assert hit["rule"] == "content.offensive_subject" and hit["action"] == "quarantine"
    assert hit["evidence"] and hit["evidence"].lower() in OFFENSIVE.read_text("utf-8").lower() and hit["detail"]


def test_consent_comes_from_the_store_unless_assumed(config: Path) -> None:
    # policy: mailpro M-prior-consent — without --assume-consent, explain asks the store as the relay does
    code, out, _ = explain(config, WEEKLY, "--account", "shop", "--to", "jan@example.net")
    assert code == 1 and hits(out) == ["consent.missing"], out
    assert "<jan@example.net>" in next(line for line in out.splitlines() if line.startswith("HIT "))
    code, out, _ = explain(config, WEEKLY, "--account", "shop", "--to", "jan@example.net", "--assume-consent")
    assert code == 0 and hits(out) == [], out

    collected = datetime.now(timezone.utc) - timedelta(days=10)
    code, out, err = cli(
        config, "consent", "add", "jan@example.net", "--account", "shop", "--basis", "double_opt_in",
        "--source", "signup_form", "--collected-at", collected.isoformat(), "--confirmed-at", (collected + timedelta(minutes=3)).isoformat(),
        "--source-url", "https://shop.example/signup", "--source-ip", "198.51.100.4",
        "--statement-text", "Ja, stuur mij de wekelijkse nieuwsbrief van Shop", "--frequency-disclosed",
    )
    assert code == 0, out + err
    code, out, _ = explain(config, WEEKLY, "--account", "shop", "--to", "jan@example.net")
    assert code == 0 and hits(out) == [], out
    # Another recipient of the same message still has none: only that one is named.
    code, out, _ = explain(config, WEEKLY, "--account", "shop", "--to", "jan@example.net", "piet@example.net", "--json")
    assert code == 1
    refused = [(r["rule"], r["recipient"]) for r in json.loads(out)["rules"] if r["verdict"] == "hit"]
    assert refused == [("consent.missing", "piet@example.net")]


def test_stream_picks_the_rules_that_apply(config: Path) -> None:
    # policy: mailpro M-prior-consent applies to marketing; a transactional stream needs no consent (docs/SPEC.md §4)
    code, out, _ = explain(config, WEEKLY, "--account", "shop", "--to", "jan@example.net", "--stream", "orders", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["stream"] == "orders"
    verdicts = {r["rule"]: r["verdict"] for r in report["rules"]}
    assert verdicts["consent.missing"] == "not applicable" and verdicts["optout.missing"] == "not applicable"
    # policy: platform — a stream the account does not have is refused, as the relay refuses it
    code, out, _ = explain(config, WEEKLY, "--account", "shop", "--stream", "promo", "--assume-consent")
    assert code == 1 and hits(out) == ["stream.unknown"], out
    assert "promo" in out


def test_clamd_scan_runs_when_configured(tmp_path: Path, clamd_socket: str) -> None:  # noqa: F811
    # policy: mailpro M-code-of-conduct ("kwaadaardige inhoud … virussen of spyware"), via the relay's clamd
    config = ci_config(tmp_path, malware={"clamd": clamd_socket})
    infected, harmless = tmp_path / "infected.eml", tmp_path / "harmless.eml"
    infected.write_bytes(with_attachment(PAYLOAD))
    harmless.write_bytes(with_attachment(b"a harmless catalogue\n"))
    argv = ("--account", "shop", "--stream", "orders", "--to", "anna@example.nl")
    code, out, err = explain(config, harmless, *argv)
    assert code == 0 and hits(out) == [], out + err
    assert f"clamd at {clamd_socket}: scanned, clean" in out
    code, out, err = explain(config, infected, *argv, "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert report["clamd"]["scanned"] is True and report["clamd"]["found"].startswith("payload.bin")
    (hit,) = [r for r in report["rules"] if r["verdict"] == "hit"]
    assert hit["rule"] == "content.malware" and hit["evidence"].startswith("payload.bin")


def test_unreachable_clamd_is_said_not_hidden(tmp_path: Path) -> None:
    harmless = tmp_path / "harmless.eml"
    harmless.write_bytes(with_attachment(b"a harmless catalogue\n"))
    argv = ("--account", "shop", "--stream", "orders", "--to", "anna@example.nl")
    down = ci_config(tmp_path, malware={"clamd": f"unix:{tmp_path}/no-clamd.sock"})
    code, out, _ = explain(down, harmless, *argv)
    assert code == 1, out  # the relay would answer 451: not a clean bill of health
    assert "NOT scanned" in out and "451" in out and hits(out) == []
    passing = ci_config(tmp_path, "passing.toml", malware={"clamd": f"unix:{tmp_path}/no-clamd.sock", "clamd_unavailable": "pass"})
    code, out, _ = explain(passing, harmless, *argv, "--json")
    assert code == 0, out
    scan = json.loads(out)["clamd"]
    assert scan["scanned"] is False and "unavailable" in scan["error"] and scan["would_tempfail"] is False
