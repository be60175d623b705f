"""CSV that is safe to open in a spreadsheet: every file the relay writes for people goes through
`csv_writer`, which escapes a cell a spreadsheet would run as a formula (OWASP "CSV injection")."""

from __future__ import annotations

import csv
from typing import Any, Iterable, TextIO

from policies.consent_rows import looks_like_formula


def escape_cell(value: object) -> object:
    """A text cell beginning like a formula gets a leading apostrophe: spreadsheets show it as text."""
    if isinstance(value, str) and looks_like_formula(value):
        return "'" + value
    return value


class SafeWriter:
    """csv.writer whose rows are escaped cell by cell."""

    def __init__(self, out: TextIO, **options: Any) -> None:
        self._writer = csv.writer(out, **options)

    def writerow(self, row: Iterable[object]) -> Any:
        return self._writer.writerow([escape_cell(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(out: TextIO, **options: Any) -> SafeWriter:
    return SafeWriter(out, **options)
