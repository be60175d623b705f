"""Config loading (docs/SPEC.md §12): every error names its key; env: secrets; hashes only; the example loads."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import CertFiles, config_dict, make_config, write_config

from relay.config import build_config, helper_enabled, load_config, sqlite_path, usable_cores
from relay.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def error_for(tmp_path: Path, **overrides: Any) -> ConfigError:
    data = config_dict(tmp_path, 2525, **overrides)
    with pytest.raises(ConfigError) as caught:
        build_config(data, tmp_path / "relay.toml")
    return caught.value


def test_example_config_loads_and_trusts_localhost() -> None:
    config = load_config(REPO / "config.example.toml")
    (shop,) = config.accounts
    assert shop.trusts("127.0.0.1") and shop.default_stream is not None
    assert config.smtp.listen.port == 2525 and config.http.admin_listen is not None
    assert sqlite_path(config.store.url) == REPO / "var" / "relay.db"  # relative to the file


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"smtpp": {}}, "smtpp"),
        ({"smtp": {"listne": "127.0.0.1:25"}}, "smtp.listne"),
        ({"smtp": {"max_recipients": "many"}}, "smtp.max_recipients"),
        ({"smtp": {"auth_require_tls": "yes"}}, "smtp.auth_require_tls"),
        ({"smtp": {"idle_timeout": -1}}, "smtp.idle_timeout"),
        ({"smtp": {"data_timeout": 0}}, "smtp.data_timeout"),
        ({"smtp": {"listen": "localhost"}}, "smtp.listen"),
        ({"upstream": {"starttls": "sometimes"}}, "upstream.starttls"),
        ({"upstream": {"port": 25.5}}, "upstream.port"),
        ({"store": {"url": "mysql://x"}}, "store.url"),
        ({"policy": {"profile": "lenient"}}, "policy.profile"),
        ({"policy": {"actions": {"no.such.rule": "off"}}}, '"no.such.rule"'),
        ({"policy": {"actions": {"identity.no_reply": "ignore"}}}, '"identity.no_reply"'),
        ({"account": {"domains": "shop.example"}}, "accounts[0].domains"),
        ({"account": {"trusted_networks": ["not-a-net"]}}, "accounts[0].trusted_networks[0]"),
        ({"account": {"password_hash": "plain-text-password"}}, "accounts[0].password_hash"),
        ({"account": {"default_stream": "nope"}}, "accounts[0].default_stream"),
        ({"account": {"streams": [{"id": "x", "kind": "promo"}]}}, "accounts[0].streams[0].kind"),
        ({"account": {"colour": "blue"}}, "accounts[0].colour"),
        ({"account": {"bounce_forward": "not an address"}}, "accounts[0].bounce_forward"),
        ({"complaints": {"sources": [{"networks": ["192.0.2.0/24"]}]}}, "complaints.sources[0].name"),
        ({"complaints": {"sources": [{"name": "x"}]}}, "complaints.sources[0]"),
        ({"complaints": {"sources": [{"name": "x", "networks": ["0.0.0.0/0"]}]}}, "complaints.sources[0].networks[0]"),
        ({"complaints": {"sources": [{"name": "x", "networks": ["::/0"]}]}}, "complaints.sources[0].networks[0]"),
        ({"complaints": {"sources": [{"name": "x", "networks": ["nope"]}]}}, "complaints.sources[0].networks[0]"),
        ({"complaints": {"sources": [{"name": "x", "networks": ["192.0.2.1"], "spamtrap": "yes"}]}}, "complaints.sources[0].spamtrap"),
        ({"bounces": {"verp": "yes"}}, "bounces.verp"),
        ({"bounces": {"hard_limit": -1}}, "bounces.hard_limit"),
        ({"account": {"own_ibans": ["NL91 ABNA 0417 1643 01"]}}, "accounts[0].own_ibans[0]"),
        ({"account": {"tracking_hosts": "click.example"}}, "accounts[0].tracking_hosts"),
    ],
)
def test_bad_value_names_its_key(tmp_path: Path, overrides: dict[str, Any], key: str) -> None:
    error = error_for(tmp_path, **overrides)
    assert key in str(error), str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"smtp": {"max_recipients": "many"}}, "smtp.max_recipients: expected an integer, got a string"),
        ({"smtp": {"max_recipients": 0}}, "smtp.max_recipients: must be at least 1 (0 would refuse every transaction)"),
        ({"smtp": {"workers": 0}}, 'smtp.workers: expected an integer ≥ 1 or "auto", got a number < 1'),
        ({"smtp": {"workers": "many"}}, 'smtp.workers: expected an integer ≥ 1 or "auto", got \'many\''),
        ({"smtp": {"workers": 1.5}}, 'smtp.workers: expected an integer ≥ 1 or "auto", got a number'),
        ({"smtp": {"workers": True}}, 'smtp.workers: expected an integer ≥ 1 or "auto", got a boolean'),
        ({"smtp": {"idle_timeout": 0}}, "smtp.idle_timeout: must be greater than 0"),
        ({"bounces": {"hard_limit": -1}}, "bounces.hard_limit: must not be negative"),
        ({"bounces": {"verp": "yes"}}, "bounces.verp: expected true or false, got a string"),
        ({"upstream": {"starttls": "sometimes"}}, "upstream.starttls: expected one of off, opportunistic, required, got 'sometimes'"),
        ({"account": {"domains": "shop.example"}}, "accounts[0].domains: expected a list of strings, got a string"),
        ({"account": {"streams": [{"kind": "marketing"}]}}, "accounts[0].streams[0].id: missing"),
        ({"dkim": {"keyz": []}}, "dkim.keyz: unknown key (known: keys)"),
        ({"http": {"admin_tokens": [{"hash": "x", "labels": "y"}]}}, "http.admin_tokens[0].labels: unknown key (known: hash, label)"),
    ],
)
def test_refusals_keep_their_words(tmp_path: Path, overrides: dict[str, Any], text: str) -> None:
    # the library's own wording is translated: one vocabulary for every refusal of the loader
    assert str(error_for(tmp_path, **overrides)) == text


def test_a_store_table_without_url_keeps_the_database_next_to_the_file(tmp_path: Path) -> None:
    data = config_dict(tmp_path, 2525, store={"timeout": 2})
    del data["store"]["url"]
    assert sqlite_path(build_config(data, tmp_path / "relay.toml").store.url) == tmp_path / "var" / "relay.db"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[smtp\nlisten = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_key_file_names_the_key(tmp_path: Path, tls_cert: CertFiles, kind: str) -> None:
    bad = tmp_path / "missing.pem"
    if kind == "directory":
        bad.mkdir()
    error = error_for(tmp_path, smtp={"tls_cert": str(tls_cert.cert), "tls_key": str(bad)})
    assert error.key == "smtp.tls_key" and str(bad) in str(error)
    error = error_for(tmp_path, dkim={"keys": [{"domain": "shop.example", "selector": "s1", "private_key": str(bad)}]})
    assert error.key == "dkim.keys[0].private_key"


def test_tls_cert_and_key_go_together(tmp_path: Path, tls_cert: CertFiles) -> None:
    assert error_for(tmp_path, smtp={"tls_cert": str(tls_cert.cert)}).key == "smtp.tls_key"
    assert error_for(tmp_path, smtp={"tls_listen": "127.0.0.1:0"}).key == "smtp.tls_listen"


def test_env_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TEST_UPSTREAM_PW", "s3cret-from-env")
    monkeypatch.setenv("RELAY_TEST_UNSUB", "an-unsubscribe-secret-of-length")
    config = make_config(
        tmp_path, 2525,
        upstream={"username": "relay", "password": "env:RELAY_TEST_UPSTREAM_PW"},
        unsubscribe={"secrets": ["env:RELAY_TEST_UNSUB"]},
    )
    assert config.upstream.password == "s3cret-from-env"
    assert config.unsubscribe.secrets == (b"an-unsubscribe-secret-of-length",)
    monkeypatch.delenv("RELAY_TEST_UPSTREAM_PW")
    error = error_for(tmp_path, upstream={"password": "env:RELAY_TEST_UPSTREAM_PW"})
    assert error.key == "upstream.password" and "RELAY_TEST_UPSTREAM_PW" in str(error)


def _without_unsubscribe_secrets(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data = config_dict(tmp_path, 2525, **overrides)
    del data["unsubscribe"]
    return data


def test_marketing_stream_without_unsubscribe_secrets_is_refused(tmp_path: Path) -> None:
    # docs/SPEC.md §6: every marketing copy carries List-Unsubscribe; without a secret none could be signed.
    with pytest.raises(ConfigError) as caught:
        build_config(_without_unsubscribe_secrets(tmp_path), tmp_path / "relay.toml")
    assert caught.value.key == "unsubscribe.secrets"
    assert "newsletter" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        build_config(config_dict(tmp_path, 2525, unsubscribe={"secrets": []}), tmp_path / "relay.toml")
    assert caught.value.key == "unsubscribe.secrets"


def test_transactional_only_config_needs_no_unsubscribe_secret(tmp_path: Path) -> None:
    data = _without_unsubscribe_secrets(tmp_path, account={"streams": [{"id": "orders", "kind": "transactional"}]})
    assert build_config(data, tmp_path / "relay.toml").unsubscribe.secrets == ()


def test_check_config_refuses_marketing_without_secrets_in_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay.cli import main as cli

    path = write_config(tmp_path, _without_unsubscribe_secrets(tmp_path))
    with pytest.raises(SystemExit) as exited:
        cli.main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unsubscribe.secrets" in lines[0] and "Traceback" not in err, err


def test_relative_sqlite_url_is_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write_config(sub, config_dict(sub, 2525, store={"url": "sqlite:///data/r.db"}))
    assert sqlite_path(load_config(path).store.url) == sub / "data" / "r.db"
    path = write_config(sub, config_dict(sub, 2525, store={"url": f"sqlite:///{tmp_path}/abs.db"}))
    assert sqlite_path(load_config(path).store.url) == tmp_path / "abs.db"


def test_duplicate_accounts_and_streams(tmp_path: Path) -> None:
    data = config_dict(tmp_path, 2525)
    data["accounts"].append(dict(data["accounts"][0]))
    with pytest.raises(ConfigError, match="duplicate account id"):
        build_config(data, tmp_path / "relay.toml")
    streams = [{"id": "a", "kind": "marketing"}, {"id": "a", "kind": "transactional"}]
    assert "unique" in str(error_for(tmp_path, account={"streams": streams, "default_stream": "a"}))


def test_policy_overrides_and_monitor_mode(tmp_path: Path) -> None:
    config = make_config(tmp_path, 2525, policy={"mode": "monitor", "actions": {"identity.no_reply": "off"}})
    assert config.policy.mode == "monitor" and config.policy.actions == {"identity.no_reply": "off"}


def test_own_ibans_and_tracking_hosts_reach_the_account_facts(tmp_path: Path) -> None:
    # issue 14: the sender's own IBANs and its platform's click-tracking hosts, per account
    config = make_config(
        tmp_path, 2525, account={"own_ibans": ["nl91 abna 0417 1643 00"], "tracking_hosts": ["Click.Mailer.Example"]}
    )
    facts = config.accounts[0].facts()
    assert facts.own_ibans == frozenset({"NL91ABNA0417164300"})
    assert facts.tracking_hosts == frozenset({"click.mailer.example"})


@pytest.mark.parametrize("value", ["off", "monitor", "quarantine", "tempfail"])
def test_relay_denied_cannot_be_overridden(tmp_path: Path, value: str) -> None:
    # policy: platform (relay.denied: nothing can override it): a config error, never silently ignored
    error = error_for(tmp_path, policy={"actions": {"relay.denied": value}})
    assert 'policy.actions."relay.denied"' in str(error) and "must be 'reject'" in str(error), str(error)
    config = make_config(tmp_path, 2525, policy={"actions": {"relay.denied": "reject"}})
    assert config.policy.actions == {"relay.denied": "reject"}


@pytest.mark.parametrize(("value", "cores", "workers", "helper"), [("auto", 1, 1, False), ("auto", 3, 3, False), (None, 4, 4, False), (2, 8, 2, True), (1, 1, 1, False)])
def test_workers_auto_is_one_per_usable_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: Any, cores: int, workers: int, helper: bool
) -> None:
    """Issue 20: `[smtp] workers` defaults to "auto", resolved at load to the CPUs the process may
    run on; helper_process "auto" then finds no spare core."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    data = config_dict(tmp_path, 2525)
    data["smtp"]["helper_process"] = "auto"  # conftest turns it off for speed; its default is the question here
    if value is None:
        del data["smtp"]["workers"]  # left out: the default
    else:
        data["smtp"]["workers"] = value
    smtp = build_config(data, tmp_path / "relay.toml").smtp
    assert (smtp.workers, smtp.worker_count, helper_enabled(smtp)) == (workers, workers, helper)


def test_workers_auto_without_affinity_counts_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert build_config(config_dict(tmp_path, 2525, smtp={"workers": "auto"}), tmp_path / "relay.toml").smtp.workers == 6
    assert usable_cores() == 6


@pytest.mark.parametrize("value", ["0", '"many"'])
def test_check_config_refuses_bad_workers_in_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    from relay.cli import main as cli

    path = write_config(tmp_path, config_dict(tmp_path, 2525))
    path.write_text(re.sub(r'^"?workers"? = .*$', f"workers = {value}", path.read_text(), count=1, flags=re.M))
    with pytest.raises(SystemExit) as exited:
        cli.main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "smtp.workers" in line and '"auto"' in line and "Traceback" not in err, err
