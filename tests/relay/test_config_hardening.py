"""Dangerous config values (docs/SPEC.md §12, issue 15): check-config refuses a trusted network that covers a
large part of the internet and limits of zero, with one line naming the key and exit 2; it warns (and
`serve` logs) when marketing mail would carry no HTTPS one-click unsubscribe URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingUpstream, ServeProcess, cli_run, config_dict, write_config


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], **overrides: Any) -> tuple[int, str, str]:
    path = write_config(tmp_path, config_dict(tmp_path, 2525, **overrides))
    return cli_run(["check-config", "-c", str(path)], capsys)


@pytest.mark.parametrize(
    "network",
    ["0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/7", "2000::/3", "2001:db8::/31", "::ffff:0:0/96", "::ffff:0.0.0.0/100", "64:ff9b::/96"],
)
def test_check_config_refuses_a_trusted_network_that_is_too_broad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], network: str
) -> None:
    code, out, err = _check(tmp_path, capsys, account={"trusted_networks": ["127.0.0.1/32", network]})
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "accounts[0].trusted_networks[1]" in lines[0] and "open relay" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("network", ["10.0.0.0/8", "172.16.0.0/12", "192.0.2.0/24", "fd00::/8", "fc00::/7", "2001:db8::/32", "::ffff:10.0.0.0/104"])
def test_check_config_accepts_private_and_narrow_networks(tmp_path: Path, capsys: pytest.CaptureFixture[str], network: str) -> None:
    code, out, _ = _check(tmp_path, capsys, account={"trusted_networks": [network]})
    assert code == 0 and "OK" in out


@pytest.mark.parametrize("key", ["max_recipients", "max_message_size", "max_connections", "max_connections_per_ip"])
def test_check_config_refuses_a_zero_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    code, out, err = _check(tmp_path, capsys, smtp={key: 0})
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"smtp.{key}" in lines[0] and "at least 1" in lines[0], err


@pytest.mark.parametrize(
    ("section", "key"),
    [("smtp", "idle_timeout"), ("upstream", "timeout"), ("store", "timeout"), ("malware", "clamd_timeout")],
)
def test_check_config_refuses_a_zero_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str) -> None:
    code, out, err = _check(tmp_path, capsys, **{section: {key: 0}})
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{section}.{key}" in lines[0] and "greater than 0" in lines[0], err


def test_check_config_warns_when_marketing_has_no_https_unsubscribe_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _check(tmp_path, capsys, http={"public_base_url": "http://unsubscribe.shop.example"})
    assert code == 0 and "OK" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "warning: http.public_base_url" in lines[0] and "RFC 8058" in lines[0], err


def test_no_warning_with_https_or_without_marketing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _check(tmp_path, capsys, http={"public_base_url": "https://unsubscribe.shop.example"})
    assert code == 0 and err == ""
    transactional = {"streams": [{"id": "orders", "kind": "transactional"}]}
    code, _, err = _check(tmp_path, capsys, account=transactional, http={"public_base_url": "http://127.0.0.1:8080"})
    assert code == 0 and err == ""


async def test_serve_logs_the_warning_at_start(tmp_path: Path, upstream: RecordingUpstream) -> None:
    data = config_dict(tmp_path, upstream.port, http={"public_base_url": "http://unsubscribe.shop.example"})
    relay = ServeProcess(write_config(tmp_path, data))
    try:
        await relay.start()
        (warning,) = relay.events("config_warning")
        assert warning["key"] == "http.public_base_url" and warning["level"] == "warning"
        assert "RFC 8058" in warning["detail"]
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()
