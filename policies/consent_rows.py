"""Turn one imported row (CSV columns or a JSON object, named like ConsentRecord's fields) into a record.

Pure: validation only. A bad value raises InvalidRow naming its column; the caller decides
whether that refuses a row (import) or a request (admin API).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from policies.addresses import InvalidAddress, parse_mailbox
from policies.facts import ConsentRecord
from policies.rules.consent import BASES, SOURCES

# Every field of docs/SPEC.md §5; `id` belongs to the store.
CONSENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ConsentRecord) if f.name != "id")
TIME_FIELDS = frozenset(
    {"collected_at", "confirmed_at", "last_purchase_at", "last_interaction_at", "revoked_at", "created_at", "updated_at"}
)
BOOL_FIELDS = frozenset(
    {"prechecked", "frequency_disclosed", "informed_at_collection", "objection_offered", "email_contact_announced"}
)
TEXT_FIELDS = frozenset({"statement_text", "co_registration_partners", "customer_relationship", "revoked_via"})
MAX_TEXT = 10_000
# A consent timestamp later than this past the import's clock is a typo or a wrong time zone.
FUTURE_TOLERANCE = timedelta(days=1)

_TRUE = frozenset({"true", "1", "yes", "y"})
_FALSE = frozenset({"false", "0", "no", "n", ""})
# Fast paths for the common shapes; anything else takes the general (slower) path.
# A dot-string local part not starting like a spreadsheet formula, at a host name: valid as it is.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(
    rf"(?=[^=+@-])(?=[^@]{{1,64}}@){_ATOM}+(?:\.{_ATOM}+)*@{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
)
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")
_WORD = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")
_BASES = frozenset(BASES)
_SOURCES = frozenset(SOURCES)


# What a spreadsheet runs as a formula when a cell begins with it (OWASP "CSV injection").
FORMULA_START = frozenset("=+-@\t\r")


def looks_like_formula(value: str) -> bool:
    """True when a spreadsheet would run this cell (leading spaces do not stop `=`)."""
    first = value[:1]
    return first in FORMULA_START or (first.isspace() and value.lstrip()[:1] in FORMULA_START)


def refuse_formula(column: str, value: str) -> None:
    if looks_like_formula(value):
        raise InvalidRow(column, f"starts like a spreadsheet formula ({_show(value.lstrip(' ')[:1])}): {_show(value)}")


class InvalidRow(ValueError):
    """A value that cannot be stored; `column` names the field."""

    def __init__(self, column: str, detail: str) -> None:
        super().__init__(f"{column}: {detail}")
        self.column = column
        self.detail = f"{column}: {detail}"


class InvalidHeader(ValueError):
    pass


def check_header(header: Sequence[str]) -> tuple[str, ...]:
    """The column names, normalised; unknown, duplicate or missing `email` columns are file-level errors."""
    names = tuple(name.strip().lower() for name in header)
    if not names or names == ("",):
        raise InvalidHeader("the file has no header line")
    unknown = [n for n in names if n not in CONSENT_FIELDS]
    if unknown:
        raise InvalidHeader(
            f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
            f"(allowed: {', '.join(CONSENT_FIELDS)})"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidHeader(f"duplicate column {dupes[0]!r}")
    if "email" not in names:
        raise InvalidHeader("the required column 'email' is missing")
    return names


def parse_bool(column: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise InvalidRow(column, f"expected true/false, 1/0 or yes/no, got {_show(value)}")


def parse_time(column: str, value: Any, now: datetime | None = None) -> datetime | None:
    """ISO-8601 date or date-time; naive means UTC; stored in UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRow(column, f"expected an ISO-8601 date or date-time, got {_show(value)}")
    text = value.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRow(column, f"not an ISO-8601 date or date-time: {_show(value)}") from None
    parsed = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    if now is not None and parsed > now + FUTURE_TOLERANCE:
        raise InvalidRow(column, f"{text} lies in the future")
    return parsed


def parse_email(column: str, value: Any) -> str:
    """A valid RFC 5321 mailbox (IDNA domains allowed), normalised; InvalidRow otherwise."""
    if isinstance(value, str) and len(value) <= 254 and _PLAIN_ADDRESS.fullmatch(value):
        return value.lower()
    if not isinstance(value, str) or not value.strip():
        raise InvalidRow(column, "an e-mail address is required")
    if len(value) > 320 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidRow(column, f"not an e-mail address: {_show(value)}")
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    try:
        address = parse_mailbox(text)
    except InvalidAddress as exc:
        raise InvalidRow(column, str(exc)) from None
    if len(address) > 254 or len(address.rpartition("@")[0]) > 64:
        raise InvalidRow(column, f"address too long: {_show(value)}")
    return address


