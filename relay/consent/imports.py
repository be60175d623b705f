"""Bring consent into the store: a streamed CSV import (accepted rows in one transaction) or one record.

Both check the record-only rules of the active profile. The file is read line by line.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, TextIO

from policies.consent_rows import InvalidHeader, InvalidRow, RowParser, check_header, parse_consent_row
from policies.facts import ConsentRecord
from policies.findings import Action
from policies.profiles import Profile
from policies.rules.consent import RECORD_RULE_IDS, record_findings, record_findings_key
from relay.errors import NotFound, UsageError
from relay.log import get_logger
from relay.services import Services
from relay.spreadsheet import csv_writer
from relay.store.records import AuditEntry, iso
from relay.store.rows import consent_row_unchanged, consent_to_row, merged_consent_row

ROW_INVALID = "row.invalid"
REPORT_HEADER = ("row", "rule", "detail")
# Refusals an ImportReport keeps in memory by default; a file may have millions (--report and
# `refusals_to` get every one).
KEPT_REFUSALS = 1000
# A dry run compares this many rows at a time with the store.
_DRY_RUN_BATCH = 2000


class ImportFileError(UsageError):
    """The file as a whole cannot be imported (unknown column, unreadable, not UTF-8, not CSV): nothing is."""


class _StrictRefusal(Exception):
    """Raised by the rows of a --strict import after the last one when any was refused: the store's
    one transaction rolls back, so nothing is imported."""


@dataclass(frozen=True)
class RowRefusal:
    row: int  # CSV line number where the record starts; the header is line 1
    rule: str  # a POLICY.md rule id, or row.invalid for a malformed row
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "rule": self.rule, "detail": self.detail}


@dataclass
class ImportReport:
    accepted: int = 0  # rows written (new or changed); in a dry run, rows that would be
    refused: int = 0
    unchanged: int = 0  # valid rows equal to what the store already holds
    errors: list[RowRefusal] = field(default_factory=list)  # the first ones only: see keep_errors
    dry_run: bool = False
    rolled_back: bool = False  # --strict and a row was refused: nothing was imported

    @property
    def errors_omitted(self) -> int:
        return self.refused - len(self.errors)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "accepted": self.accepted,
            "refused": self.refused,
            "unchanged": self.unchanged,
            "errors": [e.as_dict() for e in self.errors],
        }
        if self.errors_omitted:
            data["errors_omitted"] = self.errors_omitted
        if self.rolled_back:
            data["rolled_back"] = True
        return data


def write_report_json(report: ImportReport, refusals: Iterable[str], out: TextIO) -> None:
    """`report.as_json()` as one line, its errors taken from `refusals` (one JSON object a line, as
    `import_consents(refusals_to=…)` writes them) so that none has to be in memory."""
    counts = {k: v for k, v in report.as_json().items() if k not in ("errors", "errors_omitted")}
    head = json.dumps(counts)
    out.write(head[:-1] + ', "errors": [')
    for i, line in enumerate(refusals):
        out.write(", " + line.rstrip("\n") if i else line.rstrip("\n"))
    out.write("]}\n")


def active_record_rules(profile: Profile) -> tuple[str, ...]:
    """Record-only rules that refuse a row: OFF skips, MONITOR only counts at send time."""
    return tuple(r for r in RECORD_RULE_IDS if profile.action(r) not in (Action.OFF, Action.MONITOR))


def check_record(record: ConsentRecord, params: Mapping[str, Any], active: Sequence[str]) -> tuple[str, str] | None:
    """The first record-only rule of the active profile the record breaks, with every other one named."""
    found = [(rule_id, detail) for rule_id, detail in record_findings(record, params) if rule_id in active]
    if not found:
        return None
    rule_id, detail = found[0]
    if len(found) > 1:
        detail += "; also " + ", ".join(r for r, _ in found[1:])
    return rule_id, detail


class _Rows:
    """Yields the accepted records of an open CSV, reporting refusals as it goes."""

    def __init__(
        self,
        stream: TextIO,
        *,
        scopes: Sequence[str],
        profile: Profile,
        now: datetime,
        report: ImportReport,
        report_writer: Any,
        keep_errors: int | None,
        refusals_to: TextIO | None = None,
        strict: bool = False,
    ) -> None:
        self.strict = strict
        self.scopes = tuple(scopes)
        self.params = profile.params
        self.active = active_record_rules(profile)
        self.now = now
        self.report = report
        self.report_writer = report_writer
        self.keep_errors = keep_errors
        self.refusals_to = refusals_to
        first = stream.readline()
        # Dutch spreadsheets export with ';': take whichever separator the header uses.
        delimiter = ";" if first.count(";") > first.count(",") else ","
        self.reader = csv.reader(itertools.chain([first], stream), delimiter=delimiter, strict=True)
        header = next(self.reader, None)
        try:
            self.columns = check_header(header or [])
        except InvalidHeader as exc:
            raise ImportFileError(str(exc)) from None

    def refuse(self, line: int, rule_id: str, detail: str) -> None:
        self.report.refused += 1
        refusal = RowRefusal(line, rule_id, detail)
        if self.keep_errors is None or len(self.report.errors) < self.keep_errors:
            self.report.errors.append(refusal)
        if self.report_writer is not None:
            self.report_writer.writerow((line, rule_id, detail))
        if self.refusals_to is not None:
            self.refusals_to.write(json.dumps(refusal.as_dict(), ensure_ascii=False) + "\n")

    def __iter__(self) -> Iterator[ConsentRecord]:
        reader, width = self.reader, len(self.columns)
        parse = RowParser(self.columns, scopes=self.scopes, now=self.now).parse
        params, active = self.params, self.active
        # Most rows of a file share one shape: check each distinct shape once.
        checked: dict[tuple[object, ...], tuple[str, str] | None] = {}
        start = reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if not values:
                continue  # a blank line
            if len(values) != width:
                self.refuse(line, ROW_INVALID, f"the row has {len(values)} fields, the header has {width}")
                continue
            try:
                record = parse(values)
            except InvalidRow as exc:
                self.refuse(line, ROW_INVALID, exc.detail)
                continue
            key = record_findings_key(record)
            try:
                refusal = checked[key]
            except KeyError:
                refusal = check_record(record, params, active)
                if len(checked) < 65_536:
                    checked[key] = refusal
            if refusal is not None:
                self.refuse(line, *refusal)
                continue
            yield record
        if self.strict and self.report.refused:
            raise _StrictRefusal()


async def import_consents(
    services: Services,
    path: str | os.PathLike[str],
    account_id: str,
    *,
    dry_run: bool = False,
    strict: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    keep_errors: int | None = KEPT_REFUSALS,
    refusals_to: TextIO | None = None,
    actor: str = "cli",
) -> ImportReport:
    """Import one CSV for one account. Raises ImportFileError (nothing imported) on a file-level error.

    `strict`: all or nothing; when any row is refused, no row is written (`report.rolled_back`) and
    the CLI exits 1. `keep_errors` bounds the
    refusals kept in memory (None keeps all: small files only). Every refusal still reaches the
    --report file and `refusals_to` (one JSON object a line), which stream.
    """
    account = services.config.account(account_id)
    if account is None:
        raise UsageError(f"unknown account {account_id!r}")
    scopes = account.facts().scopes
    now = services.clock.now()
    report = ImportReport(dry_run=dry_run)
    file = Path(path)
    out: TextIO | None = None
    partial = Path(f"{report_path}.partial") if report_path is not None else None
    try:
        stream = open(file, encoding="utf-8-sig", errors="strict", newline="")
    except OSError as exc:
        raise ImportFileError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        try:
            if partial is not None:
                out = open(partial, "w", encoding="utf-8", newline="")
                writer: Any = csv_writer(out)
                writer.writerow(REPORT_HEADER)
            else:
                writer = None
            rows = _Rows(
                stream,
                scopes=scopes,
                profile=services.engine.profile,
                now=now,
                report=report,
                report_writer=writer,
                keep_errors=keep_errors,
                refusals_to=refusals_to,
                strict=strict,
            )
            try:
                if dry_run:
                    report.accepted, report.unchanged = await _count_changes(services, scopes, rows, now)
                else:
                    # The generator is consumed inside the store's one transaction: an error
                    # raised while reading rolls every accepted row back.
                    report.accepted, report.unchanged = await services.store.consent.upsert_consents(rows, now=now)
            except _StrictRefusal:
                report.accepted = report.unchanged = 0
                report.rolled_back = True
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{file} is not UTF-8 text ({exc.reason}): nothing imported") from None
        except csv.Error as exc:
            raise ImportFileError(f"{file}: malformed CSV: {exc}: nothing imported") from None
        except OSError as exc:
            raise ImportFileError(f"cannot read {file}: {exc.strerror or exc}: nothing imported") from None
    except BaseException:
        if out is not None:
            out.close()
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    finally:
        stream.close()
        if out is not None:
            out.close()
    if partial is not None and report_path is not None:
        partial.replace(report_path)
    if not dry_run:
        services.metrics.consent_records.set(await services.store.consent.count())
        await services.store.audit.add(
            AuditEntry(
                actor,
                "consent.import",
                account_id,
                note=str(file),
                detail={"accepted": report.accepted, "refused": report.refused, "unchanged": report.unchanged,
                        "strict": strict, "rolled_back": report.rolled_back},
                at=now,
            )
        )
    get_logger().info(
        "consent_import",
        account=account_id,
        file=str(file),
        dry_run=dry_run,
        strict=strict,
        accepted=report.accepted,
        refused=report.refused,
        unchanged=report.unchanged,
    )
    return report


async def _count_changes(
    services: Services, scopes: Sequence[str], rows: Iterable[ConsentRecord], now: datetime
) -> tuple[int, int]:
    """(would be written, unchanged) for a dry run: each batch compared with the store, nothing written."""
    changed = unchanged = 0
    stamp = iso(now)
    for batch in _batches(rows, _DRY_RUN_BATCH):
        found = await services.store.consent.find_consents(scopes, list({r.email for r in batch}))
        stored = {(c.email, c.scope, c.topic): consent_to_row(c) for records in found.values() for c in records}
        for record in batch:
            key = (record.email, record.scope, record.topic)
            incoming = consent_to_row(record, stamp)
            before = stored.get(key)
            after = incoming if before is None else merged_consent_row(before, incoming)
            if before is not None and consent_row_unchanged(before, after):
                unchanged += 1
            else:
                changed += 1
            stored[key] = after  # a repeated key in the batch meets the earlier row, as the upsert does
    return changed, unchanged


def _batches(rows: Iterable[ConsentRecord], size: int) -> Iterator[list[ConsentRecord]]:
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@dataclass(frozen=True)
class AddResult:
    record: ConsentRecord  # as stored (with its id)
    changed: bool


class ConsentRefused(UsageError):
    """A single record the active profile refuses; `rule` is the POLICY.md rule id."""

    def __init__(self, rule_id: str, detail: str) -> None:
        super().__init__(f"[{rule_id}] {detail}")
        self.rule = rule_id
        self.detail = detail


def account_scopes(services: Services, account_id: str) -> tuple[str, ...]:
    """The consent scopes of a configured account (its id, then its parent); NotFound otherwise."""
    account = services.config.account(account_id)
    if account is None:
        raise NotFound(f"unknown account {account_id!r}")
    return account.facts().scopes


async def add_consent(services: Services, values: Mapping[str, Any], account_id: str, *, actor: str) -> AddResult:
    """Validate one record (InvalidRow), check it like an imported row (ConsentRefused), upsert it."""
    scopes = account_scopes(services, account_id)
    now = services.clock.now()
    record = parse_consent_row(values, scopes=scopes, now=now)
    profile = services.engine.profile
    refusal = check_record(record, profile.params, active_record_rules(profile))
    if refusal is not None:
        raise ConsentRefused(*refusal)
    written, _ = await services.store.consent.upsert_consents([record], now=now)
    stored = await services.store.consent.find_consents([record.scope], [record.email])
    saved = next(c for c in stored.get(record.email, []) if c.topic == record.topic)
    if written:
        services.metrics.consent_records.set(await services.store.consent.count())
        await services.store.audit.add(
            AuditEntry(actor, "consent.add", account_id, detail={"email": saved.email, "consent": saved.id, "scope": saved.scope, "topic": saved.topic}, at=now)
        )
    return AddResult(saved, bool(written))
