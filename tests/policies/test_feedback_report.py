"""ARF (RFC 5965) parsing: the RFC's own examples, abuse and not-spam, full message and headers
only, malformed reports with their reasons, and no crash on any input."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.feedback_report import MalformedReport, parse_feedback_report

ARF = Path(__file__).resolve().parent.parent / "corpus" / "arf"
BOUNDARY = "arf_boundary_42"


def report(
    *,
    fields: str = "Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/2.1\r\nVersion: 1\r\n",
    original: str = "From: Shop <news@shop.example>\r\nTo: <anna@example.nl>\r\nSubject: Zomer\r\n"
    "Message-ID: <m1@shop.example>\r\n\r\nHallo\r\n",
    original_type: str = "message/rfc822",
    content_type: str = f'multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"',
    feedback_headers: str = "Content-Type: message/feedback-report\r\n",
) -> bytes:
    """A report as a mailbox provider's feedback loop sends it (CRLF line ends)."""
    return (
        "From: fbl@isp.example\r\nTo: fbl@relay.test\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
        "This is a multi-part message in MIME format.\r\n"
        f"--{BOUNDARY}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nA user clicked 'this is spam'.\r\n"
        f"--{BOUNDARY}\r\n{feedback_headers}\r\n{fields}\r\n"
        f"--{BOUNDARY}\r\nContent-Type: {original_type}\r\n\r\n{original}\r\n"
        f"--{BOUNDARY}--\r\n"
    ).encode("utf-8")


def test_rfc5965_appendix_b1_simple_report() -> None:
    parsed = parse_feedback_report((ARF / "rfc5965-b1-simple.eml").read_bytes())
    assert parsed.feedback_type == "abuse" and parsed.is_complaint
    assert parsed.user_agent == "SomeGenerator/1.0" and parsed.version == "1"
    assert parsed.full_message
    # The RFC's sample Message-ID has no angle brackets; it is kept as written.
    assert parsed.original_message_id == "8787KJKJ3K4J3K4J3K4J3.mail@example.net"
    assert parsed.original_header("Subject") == "Earn money"
    assert parsed.original_rcpt_to == () and parsed.arrival_date is None
    assert parsed.description.startswith("This is an email abuse report")


def test_rfc5965_appendix_b2_complete_report() -> None:
    parsed = parse_feedback_report((ARF / "rfc5965-b2-complete.eml").read_bytes())
    assert parsed.feedback_type == "abuse"
    assert parsed.original_mail_from == "somespammer@example.net"
    assert parsed.original_rcpt_to == ("user@example.com",)
    assert parsed.arrival_date == datetime(2005, 3, 8, 18, 0, tzinfo=timezone.utc)  # 14:00 EDT
    assert parsed.source_ip == "192.0.2.1"
    assert parsed.reported_domains == ("example.net",)
    # A folded field is unfolded; repeated fields are all kept in order.
    assert parsed.field("Authentication-Results") == "mail.example.com; spf=fail smtp.mail=somespammer@example.com"
    assert [v for k, v in parsed.fields if k == "Reported-Uri"] == [
        "http://example.net/earn_money.html",
        "mailto:user@example.com",
    ]
    received = parsed.original_header("Received")
    assert received.startswith("from mailserver.example.net") and received.endswith("-0400")


def test_rfc5965_examples_parse_with_lf_and_crlf_line_ends() -> None:
    text = (ARF / "rfc5965-b2-complete.eml").read_bytes()
    crlf = text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert parse_feedback_report(crlf) == parse_feedback_report(text)


def test_abuse_report_with_the_full_message() -> None:
    parsed = parse_feedback_report(
        report(
            fields="Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/2.1\r\nVersion: 1\r\n"
            "Original-Rcpt-To: <Anna@Example.NL>\r\nArrival-Date: Sun, 15 Mar 2026 11:59:00 +0100\r\n"
        )
    )
    assert parsed.feedback_type == "abuse" and parsed.is_complaint and parsed.full_message
    assert parsed.original_rcpt_to == ("anna@example.nl",)  # normalised as the store compares
    assert parsed.arrival_date == datetime(2026, 3, 15, 10, 59, tzinfo=timezone.utc)
    assert parsed.original_message_id == "<m1@shop.example>"
    assert parsed.original_header("from") == "Shop <news@shop.example>"


def test_not_spam_report_with_headers_only() -> None:
    parsed = parse_feedback_report(
        report(
            fields="Feedback-Type: not-spam\r\nUser-Agent: ExampleFBL/2.1\r\nVersion: 1\r\n",
            original="From: Shop <news@shop.example>\r\nMessage-ID: <m2@shop.example>\r\n",
            original_type="text/rfc822-headers",
        )
    )
    assert parsed.feedback_type == "not-spam" and not parsed.is_complaint
    assert not parsed.full_message
    assert parsed.original_message_id == "<m2@shop.example>"


def test_feedback_part_in_base64_and_case_insensitive_names() -> None:
    fields = base64.b64encode(b"feedback-type: Fraud\r\nuser-agent: X/1\r\nversion: 1\r\n").decode()
    parsed = parse_feedback_report(
        report(
            fields=fields,
            feedback_headers="Content-Type: Message/Feedback-Report\r\nContent-Transfer-Encoding: base64\r\n",
            content_type=f"Multipart/Report; Report-Type=Feedback-Report; boundary={BOUNDARY}",
        )
    )
    assert parsed.feedback_type == "fraud" and parsed.user_agent == "X/1"


