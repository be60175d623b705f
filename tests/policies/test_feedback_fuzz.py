"""Fuzzing the feedback-loop parsers (docs/SPEC.md §15, §16): whatever bytes arrive at fbl@ or bounce+ID@,
parse_feedback_report and parse_dsn answer with a report or their own Malformed* error, never
anything else, and the genuine corpus mutated byte by byte does not change that."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.dsn import DsnReport, MalformedDsn, parse_dsn
from policies.feedback_report import FeedbackReport, MalformedReport, parse_feedback_report

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "feedback"
SAMPLES = [p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))]

BITS = st.sampled_from([
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/feedback-report\r\n",
    b"Content-Type: message/delivery-status\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/rfc822-header\r\n", b"Content-Transfer-Encoding: base64\r\n", b"\r\n", b"--b\r\n",
    b"--b--\r\n", b"Feedback-Type: abuse\r\n", b"Original-Rcpt-To: <a@b.example>\r\n", b"Action: failed\r\n",
    b"Status: 5.1.1\r\n", b"Final-Recipient: rfc822; a@b.example\r\n", b"Removal-Recipient: x\r\n",
    b"Subject: spam trap\r\n", b"X-HmXmrOriginalRecipient: a@b.example\r\n", b" folded\r\n", b"\x00\xff", b"=?utf-8?b?",
])


def _check(raw: bytes) -> None:
    try:
        assert isinstance(parse_feedback_report(raw), FeedbackReport)
    except MalformedReport as exc:
        assert exc.reason and "\n" not in exc.reason
    try:
        assert isinstance(parse_dsn(raw), DsnReport)
    except MalformedDsn as exc:
        assert exc.reason and "\n" not in exc.reason


@FUZZ
@given(st.binary(max_size=4000))
def test_any_bytes(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(st.lists(BITS, max_size=60).map(b"".join))
def test_report_shaped_bytes(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 20_000), st.binary(max_size=8)), max_size=8))
def test_the_genuine_corpus_mutated(sample: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(sample)
    for at, data in edits:
        at %= max(1, len(raw))
        raw[at:at + len(data)] = data
    _check(bytes(raw))


def test_deep_nesting_and_huge_input_are_refused_cleanly() -> None:
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(3000))
    _check(b"Subject: x\r\n" + nested)
    huge = b"Subject: x\r\n\r\n" + b"x" * (26 * 1024 * 1024)
    try:
        parse_dsn(huge)
    except MalformedDsn as exc:
        assert "more than the limit" in exc.reason
    else:
        raise AssertionError("a 26 MB DSN was parsed")
