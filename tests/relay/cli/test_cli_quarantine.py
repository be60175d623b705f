"""`consent-relay quarantine list|show|delete` in-process against a real SQLite store: output formats,
exit codes (0 all, 1 some, 2 none / bad input), audit. Release with a real upstream is in tests/e2e."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from relay.cli.main import main
from relay.config import load_config
from relay.errors import UsageError
from relay.quarantine import service as qs
from relay.services import Services
from relay.store.records import QuarantineItem

NOW = datetime.now(timezone.utc)

CONFIG = """
[store]
url = "sqlite:///relay.db"
[http]
admin_listen = "127.0.0.1:0"
[unsubscribe]
secrets = ["unsubscribe-secret-for-tests-0123456789"]
[[accounts]]
id = "shop"
domains = ["shop.example"]
default_stream = "newsletter"
[[accounts.streams]]
id = "newsletter"
kind = "marketing"
"""


def held(n: int, *, account: str = "shop", rule: str = "content.offensive_subject", age: timedelta = timedelta(0)) -> QuarantineItem:
    return QuarantineItem(
        id=f"Q{n}", relay_id=str(n), account=account, stream="newsletter", mail_from="news@shop.example",
        rcpt_tos=("anna@example.nl", "bob@example.nl"), subject=f"Wat een klote weer {n}", rules=(rule,),
        findings=({"rule": rule, "action": "quarantine", "detail": "The subject contains an offensive term", "evidence": "klote", "recipient": None},),
        size=42, received_at=NOW - age - timedelta(seconds=n),
        content=f"From: Shop <news@shop.example>\r\nSubject: Wat een klote weer {n}\r\n\r\nHoi\r\n".encode(),
    )


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")

    async def seed() -> None:
        services = Services.build(load_config(path))
        await services.store.open()
        await services.store.quarantine.hold(held(1))
        await services.store.quarantine.hold(held(2, rule="content.adult"))
        await services.store.quarantine.hold(held(3, age=timedelta(days=9)))
        await services.store.close()

    asyncio.run(seed())
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    try:
        code = main([*argv, "-c", str(config)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def audit(config: Path) -> list[tuple[str, str, str, str]]:
    async def read() -> list[tuple[str, str, str, str]]:
        services = Services.build(load_config(config))
        await services.store.open()
        try:
            return [(e.actor, e.action, e.target, e.note) for e in await services.store.audit.list()]
        finally:
            await services.store.close()

    return asyncio.run(read())


def test_list_json_is_the_bare_items_array(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, config_path, "quarantine", "list", "--json")
    assert code == 0
    items = json.loads(out)
    assert [i["id"] for i in items] == ["Q1", "Q2", "Q3"]
    assert set(items[0]) == {"id", "account", "stream", "mail_from", "rcpt_tos", "subject", "rules", "received_at", "size"}
    code, out, _ = run(capsys, config_path, "quarantine", "list", "--json", "--rule", "content.adult")
    assert [i["id"] for i in json.loads(out)] == ["Q2"]
    code, out, _ = run(capsys, config_path, "quarantine", "list", "--json", "--since", "7d")
    assert [i["id"] for i in json.loads(out)] == ["Q1", "Q2"]
    code, out, _ = run(capsys, config_path, "quarantine", "list", "--json", "--account", "other")
    assert json.loads(out) == []


def test_list_text_one_line_per_message(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, config_path, "quarantine", "list", "--rule", "content.adult")
    assert code == 0
    (line,) = out.splitlines()
    fields = line.split("\t")
    assert fields[0] == "Q2" and fields[2] == "shop/newsletter" and fields[3] == "content.adult"
    assert fields[4] == "news@shop.example -> 2 rcpt" and fields[5] == "Wat een klote weer 2"


def test_show_text_and_json(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, config_path, "quarantine", "show", "Q1")
    assert code == 0
    assert "[content.offensive_subject] quarantine: The subject contains an offensive term" in out
    assert "evidence: klote" in out and "  Subject: Wat een klote weer 1" in out
    code, out, _ = run(capsys, config_path, "quarantine", "show", "Q1", "--json")
    detail = json.loads(out)
    assert detail["findings"][0]["evidence"] == "klote" and detail["rcpt_tos"] == ["anna@example.nl", "bob@example.nl"]


def test_delete_exit_codes_and_audit(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, config_path, "quarantine", "delete", "Q1", "--note", "junk")
    assert (code, out, err) == (0, "Q1: deleted\n", "")
    code, out, err = run(capsys, config_path, "quarantine", "delete", "Q2", "Q1", "--note", "more junk", "--actor", "carol")
    assert code == 1 and out == "Q2: deleted\n"
    assert err == "consent-relay: error: Q1: no held quarantine item 'Q1'\n"
    code, out, err = run(capsys, config_path, "quarantine", "delete", "Q1", "Q9")
    assert code == 2 and out == "" and len(err.splitlines()) == 2
    code, out, err = run(capsys, config_path, "quarantine", "show", "Q1")
    assert code == 2 and err == "consent-relay: error: no held quarantine item 'Q1'\n"
    assert audit(config_path) == [("carol", "quarantine.delete", "Q2", "more junk"), ("cli", "quarantine.delete", "Q1", "junk")]
    code, out, _ = run(capsys, config_path, "quarantine", "list", "--json")
    assert [i["id"] for i in json.loads(out)] == ["Q3"]


def test_bad_input_is_one_line_exit_2(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, config_path, "quarantine", "list", "--since", "soon")
    assert code == 2 and len(err.splitlines()) == 1 and "not a time" in err and "Traceback" not in err
    code, out, err = run(capsys, config_path, "quarantine", "release")
    assert code == 2 and len(err.splitlines()) == 1


def test_parse_moment() -> None:
    now = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
    assert qs.parse_moment("12h", now) == datetime(2026, 3, 15, 0, 0, tzinfo=timezone.utc)
    assert qs.parse_moment("2w", now) == datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    assert qs.parse_moment("30m", now) == datetime(2026, 3, 15, 11, 30, tzinfo=timezone.utc)
    assert qs.parse_moment("2026-03-01", now) == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert qs.parse_moment("2026-03-01T10:00:00+01:00", now) == datetime(2026, 3, 1, 9, tzinfo=timezone.utc)
    assert qs.parse_moment("2026-03-01T10:00Z", now) == datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    with pytest.raises(UsageError):
        qs.parse_moment("yesterday", now)
