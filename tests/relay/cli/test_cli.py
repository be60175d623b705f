"""The `consent-relay` entry point: check-config (one line naming the key, exit 2), hash-password
from stdin without a config, -c before or after the subcommand."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_run, make_config

from relay.passwords import verify_password

REPO = Path(__file__).resolve().parents[3]


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli_run(["check-config", "-c", str(REPO / "config.example.toml")], capsys)
    assert code == 0 and "OK" in out
    # The example keeps http://127.0.0.1 for a local start; check-config says what that costs (issue 15).
    assert err.splitlines() == [l for l in err.splitlines() if "warning: http.public_base_url" in l] and len(err.splitlines()) == 1


def test_config_option_before_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli_run(["-c", str(REPO / "config.example.toml"), "check-config"], capsys)
    assert code == 0 and "OK" in out


@pytest.mark.parametrize(
    ("replace", "key"),
    [
        (("max_recipients = 1000", "max_recipents = 1000"), "smtp.max_recipents"),
        (("max_recipients = 1000", 'max_recipients = "1000"'), "smtp.max_recipients"),
        (('tls_verify = true', 'tls_verify = "true"'), "upstream.tls_verify"),
        (('# tls_cert = "/etc/consent-relay/cert.pem"\n# tls_key  = "/etc/consent-relay/key.pem"',
          'tls_cert = "/nonexistent/cert.pem"\ntls_key = "/nonexistent/key.pem"'), "smtp.tls_cert"),
    ],
)
def test_check_config_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], replace: tuple[str, str], key: str
) -> None:
    text = (REPO / "config.example.toml").read_text()
    assert replace[0] in text
    path = tmp_path / "config.toml"
    path.write_text(text.replace(*replace))
    code, out, err = cli_run(["check-config", "-c", str(path)], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in err, err


def test_missing_config_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli_run(["check-config", "-c", str(tmp_path / "absent.toml")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "absent.toml" in err


def test_config_from_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, 2525)
    monkeypatch.setenv("CONSENT_RELAY_CONFIG", str(config.path))
    code, out, _ = cli_run(["check-config"], capsys)
    assert code == 0 and str(config.path) in out


def test_hash_password_reads_stdin_and_needs_no_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONSENT_RELAY_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("my secret\n"))
    code, out, err = cli_run(["hash-password"], capsys)
    assert code == 0 and err == ""
    (line,) = out.strip().splitlines()
    assert line.startswith("scrypt$") and "my secret" not in out
    assert verify_password("my secret", line) and not verify_password("other", line)


@pytest.mark.parametrize("where", ["before", "after"])
def test_hash_password_takes_c_like_every_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("my secret\n"))
    option = ["-c", str(tmp_path / "absent.toml")]  # not read: hashing needs no config
    argv = [*option, "hash-password"] if where == "before" else ["hash-password", *option]
    code, out, err = cli_run(argv, capsys)
    assert code == 0 and err == "" and verify_password("my secret", out.strip())


def test_hash_password_refuses_empty(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, out, err = cli_run(["hash-password"], capsys)
    assert code == 2 and out == "" and "empty" in err


def test_hash_password_as_a_process() -> None:
    script = Path(sys.executable).parent / "consent-relay"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "relay.cli.main"]
    done = subprocess.run([*argv, "hash-password"], input="piped secret\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert verify_password("piped secret", done.stdout.strip())
    assert "piped secret" not in done.stdout + done.stderr  # never echoed


def test_unknown_command_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli_run(["frobnicate"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_hash_password_on_a_terminal_does_not_echo() -> None:
    import os
    import pty
    import select

    master, slave = pty.openpty()
    script = Path(sys.executable).parent / "consent-relay"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "relay.cli.main"]
    proc = subprocess.Popen(
        [*argv, "hash-password"], stdin=slave, stdout=slave, stderr=slave,
        preexec_fn=lambda: os.login_tty(slave), close_fds=True,  # the pty becomes its controlling terminal
    )
    os.close(slave)
    output = b""
    prompts = 0
    try:
        while proc.poll() is None or select.select([master], [], [], 0)[0]:
            ready, _, _ = select.select([master], [], [], 10)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            while prompts < output.count(b": ") and prompts < 2:  # "Secret: " then "Again: "
                os.write(master, b"terminal secret\n")
                prompts += 1
        assert proc.wait(timeout=30) == 0, output
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = output.decode(errors="replace")
    assert prompts == 2 and "terminal secret" not in text, text
    line = next(part for part in text.split() if part.startswith("scrypt$"))
    assert verify_password("terminal secret", line)


@pytest.mark.parametrize("broken", ["cert", "key"])
def test_check_config_loads_the_tls_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tls_cert: object, broken: str
) -> None:
    """A file that exists but is not a certificate or a matching key is found by check-config,
    not by the first STARTTLS of a client (or a `serve` that dies with OpenSSL's "PEM lib")."""
    cert, key = tls_cert.cert, tls_cert.key  # type: ignore[attr-defined]
    junk = tmp_path / f"junk-{broken}.pem"
    junk.write_text("-----BEGIN NONSENSE-----\nbm90IGEgY2VydA==\n-----END NONSENSE-----\n")
    text = (REPO / "config.example.toml").read_text()
    original = '# tls_cert = "/etc/consent-relay/cert.pem"\n# tls_key  = "/etc/consent-relay/key.pem"'
    assert original in text
    pair = (junk, key) if broken == "cert" else (cert, junk)
    path = tmp_path / "config.toml"
    path.write_text(text.replace(original, f'tls_cert = "{pair[0]}"\ntls_key = "{pair[1]}"'))
    code, out, err = cli_run(["check-config", "-c", str(path)], capsys)
    assert code == 2 and out == "", (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"smtp.tls_{broken}" in lines[0] and "Traceback" not in err, err
    good = tmp_path / "good.toml"
    good.write_text(text.replace(original, f'tls_cert = "{cert}"\ntls_key = "{key}"'))
    assert cli_run(["check-config", "-c", str(good)], capsys)[0] == 0
