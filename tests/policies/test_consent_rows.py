"""Row -> ConsentRecord parsing: defaults, booleans, dates, enums, and refusals naming the column."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from policies.consent_rows import CONSENT_FIELDS, InvalidHeader, InvalidRow, check_header, parse_consent_row

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
SCOPES = ("shop", "holding")


def parse(**values: object):
    return parse_consent_row({"email": "Anna@Example.NL", **values}, scopes=SCOPES, now=NOW)


def test_defaults_scope_account_topic_star() -> None:
    record = parse()
    assert (record.email, record.scope, record.topic) == ("anna@example.nl", "shop", "*")
    assert record.basis == "opt_in" and record.source == "signup_form"


def test_address_normalised_idna_and_plus_tag_kept() -> None:
    assert parse(email="Jan+News@BÜcher.Example").email == "jan+news@xn--bcher-kva.example"


def test_parent_scope_allowed_other_refused() -> None:
    assert parse(scope="holding").scope == "holding"
    with pytest.raises(InvalidRow) as exc:
        parse(scope="othershop")
    assert exc.value.column == "scope"


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False), ("", False)])
def test_booleans(text: str, value: bool) -> None:
    assert parse(prechecked=text).prechecked is value


def test_bad_boolean_names_column() -> None:
    with pytest.raises(InvalidRow) as exc:
        parse(objection_offered="maybe")
    assert exc.value.column == "objection_offered" and "objection_offered" in exc.value.detail


def test_dates_naive_is_utc_date_only_and_offsets() -> None:
    record = parse(collected_at="2025-01-02", confirmed_at="2025-01-02T10:00:00+01:00", last_purchase_at="2025-01-03T08:00:00")
    assert record.collected_at == datetime(2025, 1, 2, tzinfo=timezone.utc)
    assert record.confirmed_at == datetime(2025, 1, 2, 9, 0, tzinfo=timezone.utc)
    assert record.last_purchase_at == datetime(2025, 1, 3, 8, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("bad", ["02-01-2025", "2025-13-01", "yesterday", "2025-02-30"])
def test_bad_date_refused_naming_column(bad: str) -> None:
    with pytest.raises(InvalidRow) as exc:
        parse(collected_at=bad)
    assert exc.value.column == "collected_at"
    assert "collected_at" in exc.value.detail and "ISO-8601" in exc.value.detail


def test_future_date_refused() -> None:
    with pytest.raises(InvalidRow) as exc:
        parse(collected_at="2027-01-01")
    assert "future" in exc.value.detail


@pytest.mark.parametrize("bad", ["not-an-address", "a@", "@b.nl", "a b@c.nl", "x\x00@y.nl", ""])
def test_bad_address_refused(bad: str) -> None:
    with pytest.raises(InvalidRow) as exc:
        parse(email=bad)
    assert exc.value.column == "email"


@pytest.mark.parametrize(("column", "bad"), [("basis", "maybe"), ("source", "bought"), ("source_ip", "999.1.1.1"), ("source_url", "ftp://x"), ("topic", "two words")])
def test_bad_values_refused(column: str, bad: str) -> None:
    with pytest.raises(InvalidRow) as exc:
        parse(**{column: bad})
    assert exc.value.column == column


def test_enums_case_insensitive_and_ip_compressed() -> None:
    record = parse(basis="Double_Opt_In", source="SIGNUP_FORM", source_ip="2001:db8:0:0::1")
    assert (record.basis, record.source, record.source_ip) == ("double_opt_in", "signup_form", "2001:db8::1")


def test_json_values_accepted() -> None:
    record = parse(prechecked=True, frequency_disclosed=1)
    assert record.prechecked and record.frequency_disclosed
    with pytest.raises(InvalidRow):
        parse(statement_text=5)


def test_header_checks() -> None:
    assert check_header(["\ufeffemail".lstrip("\ufeff"), " Topic "]) == ("email", "topic")
    assert set(CONSENT_FIELDS) >= {"email", "scope", "topic", "revoked_via", "updated_at"}
    with pytest.raises(InvalidHeader, match="colour"):
        check_header(["email", "colour"])
    with pytest.raises(InvalidHeader, match="email"):
        check_header(["topic"])
    with pytest.raises(InvalidHeader, match="duplicate"):
        check_header(["email", "email"])
    with pytest.raises(InvalidHeader, match="unknown"):
        check_header(["email", "id"])


def test_revoked_via_without_revoked_at() -> None:
    with pytest.raises(InvalidRow) as exc:
        parse(revoked_via="admin")
    assert exc.value.column == "revoked_at"