def _text(column: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRow(column, f"expected text, got {_show(value)}")
    if len(value) > MAX_TEXT:
        raise InvalidRow(column, f"longer than {MAX_TEXT} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRow(column, "contains characters that are not valid Unicode") from None
    return value.strip()


def _token(column: str, value: Any, default: str) -> str:
    text = _text(column, value)
    if not text:
        return default
    if not _WORD.fullmatch(text):
        raise InvalidRow(column, f"must be one word without spaces, got {_show(value)}")
    return text


def _choice(column: str, value: Any, allowed: frozenset[str], default: str, ordered: Sequence[str]) -> str:
    text = _text(column, value).lower()
    if not text:
        return default
    if text not in allowed:
        raise InvalidRow(column, f"{_show(value)} is not one of {', '.join(ordered)}")
    return text


def _url(column: str, value: Any) -> str:
    text = _text(column, value)
    if not text:
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc or any(c.isspace() for c in text):
        raise InvalidRow(column, f"not an http(s) URL: {_show(value)}")
    return text


def _ip(column: str, value: Any) -> str:
    text = _text(column, value)
    if not text or _IPV4.fullmatch(text):
        return text
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise InvalidRow(column, f"not an IP address: {_show(value)}") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(name: str, value: Any, scopes: Sequence[str], now: datetime | None) -> Any:
    """One column's value, validated; the single implementation behind both parsers."""
    if name == "email":
        return parse_email(name, value)
    if name == "scope":
        scope = _token(name, value, scopes[0])
        if scope not in scopes:
            raise InvalidRow(name, f"{scope!r} is neither the account {scopes[0]!r} nor its parent organisation")
        return scope
    if name == "topic":
        return _token(name, value, "*")
    if name in TIME_FIELDS:
        return parse_time(name, value, now)
    if name in BOOL_FIELDS:
        return parse_bool(name, value)
    if name == "basis":
        return _choice(name, value, _BASES, "opt_in", BASES)
    if name == "source":
        return _choice(name, value, _SOURCES, "signup_form", SOURCES)
    if name == "source_url":
        return _url(name, value)
    if name == "source_ip":
        return _ip(name, value)
    return _text(name, value)


def _record(kwargs: dict[str, Any], scopes: Sequence[str]) -> ConsentRecord:
    if kwargs.get("revoked_via") and kwargs.get("revoked_at") is None:
        raise InvalidRow("revoked_at", "revoked_via is set but revoked_at is empty")
    kwargs.setdefault("scope", scopes[0])
    return ConsentRecord(**kwargs)


def parse_consent_row(
    values: Mapping[str, Any], *, scopes: Sequence[str], now: datetime | None = None
) -> ConsentRecord:
    """One record from named values; `scope` defaults to scopes[0] and must be one of `scopes`.

    Missing or empty values take the record's defaults (topic '*'). Raises InvalidRow.
    """
    kwargs = {"email": _convert("email", values.get("email"), scopes, now)}
    for name in CONSENT_FIELDS:
        if name != "email" and name in values:
            kwargs[name] = _convert(name, values[name], scopes, now)
    return _record(kwargs, scopes)


class RowParser:
    """Parses the rows of one CSV import (fixed columns, one clock).

    Values that repeat from row to row (basis, source, statement, URL, dates) are converted
    once per import and remembered here, bounded; addresses are always converted.
    """

    MEMO_LIMIT = 65_536

    def __init__(self, columns: Sequence[str], *, scopes: Sequence[str], now: datetime | None) -> None:
        self.columns = tuple(columns)
        self.scopes = tuple(scopes)
        self.now = now
        self._memo: dict[str, dict[str, Any]] = {name: {} for name in self.columns if name != "email"}

    def parse(self, values: Sequence[str]) -> ConsentRecord:
        """`values` in column order (the caller has checked their count). Raises InvalidRow, also
        for a cell a spreadsheet would run as a formula (the file came from one, and goes back)."""
        kwargs: dict[str, Any] = {}
        memos, scopes, now = self._memo, self.scopes, self.now
        for name, raw in zip(self.columns, values):
            memo = memos.get(name)
            if memo is None:
                refuse_formula(name, raw)
                kwargs[name] = _convert(name, raw, scopes, now)
                continue
            try:
                kwargs[name] = memo[raw]
            except KeyError:
                refuse_formula(name, raw)  # only values that passed are remembered
                value = kwargs[name] = _convert(name, raw, scopes, now)
                if len(memo) < self.MEMO_LIMIT:
                    memo[raw] = value
        return _record(kwargs, scopes)
