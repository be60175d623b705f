"""Consent CSV import: row refusals with line numbers, one transaction, idempotency, report, JSON, exit codes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.consent_rows import CONSENT_FIELDS
from relay.cli import main as cli
from relay.config import build_config
from relay.consent.imports import ImportFileError, active_record_rules, check_record, import_consents
from relay.services import Clock, Services
from relay.store.rows import consent_from_row

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
HEADER = [
    "email", "basis", "source", "collected_at", "source_url", "source_ip", "confirmed_at",
    "statement_text", "frequency_disclosed", "prechecked",
]


def config_data(db: Path, profile: str = "strict") -> dict[str, Any]:
    return {
        "store": {"url": f"sqlite:///{db}"},
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"]},
        "policy": {"profile": profile},
        "accounts": [
            {
                "id": "shop",
                "domains": ["shop.example"],
                "parent": "holding",
                "default_stream": "newsletter",
                "streams": [{"id": "newsletter", "kind": "marketing"}],
            }
        ],
    }


async def open_services(tmp: Path, profile: str = "strict") -> Services:
    config = build_config(config_data(tmp / "relay.db", profile), tmp / "config.toml")
    services = Services.build(config, clock=Clock(now=lambda: NOW))
    await services.store.open()
    return services


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    s = await open_services(tmp_path)
    yield s
    await s.store.close()


def row(email: str, **changes: str) -> dict[str, str]:
    base = {
        "email": email,
        "basis": "double_opt_in",
        "source": "signup_form",
        "collected_at": "2025-12-01T10:00:00",
        "source_url": "https://shop.example/signup",
        "source_ip": "192.0.2.1",
        "confirmed_at": "2025-12-01T10:05:00Z",
        "statement_text": "Yes, send me the weekly Shop newsletter",
        "frequency_disclosed": "yes",
        "prechecked": "no",
    }
    base.update(changes)
    return base


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] = HEADER, delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def stored(db: Path) -> list[Any]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [consent_from_row(r) for r in conn.execute("SELECT * FROM consents ORDER BY id")]
    finally:
        conn.close()


async def test_accepts_and_refuses_rows_with_rule_and_line(services: Services, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        [
            row("anna@example.nl"),  # line 2
            row("bob@example.nl", source="purchased"),  # line 3
            row("carl@example.nl", statement_text="line one\nline two"),  # lines 4-5
            row("not an address"),  # line 6
            row("dirk@example.nl", collected_at="31-12-2025"),  # line 7
            row("eva@example.nl", source="harvested"),  # line 8
        ],
    )
    report = await import_consents(services, path, "shop", dry_run=False, strict=False)
    assert (report.accepted, report.refused, report.unchanged) == (2, 4, 0)
    assert [(e.row, e.rule) for e in report.errors] == [
        (3, "consent.third_party"),
        (6, "row.invalid"),
        (7, "row.invalid"),
        (8, "consent.harvested"),
    ]
    assert "email" in report.errors[1].detail
    assert "collected_at" in report.errors[2].detail
    assert await services.store.consent.count() == 2
    assert services.metrics.consent_records._value.get() == 2  # type: ignore[attr-defined]


async def test_stale_rows_are_imported(services: Services, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [row("old@example.nl", collected_at="2019-01-01", confirmed_at="2019-01-01")])
    report = await import_consents(services, path, "shop", dry_run=False, strict=False)
    assert report.accepted == 1 and report.refused == 0


async def test_reimport_changes_nothing(services: Services, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [row(f"u{i}@example.nl") for i in range(20)] + [row("x@example.nl", source="rented")])
    first = await import_consents(services, path, "shop", dry_run=False, strict=False)
    before = stored(tmp_path / "relay.db")
    second = await import_consents(services, path, "shop", dry_run=False, strict=False)
    assert (first.accepted, first.unchanged, first.refused) == (20, 0, 1)
    assert (second.accepted, second.unchanged, second.refused) == (0, 20, 1)
    assert stored(tmp_path / "relay.db") == before


async def test_changed_row_is_updated(services: Services, tmp_path: Path) -> None:
    await import_consents(services, write_csv(tmp_path / "a.csv", [row("a@example.nl")]), "shop", dry_run=False, strict=False)
    changed = write_csv(tmp_path / "b.csv", [row("a@example.nl", statement_text="Weekly Shop deals, yes please")])
    report = await import_consents(services, changed, "shop", dry_run=False, strict=False)
    assert (report.accepted, report.unchanged) == (1, 0)
    assert stored(tmp_path / "relay.db")[0].statement_text == "Weekly Shop deals, yes please"


async def test_bad_encoding_late_in_file_imports_nothing(services: Services, tmp_path: Path) -> None:
    # More rows than one store batch, so some were already sent to the database before the error.
    path = write_csv(tmp_path / "in.csv", [row(f"u{i}@example.nl") for i in range(12_000)])
    with open(path, "ab") as f:
        f.write(b"\xff\xfe@example.nl,opt_in\n")
    with pytest.raises(ImportFileError, match="UTF-8"):
        await import_consents(services, path, "shop", dry_run=False, strict=False)
    assert await services.store.consent.count() == 0


async def test_unknown_column_imports_nothing(services: Services, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [{**row("a@example.nl"), "colour": "red"}], header=[*HEADER, "colour"])
    with pytest.raises(ImportFileError, match="colour"):
        await import_consents(services, path, "shop", dry_run=False, strict=False)
    assert await services.store.consent.count() == 0


async def test_unreadable_file(services: Services, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read"):
        await import_consents(services, tmp_path / "missing.csv", "shop", dry_run=False, strict=False)


async def test_dry_run_writes_nothing(services: Services, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [row("a@example.nl"), row("b@example.nl", source="lottery")])
    report = await import_consents(services, path, "shop", dry_run=True, strict=False)
    assert (report.accepted, report.refused) == (1, 1)
    assert await services.store.consent.count() == 0


async def test_dry_run_counts_unchanged_rows_as_the_import_then_does(services: Services, tmp_path: Path) -> None:
    first = [row("a@example.nl"), row("b@example.nl"), row("c@example.nl"), row("d@example.nl")]
    await import_consents(services, write_csv(tmp_path / "first.csv", first), "shop", dry_run=False, strict=False)
    # Since then: c unsubscribed, b clicked. Re-importing their old rows changes neither.
    await services.store.consent.revoke("shop", "c@example.nl", None, via="one_click", at=NOW)
    await services.store.consent.touch(["shop"], "b@example.nl", "click", NOW)
    second = write_csv(
        tmp_path / "second.csv",
        [
            row("a@example.nl"),
            row("a@example.nl"),  # the same row twice
            row("b@example.nl"),
            row("c@example.nl"),
            row("d@example.nl", statement_text="Weekly Shop deals, yes please"),  # changed
            row("e@example.nl"),  # new
            row("e@example.nl"),  # new, then the same again
            row("f@example.nl", source="rented"),  # refused
        ],
    )
    before = stored(tmp_path / "relay.db")
    dry = await import_consents(services, second, "shop", dry_run=True, strict=False)
    assert stored(tmp_path / "relay.db") == before  # a dry run writes nothing
    assert (dry.accepted, dry.unchanged, dry.refused) == (2, 5, 1)
    real = await import_consents(services, second, "shop", dry_run=False, strict=False)
    assert (real.accepted, real.unchanged, real.refused) == (dry.accepted, dry.unchanged, dry.refused)


async def test_kept_refusals_are_bounded_and_the_rest_counted(services: Services, tmp_path: Path) -> None:
    from relay.consent.imports import KEPT_REFUSALS

    rows = [row(f"u{i}@example.nl", source="traded") for i in range(KEPT_REFUSALS + 7)]
    report = await import_consents(services, write_csv(tmp_path / "in.csv", rows), "shop", dry_run=False, strict=False)
    assert report.refused == KEPT_REFUSALS + 7 and len(report.errors) == KEPT_REFUSALS
    assert report.as_json()["errors_omitted"] == 7


async def test_bom_semicolons_and_short_rows(services: Services, tmp_path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";")
    writer.writerow(HEADER)
    writer.writerow(row("a@example.nl").values())
    writer.writerow(["b@example.nl", "opt_in"])
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    report = await import_consents(services, path, "shop", dry_run=False, strict=False)
    assert report.accepted == 1
    assert [(e.row, e.rule) for e in report.errors] == [(3, "row.invalid")]


async def test_scope_parent_and_foreign(services: Services, tmp_path: Path) -> None:
    header = [*HEADER, "scope", "topic"]
    path = write_csv(
        tmp_path / "in.csv",
        [{**row("a@example.nl"), "scope": "holding", "topic": "newsletter"}, {**row("b@example.nl"), "scope": "rival", "topic": ""}],
        header=header,
    )
    report = await import_consents(services, path, "shop", dry_run=False, strict=False)
    assert report.accepted == 1 and report.errors[0].rule == "row.invalid" and "scope" in report.errors[0].detail
    assert [(c.scope, c.topic) for c in stored(tmp_path / "relay.db")] == [("holding", "newsletter")]


@pytest.mark.parametrize(
    ("profile", "changes", "accepted"),
    [
        ("clang", {"prechecked": "yes", "source": "order_process"}, True),  # policy: clang E-bestelprocessen
        ("strict", {"prechecked": "yes", "source": "order_process"}, False),  # policy: mailpro M-vooraf-aangevinkt
        ("mailpro", {"frequency_disclosed": "no"}, True),  # frequency is clang's clause only
        ("clang", {"frequency_disclosed": "no"}, False),  # policy: clang E-frequentie
    ],
)
async def test_profile_decides_record_rules(tmp_path: Path, profile: str, changes: dict[str, str], accepted: bool) -> None:
    services = await open_services(tmp_path, profile)
    try:
        path = write_csv(tmp_path / "in.csv", [row("a@example.nl", **changes)])
        report = await import_consents(services, path, "shop", dry_run=False, strict=False)
        assert report.accepted == (1 if accepted else 0)
    finally:
        await services.store.close()


# --- through the CLI: --report, --json, exit codes ---


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/relay.db"\n'
        '[unsubscribe]\nsecrets = ["unsubscribe-secret-for-tests-0123456789"]\n'
        '[[accounts]]\nid = "shop"\ndomains = ["shop.example"]\ndefault_stream = "newsletter"\n'
        '[[accounts.streams]]\nid = "newsletter"\nkind = "marketing"\n'
    )
    return cfg


def test_cli_json_report_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    path = write_csv(tmp_path / "in.csv", [row("a@example.nl"), row("b@example.nl", source="traded")])
    out = tmp_path / "refused.csv"
    argv = ["consent", "import", str(path), "--account", "shop", "-c", str(cfg)]
    assert cli.main([*argv, "--json", "--report", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "accepted": 1,
        "refused": 1,
        "unchanged": 0,
        "errors": [{"row": 3, "rule": "consent.third_party", "detail": data["errors"][0]["detail"]}],
    }
    with open(out, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["row", "rule", "detail"]
    assert lines[1][:2] == ["3", "consent.third_party"] and len(lines) == 2
    assert cli.main([*argv, "--strict"]) == 1
    # --strict is all or nothing (issue 15): a refused row means no row is written.
    assert "imported nothing: --strict and 1 refused row(s)" in capsys.readouterr().out


def test_cli_file_level_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    path = write_csv(tmp_path / "in.csv", [{**row("a@example.nl"), "colour": "red"}], header=[*HEADER, "colour"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["consent", "import", str(path), "--account", "shop", "-c", str(cfg), "--report", str(tmp_path / "r.csv")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "colour" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.csv").exists()


def test_cli_json_lists_every_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    rows = [row(f"u{i}@example.nl", source="purchased" if i % 2 else "signup_form") for i in range(120)]
    path = write_csv(tmp_path / "in.csv", rows)
    argv = ["consent", "import", str(path), "--account", "shop", "-c", str(cfg), "--json"]
    assert cli.main([*argv, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["accepted"], dry["refused"], dry["unchanged"]) == (60, 60, 0)
    assert [e["row"] for e in dry["errors"]] == [i + 2 for i in range(120) if i % 2]
    assert {e["rule"] for e in dry["errors"]} == {"consent.third_party"}
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == dry["errors"]
    assert cli.main([*argv, "--dry-run"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["accepted"], again["refused"], again["unchanged"]) == (0, 60, 60)


# Runs one CLI import in a fresh interpreter; prints how far the import raised the process's peak
# RSS (KiB) above what start-up had already reached. VmHWM, not getrusage's ru_maxrss: Linux carries
# the forking parent's peak into a child's ru_maxrss across exec.
_MEASURE = """
import sys
from relay.cli import main as cli

