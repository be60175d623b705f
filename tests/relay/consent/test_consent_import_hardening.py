"""Consent import against hostile files (issue 15): addresses must be RFC 5321 mailboxes (IDNA
domains allowed), cells a spreadsheet would run as formulas are refused, `--strict` is all or
nothing, and the CSV files the relay writes escape formula-like cells. Driven through the CLI."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.consent_rows import _PLAIN_ADDRESS
from conftest import cli_run as run


HEADER = ["email", "basis", "source", "collected_at", "statement_text", "source_url", "source_ip", "frequency_disclosed"]


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/relay.db"\n'
        '[unsubscribe]\nsecrets = ["unsubscribe-secret-for-tests-0123456789"]\n'
        '[[accounts]]\nid = "shop"\ndomains = ["shop.example"]\ndefault_stream = "newsletter"\n'
        '[[accounts.streams]]\nid = "newsletter"\nkind = "marketing"\n'
    )
    return cfg


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # the test writes the hostile file as a spreadsheet would
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def good(email: str, statement: str = "Yes, send me the Shop newsletter") -> list[str]:
    return [email, "opt_in", "signup_form", "2025-12-01T10:00:00", statement, "https://shop.example/signup", "192.0.2.1", "yes"]


def stored_emails(tmp_path: Path) -> list[str]:
    conn = sqlite3.connect(tmp_path / "relay.db")
    try:
        return [r[0] for r in conn.execute("SELECT email FROM consents ORDER BY email")]
    finally:
        conn.close()




BAD_ADDRESSES = [
    '=HYPERLINK("http://evil")@example.net',
    "a..b@example.nl",
    ".anna@example.nl",
    "anna b@example.nl",
    "anna@example",
    "anna@-example.nl",
    "anna@exa_mple.nl",
    "anna@example..nl",
    "anna(comment)@example.nl",
    "anna@@example.nl",
    "x" * 65 + "@example.nl",
]


def test_import_refuses_addresses_that_are_not_rfc5321_mailboxes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    rows = [good(a) for a in BAD_ADDRESSES] + [good("Jörg@Bücher.example"), good('"anna smit"@example.nl'), good("anna+news@example.nl")]
    path = write_rows(tmp_path / "in.csv", rows)
    code, out, _ = run(["consent", "import", str(path), "--account", "shop", "-c", str(cfg), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["accepted"] == 3 and report["refused"] == len(BAD_ADDRESSES)
    assert [e["row"] for e in report["errors"]] == list(range(2, 2 + len(BAD_ADDRESSES)))
    assert all(e["rule"] == "row.invalid" and e["detail"].startswith("email: ") for e in report["errors"])
    assert stored_emails(tmp_path) == ['"anna smit"@example.nl', "anna+news@example.nl", "jörg@xn--bcher-kva.example"]


FORMULAS = ["=1+1", "+31 20 123", "-2+3", "@SUM(A1:A2)", "\t=cmd|' /C calc'!A0", "\r=1", "  =1+1"]


def test_import_refuses_cells_a_spreadsheet_would_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    rows = [good("anna@example.nl", statement=f) for f in FORMULAS]
    rows += [good("=cmd@example.net"), good("-bob@example.net"), good("+carl@example.net"), good("dirk@example.nl")]
    path = write_rows(tmp_path / "in.csv", rows)
    code, out, _ = run(["consent", "import", str(path), "--account", "shop", "-c", str(cfg), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["accepted"] == 1 and report["refused"] == len(FORMULAS) + 3
    details = [e["detail"] for e in report["errors"]]
    assert all("spreadsheet formula" in d for d in details), details
    assert [d.split(":")[0] for d in details] == ["statement_text"] * len(FORMULAS) + ["email"] * 3
    assert stored_emails(tmp_path) == ["dirk@example.nl"]


def test_strict_import_is_all_or_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    path = write_rows(tmp_path / "in.csv", [good("anna@example.nl"), good("=evil@example.net"), good("bob@example.nl")])
    argv = ["consent", "import", str(path), "--account", "shop", "-c", str(cfg), "--strict"]
    code, out, _ = run(argv, capsys)
    assert code == 1 and "imported nothing" in out
    assert stored_emails(tmp_path) == []
    code, out, _ = run([*argv, "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["accepted"] == 0 and report["refused"] == 1 and report["rolled_back"] is True
    assert stored_emails(tmp_path) == []
    # Without --strict the valid rows go in; a clean file passes --strict whole.
    assert run(argv[:-1], capsys)[0] == 0 and stored_emails(tmp_path) == ["anna@example.nl", "bob@example.nl"]
    clean = write_rows(tmp_path / "clean.csv", [good("carl@example.nl")])
    assert run(["consent", "import", str(clean), "--account", "shop", "-c", str(cfg), "--strict"], capsys)[0] == 0
    assert "carl@example.nl" in stored_emails(tmp_path)


def test_the_refusal_report_is_written_with_escaped_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    path = write_rows(tmp_path / "in.csv", [good("=HYPERLINK(\"http://evil\")@example.net")])
    out = tmp_path / "refused.csv"
    assert run(["consent", "import", str(path), "--account", "shop", "-c", str(cfg), "--report", str(out)], capsys)[0] == 0
    with open(out, newline="", encoding="utf-8") as f:
        cells = [cell for line in csv.reader(f) for cell in line]
    assert not any(cell[:1] in "=+-@\t\r" for cell in cells), cells


def test_csv_writer_escapes_every_formula_like_cell() -> None:
    from relay.spreadsheet import csv_writer

    buffer = io.StringIO()
    csv_writer(buffer).writerows([["=1+1", "+1", "-1", "@x", "\tx", "\rx", " =x", "plain", 3, ""]])
    (line,) = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert line == ["'=1+1", "'+1", "'-1", "'@x", "'\tx", "'\rx", "' =x", "plain", "3", ""]


@settings(max_examples=500, deadline=None)
@given(st.from_regex(r"\A[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,40}\Z"))
def test_the_fast_address_path_agrees_with_the_full_mailbox_check(text: str) -> None:
    """The import's fast path for plain addresses accepts nothing the full RFC 5321 check refuses."""
    from policies.addresses import parse_mailbox

    if _PLAIN_ADDRESS.fullmatch(text):
        assert parse_mailbox(text) == text.lower()


def test_parse_mailbox_refuses_what_the_import_refuses() -> None:
    from policies.addresses import InvalidAddress, parse_mailbox

    for address in BAD_ADDRESSES:
        with pytest.raises(InvalidAddress):
            parse_mailbox(address)
