"""Genuine feedback reports written by others (tests/corpus/feedback/arf, origins in SOURCES) sent
over SMTP to fbl@ from the feedback loop's network (docs/SPEC.md §16). The store holds deliveries that
match what each report names, as the relay would have recorded them; the reports are unchanged."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Clocked, RecordingUpstream, asend
from test_complaints import T0, clocked, relay_config  # noqa: F401 (fixture)

from policies.feedback_report import parse_feedback_report
from relay.config import load_config
from relay.store.records import DecisionRecord, DeliveryRecord

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
ARF = sorted((CORPUS / "feedback" / "arf").glob("*.eml")) + sorted((CORPUS / "arf").glob("*.eml"))
HASHED = "hashed@example.com"  # arf-25: the loop hashed the recipient and redacted the original

# file -> (complaints recorded, their status, the account paused at once by a spam-trap hit)
EXPECTED: dict[str, tuple[int, str, bool]] = {
    "sisimai-arf-02.eml": (1, "open", False),
    "sisimai-arf-11.eml": (1, "open", False),  # no recipient named: its Message-ID names one copy
    "sisimai-arf-12.eml": (1, "open", False),  # opt-out, Removal-Recipient, text/rfc822-header
    "sisimai-arf-14.eml": (1, "open", False),
    "sisimai-arf-15.eml": (1, "open", False),  # ReturnPath: report-type on a folded line
    "sisimai-arf-16.eml": (7, "open", False),  # seven Original-Rcpt-To: each recorded and suppressed
    "sisimai-arf-17.eml": (2, "open", True),  # abusix "Spamtraphit": two recipients, a trap hit
    "sisimai-arf-18.eml": (1, "informational", False),  # DMARC auth-failure: recorded, never counted
    "sisimai-arf-19.eml": (1, "informational", False),
    "sisimai-arf-20.eml": (1, "informational", False),
    "sisimai-arf-22.eml": (1, "open", False),  # Microsoft JMRP: multipart/mixed, X-HmXmrOriginalRecipient
    "rfc5965-b1-simple.eml": (1, "open", False),
    "rfc5965-b2-complete.eml": (1, "open", False),
}
# Refused with one clear line (and kept for review): what they name was never delivered by us.
REFUSED = {
    "sisimai-arf-01.eml": "cannot tell which recipient complained",  # no Message-ID, no recipient
    "sisimai-arf-25.eml": "names no recipient that the relay delivered to",
}


def test_the_corpus_has_every_report_accounted_for() -> None:
    assert {p.name for p in ARF} == set(EXPECTED) | set(REFUSED)
    assert len(ARF) >= 10


@pytest.fixture
async def relay(store_url: str, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream, clocked: Clocked) -> Any:
    config = load_config(relay_config(tmp_path, upstream, store_url, rate_min_complaints=100))
    return await start_relay(config, clock=clocked.clock())


async def deliver_what_it_names(relay: Any, raw: bytes, name: str) -> list[str]:
    """Delivery rows for the copies the report is about: its recipients, or one reader of its Message-ID."""
    report = parse_feedback_report(raw)
    message_id = report.original_message_id
    emails = [r for r in report.original_rcpt_to if r != HASHED] or ([f"reader.{name[:-4]}@example.net"] if message_id else [])
    if not emails:
        return []
    at = T0 - timedelta(hours=1)
    first = await relay.services.store.decisions.reserve_ids("deliveries", len(emails))
    await relay.services.store.decisions.record(
        [DecisionRecord("r-" + name, "delivered", at, message_id, "shop", "newsletter")],
        [
            DeliveryRecord(first + i, "r-" + name, "shop", "newsletter", email, "delivered", at, message_id, "shop", "*")
            for i, email in enumerate(emails)
        ],
    )
    return emails


@pytest.mark.parametrize("path", ARF, ids=[p.name for p in ARF])
async def test_a_genuine_report_by_smtp(relay: Any, upstream: RecordingUpstream, path: Path) -> None:
    raw = path.read_bytes()
    emails = await deliver_what_it_names(relay, raw, path.name)
    out = await asend(relay.smtp_port, raw, mail_from="", rcpts=["fbl@relay.test"], source="127.0.0.1")
    complaints = await relay.services.store.complaints.list()
    if path.name in REFUSED:
        assert out.code == 550 and out.text.startswith("5.6.0 Feedback report refused: "), out
        assert REFUSED[path.name] in out.text and "\n" not in out.text, out
        assert complaints == []
        (kept,) = await relay.services.store.complaints.list_rejected(with_report=True)
        assert kept.report.replace(b"\r\n", b"\n").rstrip() == raw.replace(b"\r\n", b"\n").rstrip()
        return
    count, status, paused = EXPECTED[path.name]
    assert out.code == 250 and out.text.startswith("2.0.0 Complaint "), out
    assert (f"and {count - 1} more recipient(s)" in out.text) is (count > 1), out
    assert len(complaints) == count and {c.status for c in complaints} == {status}
    assert sorted(c.email for c in complaints) == sorted(emails)
    assert all(c.verified for c in complaints)
    suppressed = await relay.services.store.consent.find_suppressions(["shop"], emails)
    expect = {"suppression.complaint"} if status == "open" else set()
    assert {e: {s.reason for s in suppressed.get(e, [])} for e in emails} == {e: expect for e in emails}
    assert ((await relay.services.store.accounts.get("shop")).state == "paused") is paused


@pytest.mark.parametrize("what", ["garbage", "huge", "zip bomb"])
async def test_bad_reports_get_one_clear_line_and_are_kept(relay: Any, what: str) -> None:
    import base64
    import io
    import zipfile

    if what == "garbage":
        raw = bytes(range(1, 256)) * 40  # NUL is refused at DATA by the SMTP layer itself
    elif what == "huge":
        raw = (b"Subject: x\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n"
               + b"--b\r\nContent-Type: message/feedback-report\r\n\r\n" * 100_000)
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("report.eml", b"\0" * 50_000_000)
        raw = (b"Subject: abuse report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n"
               b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(buffer.getvalue()) + b"\r\n--z--\r\n")
    out = await asend(relay.smtp_port, raw, mail_from="", rcpts=["fbl@relay.test"], source="127.0.0.2")
    assert out.code == 550 and out.text.startswith("5.6.0 Feedback report refused: ") and "\n" not in out.text, out
    assert len(await relay.services.store.complaints.list_rejected()) == 1
    again = await asend(relay.smtp_port, b"Subject: x\r\n\r\nx\r\n", mail_from="", rcpts=["fbl@relay.test"])
    assert again.code == 550  # still serving