def peak_kib():
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

csv_path, config_path, out_path, *extra = sys.argv[1:]
before = peak_kib()
with open(out_path, "w", encoding="utf-8") as out:
    sys.stdout = out
    code = cli.main(["consent", "import", csv_path, "--account", "shop", "-c", config_path, "--json", *extra])
    sys.stdout = sys.__stdout__
print(code, peak_kib() - before)
"""


def _write_big_csv(path: Path, rows: int) -> Path:
    """Every other row refused (a third-party source): the refusals are what used to pile up."""
    good = list(row("x@example.nl").values())
    bad = list(row("x@example.nl", source="purchased").values())
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for i in range(rows):
            values = bad if i % 2 else good
            values[0] = f"user{i}@example.nl"
            writer.writerow(values)
    return path


def _import_growth_kib(tmp_path: Path, rows: int, *extra: str) -> tuple[int, dict[str, Any]]:
    import subprocess
    import sys

    where = tmp_path / f"n{rows}"
    where.mkdir()
    big = _write_big_csv(where / "big.csv", rows)
    out = where / "out.json"
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(big), str(write_config(where)), str(out), *extra],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr
    code, growth = done.stdout.split()
    assert code == "0"
    return int(growth), json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
def test_large_import_with_json_runs_in_bounded_memory(tmp_path: Path, extra: tuple[str, ...]) -> None:
    small_growth, small = _import_growth_kib(tmp_path, 20_000, *extra)
    large_growth, large = _import_growth_kib(tmp_path, 200_000, *extra)
    assert (small["accepted"], small["refused"]) == (10_000, 10_000)
    assert (large["accepted"], large["refused"], len(large["errors"])) == (100_000, 100_000, 100_000)
    assert large["errors"][-1]["row"] == 200_001
    # Ten times the rows, not ten times the memory. Held in memory, the 100,000 refusals alone
    # raise the peak by some 50 MiB; streamed, the large file costs at most a few MiB more.
    assert large_growth < small_growth + 16 * 1024, (small_growth, large_growth)


def documented_add(email: str, base: list[str]) -> list[str]:
    """`consent add` of a double opt-in with every provenance field the complaint procedure asks for."""
    return [
        "consent", "add", email, *base, "--basis", "double_opt_in", "--collected-at", "2026-01-01",
        "--confirmed-at", "2026-01-01T00:10:00", "--source-url", "https://shop.example/s", "--source-ip", "192.0.2.9",
        "--statement-text", "Yes, weekly news", "--frequency-disclosed",
    ]


def test_cli_add_show_touch_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    base = ["-c", str(cfg), "--account", "shop"]
    assert cli.main(documented_add("Anna@Example.nl", base)) == 0
    assert cli.main(["consent", "add", "b@example.nl", *base, "--source", "purchased", "--collected-at", "2026-01-01"]) == 1
    assert "[consent.third_party]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["consent", "add", "b@example.nl", *base, "--collected-at", "yesterday"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert cli.main(["consent", "touch", "anna@example.nl", *base, "--kind", "purchase"]) == 0
    assert "purchase recorded on 1" in capsys.readouterr().out
    assert cli.main(["consent", "show", "anna@example.nl", *base, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["consents"][0]["last_purchase_at"] is not None
    assert cli.main(["consent", "revoke", "anna@example.nl", *base]) == 0
    with pytest.raises(SystemExit):
        cli.main(["consent", "revoke", "anna@example.nl", *base])
    assert cli.main(["suppression", "add", "anna@example.nl", *base, "--reason", "complaint"]) == 0
    capsys.readouterr()
    assert cli.main(["suppression", "list", "-c", str(cfg), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["email"], s["reason"]) for s in listed] == [("anna@example.nl", "suppression.complaint")]
    assert cli.main(["suppression", "remove", "anna@example.nl", *base]) == 0


@pytest.mark.parametrize(("kind", "field"), [("purchase", "last_purchase_at"), ("confirmation", "confirmed_at")])
def test_cli_touch_with_an_earlier_at_keeps_the_later_stamp(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, field: str) -> None:
    cfg = write_config(tmp_path)
    base = ["-c", str(cfg), "--account", "shop"]
    assert cli.main(documented_add("anna@example.nl", base)) == 0
    assert cli.main(["consent", "touch", "anna@example.nl", *base, "--kind", kind, "--at", "2026-02-10T12:00:00Z"]) == 0
    assert cli.main(["consent", "touch", "anna@example.nl", *base, "--kind", kind, "--at", "2026-01-15T12:00:00Z"]) == 0
    capsys.readouterr()
    assert cli.main(["consent", "show", "anna@example.nl", *base, "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["consents"]
    assert shown[field].startswith("2026-02-10T12:00:00")
    assert shown["last_interaction_at"].startswith("2026-02-10T12:00:00")


# --- hypothesis: random rows never crash and never import what the rules refuse ---

VALUES: dict[str, list[str]] = {
    "email": ["a@example.nl", "B@Example.NL", "x+tag@bücher.example", "bad", "", "@x", "a@b@c"],
    "scope": ["", "shop", "holding", "rival"],
    "topic": ["", "*", "newsletter", "two words"],
    "basis": ["", "opt_in", "double_opt_in", "existing_customer", "business_card", "offline_form", "maybe"],
    "source": ["", "signup_form", "order_process", "purchased", "harvested", "terms_and_conditions", "business_card", "nope"],
    "collected_at": ["", "2025-01-01", "2025-01-01T10:00:00+02:00", "2099-01-01", "01-01-2025"],
    "confirmed_at": ["", "2025-01-02", "bad"],
    "last_purchase_at": ["", "2025-02-01", "2010-01-01"],
    "source_url": ["", "https://shop.example/s", "ftp://x", "not a url"],
    "source_ip": ["", "192.0.2.1", "::1", "999.0.0.1"],
    "statement_text": ["", "Yes please, weekly news", "deze organisatie en geselecteerde partners", "x\ny"],
    "prechecked": ["", "yes", "no", "1", "maybe"],
    "frequency_disclosed": ["", "true", "false", "2"],
}
COLUMNS = st.lists(st.sampled_from(sorted(set(CONSENT_FIELDS) - {"email"})), unique=True, max_size=8).map(
    lambda cols: ["email", *cols]
)


def _value(column: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(VALUES.get(column, ["", "true", "2025-01-01", "x"])), st.text(max_size=30))


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    columns = draw(COLUMNS)
    rows = draw(st.lists(st.tuples(*[_value(c) for c in columns]).map(list), max_size=12))
    return columns, rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=csv_files())
def test_random_rows_never_crash_or_import_refused(data: tuple[list[str], list[list[str]]]) -> None:
    columns, rows = data
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "in.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)

        async def go() -> Any:
            services = await open_services(root)
            try:
                report = await import_consents(services, path, "shop", dry_run=False, strict=False)
                return report, services.engine.profile
            finally:
                await services.store.close()

        report, profile = asyncio.run(go())
        data_rows = sum(1 for _ in csv.reader(open(path, encoding="utf-8", newline=""))) - 1
        assert report.accepted + report.unchanged + report.refused == data_rows
        active = active_record_rules(profile)
        for record in stored(root / "relay.db"):
            assert check_record(record, profile.params, active) is None
            assert record.scope in ("shop", "holding")