def test_missing_user_agent_and_version_are_tolerated() -> None:
    # RFC 5965 requires both, but some feedback loops omit them; the report is still usable.
    parsed = parse_feedback_report(report(fields="Feedback-Type: abuse\r\n"))
    assert parsed.user_agent == "" and parsed.version == ""


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty report"),
        (b"   \r\n", "empty report"),
        (b"From: a@b.example\r\nSubject: hi\r\n\r\nplain mail\r\n", "no Content-Type header"),
        (report(content_type="text/plain"), "Content-Type is text/plain, expected multipart/report"),
        (
            report(content_type=f"multipart/report; report-type=delivery-status; boundary={BOUNDARY}"),
            "report-type is delivery-status, expected feedback-report",
        ),
        (report(content_type="multipart/report; report-type=feedback-report"), "without a boundary"),
        (
            report(content_type='multipart/report; report-type=feedback-report; boundary="other"'),
            "no body part delimited by the boundary",
        ),
        (report(feedback_headers="Content-Type: text/plain\r\n"), "no message/feedback-report part"),
        (report(fields="User-Agent: X/1\r\nVersion: 1\r\n"), "lacks the required Feedback-Type field"),
        (
            report(fields="Feedback-Type: abuse\r\nFeedback-Type: fraud\r\n"),
            "more than one Feedback-Type field",
        ),
        (report(fields="Feedback-Type: this is spam!\r\n"), "is not a feedback type token"),
        (report(fields="Feedback-Type: abuse\r\nthis line is no field\r\n"), "is not a 'Name: value' field"),
        (report(original_type="application/octet-stream"), "no original message"),
        (report(original=""), "the original message part has no header fields"),
        (
            report(feedback_headers="Content-Type: message/feedback-report\r\nContent-Transfer-Encoding: base64\r\n"),
            "invalid base64",
        ),
    ],
)
def test_malformed_reports_are_refused_with_a_clear_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedReport) as info:
        parse_feedback_report(raw)
    assert reason in info.value.reason


def test_oversized_report_is_refused() -> None:
    with pytest.raises(MalformedReport, match="more than the limit"):
        parse_feedback_report(report(), max_bytes=100)


def test_two_feedback_parts_are_refused() -> None:
    raw = report().replace(
        f"--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\r\n--{BOUNDARY}--".encode(),
    )
    with pytest.raises(MalformedReport, match="more than one message/feedback-report part"):
        parse_feedback_report(raw)


_LINES = st.sampled_from(
    [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"',
        "Content-Type: multipart/report; report-type=feedback-report; boundary=",
        "Content-Type: message/feedback-report",
        "Content-Type: message/rfc822",
        "Content-Type: text/rfc822-headers",
        "Content-Transfer-Encoding: base64",
        "Content-Transfer-Encoding: quoted-printable",
        "Feedback-Type: abuse",
        "Feedback-Type: not-spam",
        "Original-Rcpt-To: <@>",
        "Arrival-Date: Mon, 99 Foo 2026 99:99:99 +9999",
        "Message-ID: <x@y>",
        f"--{BOUNDARY}",
        f"--{BOUNDARY}--",
        " folded continuation",
        "",
        "=?utf-8?q?=E2=82=AC?=",
        "QUJD==",
        "\x00\x7f\u00e9",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINES | st.text(max_size=40), max_size=40), st.sampled_from(["\r\n", "\n"]))
def test_structured_garbage_never_crashes(lines: list[str], newline: str) -> None:
    raw = newline.join(lines).encode("utf-8", "surrogatepass")
    try:
        parsed = parse_feedback_report(raw)
    except MalformedReport as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert parsed.feedback_type


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(raw: bytes) -> None:
    try:
        parse_feedback_report(raw)
    except MalformedReport as exc:
        assert exc.reason


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.binary(max_size=20))
def test_damaged_real_report_never_crashes(cut: int, junk: bytes) -> None:
    raw = (ARF / "rfc5965-b2-complete.eml").read_bytes()
    try:
        parse_feedback_report(raw[:cut] + junk + raw[cut + len(junk) :])
    except MalformedReport as exc:
        assert exc.reason


def test_multipart_report_without_report_type_is_read_by_its_feedback_part() -> None:
    # docs/SPEC.md §16: some loops leave report-type out; the message/feedback-report part says what it is
    parsed = parse_feedback_report(report(content_type=f"multipart/report; boundary={BOUNDARY}"))
    assert parsed.feedback_type == "abuse"


def test_an_absent_original_is_read_when_the_report_names_its_recipient() -> None:
    # docs/SPEC.md §16: redacted or absent originals, matched by Original-Rcpt-To / Removal-Recipient
    raw = report(original_type="application/octet-stream", fields="Feedback-Type: abuse\r\nRemoval-Recipient: rfc822; Who@Example.net\r\n")
    parsed = parse_feedback_report(raw)
    assert parsed.original_rcpt_to == ("who@example.net",) and parsed.original_headers == ()
