"""`check-config` notes what the feedback loop lacks, offline (docs/feedback-loop.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli_run, config_dict, write_config

from relay.config import load_config
from relay.feedback.checks import feedback_notes


def test_a_bare_config_gets_a_note_for_each_missing_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = config_dict(tmp_path, 2525)
    data["accounts"][0].pop("abuse_contact")
    path = write_config(tmp_path, data)
    notes = feedback_notes(load_config(path))
    assert [n.split(" ", 1)[0] for n in notes] == ["unsubscribe.mailto_domain", "complaints.sources", "no", "accounts"]
    code, out, _ = cli_run(["check-config", "-c", str(path)], capsys)
    assert code == 0 and out.count("\nnote: ") == 4


def test_a_complete_feedback_loop_gets_no_note(tmp_path: Path) -> None:
    key = tmp_path / "relay.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    data = config_dict(
        tmp_path, 2525,
        unsubscribe={"mailto_domain": "relay.example.com"},
        complaints={"sources": [{"name": "yahoo", "networks": ["203.0.113.0/24"]}]},
        dkim={"keys": [{"domain": "relay.example.com", "selector": "s1", "private_key": str(key)}]},
    )
    assert feedback_notes(load_config(write_config(tmp_path, data))) == []
