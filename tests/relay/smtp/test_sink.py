"""`consent-relay sink` and `serve --sink` (what `make run` runs): a capture upstream that writes each
delivered copy to var/delivered/ when nothing answers on the configured upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.conftest import (
    RecordingUpstream,
    ServeProcess,
    asend,
    cli_run,
    config_dict,
    free_port,
    message,
    write_config,
)


async def test_serve_with_sink_delivers_into_var_delivered_when_no_upstream_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, config_dict(tmp_path, free_port()))
    relay = ServeProcess(config, "--sink")
    try:
        (started,) = await relay.start()
        out = await asend(started["smtp"], rcpts=["jan@example.net", "piet@example.net"])
        assert out.code == 250, out
        assert "; upstream: 2.0.0 Saved as var/delivered/" in out.text
        relay_id = out.text.split("Delivered as ", 1)[1].split(";", 1)[0]
        copy = tmp_path / "var" / "delivered" / f"{relay_id}.eml"
        assert copy.is_file()
        assert out.text.endswith(f"Saved as var/delivered/{relay_id}.eml")
        raw = copy.read_bytes()
        assert raw.startswith(b"Return-Path: <orders@shop.example>\r\nX-Envelope-To: <jan@example.net>\r\n")
        assert f"X-Relay-Id: {relay_id}".encode() in raw and b"Subject: " in raw
        assert not relay.events("upstream_unreachable")  # the sink was listening before the relay probed
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()

    code, listed, _ = await asyncio.to_thread(cli_run, ["sink", "--list", "-c", str(config)], capsys)
    assert code == 0 and relay_id in listed and "jan@example.net, piet@example.net" in listed
    code, listed, _ = await asyncio.to_thread(cli_run, ["sink", "--list", "--json", "-c", str(config)], capsys)
    (item,) = json.loads(listed)
    assert item["relay_id"] == relay_id and item["rcpt_tos"] == ["jan@example.net", "piet@example.net"]
    assert item["path"].endswith(f"var/delivered/{relay_id}.eml")


async def test_serve_with_sink_leaves_a_live_upstream_alone(tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = write_config(tmp_path, config_dict(tmp_path, upstream.port))
    relay = ServeProcess(config, "--sink")
    try:
        (started,) = await relay.start()
        out = await asend(started["smtp"], message())
        assert out.code == 250 and "Saved as" not in out.text, out
        assert len(upstream.messages) == 1
        assert not (tmp_path / "var" / "delivered").exists()
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()


def test_sink_list_of_an_empty_directory_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, config_dict(tmp_path, free_port()))
    code, out, err = cli_run(["sink", "--list", "-c", str(config)], capsys)
    assert code == 0 and out == "" and "no copies in" in err


@pytest.mark.parametrize("listen", ["nowhere", "127.0.0.1:", "127.0.0.1:99999", ":25", "127.0.0.1:\u00b2"])
def test_sink_bad_listen_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str) -> None:
    config = write_config(tmp_path, config_dict(tmp_path, free_port()))
    code, out, err = cli_run(["sink", "--listen", listen, "-c", str(config)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--listen" in err


def test_without_c_the_checkout_example_config_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Path(__file__).resolve().parents[3]
    monkeypatch.delenv("CONSENT_RELAY_CONFIG", raising=False)
    monkeypatch.chdir(repo)
    if (repo / "config.toml").exists():
        pytest.fail("a config.toml in the checkout would shadow config.example.toml")
    code, out, _ = cli_run(["check-config"], capsys)
    assert code == 0 and out.startswith(f"{repo / 'config.example.toml'}: OK")
    monkeypatch.chdir(tmp_path)  # elsewhere: no config.toml, no example, a clear error
    code, out, err = cli_run(["check-config"], capsys)
    assert code == 2 and "config.toml not found" in err


@pytest.mark.parametrize(("key", "value"), [("smtp", {"listen": "127.0.0.1:\u00b2"}), ("malware", {"clamd": "tcp:127.0.0.1:\u00b2"})])
def test_a_non_ascii_digit_port_in_the_config_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: dict[str, str]
) -> None:
    """"²" passes str.isdigit() but not int(): a clear config error, not a traceback."""
    config = write_config(tmp_path, config_dict(tmp_path, free_port(), **{key: value}))
    code, out, err = cli_run(["check-config", "-c", str(config)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and f"{key}." in err, err
