"""Feedback reports in ARF (RFC 5965): a multipart/report with a message/feedback-report part and
the original message or its headers. Pure parsing; anything else raises MalformedReport(reason)."""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from policies import mime
from policies.addresses import InvalidAddress, normalize_address

__all__ = ["FeedbackReport", "MalformedReport", "parse_feedback_report", "NON_COMPLAINT_TYPES", "MAX_REPORT_BYTES"]

# Reports about mail the recipient wants (not-spam, RFC 6430) or about authentication (RFC 6591)
# are recorded but are not a recipient's complaint: no suppression, no count towards the rate.
NON_COMPLAINT_TYPES = frozenset({"not-spam", "auth-failure"})
MAX_REPORT_BYTES = 25 * 1024 * 1024

_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# text/rfc822-header (no s) is not registered, but several feedback loops send it.
_ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "text/rfc822-header", "message/rfc822-headers")
_RECIPIENT_FIELDS = ("original-rcpt-to", "removal-recipient")
_MAX_DESCRIPTION = 2000
# How trap networks (abusix-style) mark a report as a spam-trap hit: in the subject, a header name,
# or the Received trail of the original ("spamtrap.example" hosts).
_TRAP_WORDS = re.compile(r"spam[\s_.-]?trap|honey[\s_.-]?pot|trap[\s_.-]?hit", re.IGNORECASE)
_TRAP_HEADER = re.compile(r"^x-[a-z0-9-]*trap[a-z0-9-]*$", re.IGNORECASE)


class MalformedReport(ValueError):
    """The bytes are not a usable feedback report; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FeedbackReport:
    feedback_type: str  # lower-case: abuse, fraud, virus, other, not-spam, auth-failure, …
    user_agent: str = ""
    version: str = ""
    original_mail_from: str = ""
    original_rcpt_to: tuple[str, ...] = ()  # normalised addresses that parsed
    arrival_date: datetime | None = None
    reported_domains: tuple[str, ...] = ()
    source_ip: str = ""
    fields: tuple[tuple[str, str], ...] = ()  # every field of the machine-readable part, in order
    original_headers: tuple[tuple[str, str], ...] = ()  # unfolded header fields of the original
    full_message: bool = False  # message/rfc822 (True) or only text/rfc822-headers (False)
    description: str = ""  # the human-readable first part, truncated
    subject: str = ""  # the report's own Subject
    spam_trap: bool = False  # the report says it is about a spam-trap hit (subject, trap header, Received trail)

    @property
    def is_complaint(self) -> bool:
        return self.feedback_type not in NON_COMPLAINT_TYPES

    def field(self, name: str) -> str:
        wanted = name.lower()
        return next((v for k, v in self.fields if k.lower() == wanted), "")

    def original_header(self, name: str) -> str:
        wanted = name.lower()
        return next((v for k, v in self.original_headers if k.lower() == wanted), "")

    def original_header_all(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(v for k, v in self.original_headers if k.lower() == wanted)

    @property
    def original_message_id(self) -> str:
        return self.original_header("Message-ID").strip()


@dataclass(frozen=True)
class _Part:
    headers: tuple[tuple[str, str], ...]
    body: bytes
    body_start: int

    def header(self, name: str) -> str:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), "")

    @property
    def content_type(self) -> str:
        return mime.parse_params(self.header("Content-Type"))[0] or "text/plain"


def parse_feedback_report(raw: bytes, *, max_bytes: int = MAX_REPORT_BYTES) -> FeedbackReport:
    """Parse one ARF report. Total: returns a FeedbackReport or raises MalformedReport."""
    if not isinstance(raw, (bytes, bytearray)):
        raise MalformedReport("a feedback report must be bytes")
    if not raw.strip():
        raise MalformedReport("empty report")
    if len(raw) > max_bytes:
        raise MalformedReport(f"report is {len(raw)} bytes, more than the limit of {max_bytes}")
    try:
        return _parse(bytes(raw))
    except MalformedReport:
        raise
    except (ValueError, IndexError, TypeError, LookupError, binascii.Error) as exc:
        # A parser corner we did not foresee is still a refused report, never a crash.
        raise MalformedReport(f"unparseable report ({type(exc).__name__})") from exc


def _parse(raw: bytes) -> FeedbackReport:
    top = _entity(raw, 0, len(raw))
    content_type = top.header("Content-Type")
    media, params = mime.parse_params(content_type)
    if not media:
        raise MalformedReport("no Content-Type header: not a MIME multipart/report")
    if not media.startswith("multipart/"):
        raise MalformedReport(f"Content-Type is {media}, expected multipart/report")
    report_type = (mime.param(params, "report-type") or "").lower()
    if media == "multipart/report" and report_type not in ("feedback-report", ""):
        # A missing report-type is let through: its message/feedback-report part decides below.
        raise MalformedReport(f"report-type is {report_type}, expected feedback-report")
    boundary = mime.param(params, "boundary")
    if not boundary:
        raise MalformedReport(f"{media} without a boundary parameter")
    spans = mime.split_multipart(raw, top.body_start, len(raw), boundary.encode("latin-1"))
    if not spans:
        raise MalformedReport(f"no body part delimited by the boundary {boundary[:70]!r}")
    parts = [_entity(raw, start, end) for start, end in spans]
    feedback = [p for p in parts if p.content_type == "message/feedback-report"]
    if len(feedback) > 1:
        raise MalformedReport("more than one message/feedback-report part")
    original = next((p for p in parts if p.content_type in _ORIGINAL_TYPES), None)
    original_headers = _original_headers(_decoded(original)) if original is not None else []
    if feedback:
        fields = _parse_fields(_decoded(feedback[0]).decode("utf-8", "replace"))
    elif media == "multipart/mixed" and original_headers:
        # Microsoft JMRP style: no machine-readable part, the reported message attached; every such
        # report is a recipient's "junk" click.
        fields = [("Feedback-Type", "abuse"), ("User-Agent", "JMRP")]
        fields += [("Original-Rcpt-To", v) for k, v in original_headers if k.lower() == "x-hmxmroriginalrecipient"]
    elif media == "multipart/mixed":
        raise MalformedReport("a multipart/mixed report (JMRP style) needs the reported message attached")
    else:
        raise MalformedReport("no message/feedback-report part")
    names_recipient = any(k.lower() in _RECIPIENT_FIELDS for k, _ in fields)
    if original is None and not names_recipient:
        raise MalformedReport(
            "no original message (message/rfc822) or headers (text/rfc822-headers) part, and no "
            "Original-Rcpt-To or Removal-Recipient field"
        )
    if original is not None and not original_headers and not names_recipient:
        raise MalformedReport("the original message part has no header fields")
    first = parts[0] if parts and parts[0].content_type.startswith("text/plain") else None
    description = _decoded(first).decode("utf-8", "replace").replace("\r\n", "\n").strip() if first else ""
    subject = top.header("Subject")
    return _report(
        fields, original_headers, original is not None and original.content_type == "message/rfc822", description,
        subject=subject, spam_trap=_says_spam_trap(subject, top.headers, fields, original_headers),
    )


def _says_spam_trap(
    subject: str,
    report_headers: tuple[tuple[str, str], ...],
    fields: list[tuple[str, str]],
    original: list[tuple[str, str]],
) -> bool:
    if _TRAP_WORDS.search(subject):
        return True
    for name, value in (*report_headers, *fields, *original):
        if _TRAP_HEADER.match(name):
            return True
        if name.lower() == "received" and _TRAP_WORDS.search(value):
            return True
    return False


def _report(
    fields: list[tuple[str, str]],
    original: list[tuple[str, str]],
    full: bool,
    description: str,
    *,
    subject: str = "",
    spam_trap: bool = False,
) -> FeedbackReport:
    def values(name: str) -> list[str]:
        return [v for k, v in fields if k.lower() == name]

    types = values("feedback-type")
    if not types:
        raise MalformedReport("the feedback report lacks the required Feedback-Type field")
    if len(types) > 1:
        raise MalformedReport("the feedback report has more than one Feedback-Type field")
    feedback_type = types[0].strip().lower()
    if not _TOKEN.fullmatch(feedback_type):
        raise MalformedReport(f"Feedback-Type {types[0].strip()[:60]!r} is not a feedback type token")
    versions = values("version")
    if len(versions) > 1:
        raise MalformedReport("the feedback report has more than one Version field")
    arrival = next(iter(values("arrival-date") or values("received-date")), "")
    recipients = [a for a in (_address(v) for v in values("original-rcpt-to") + values("removal-recipient")) if a]
    return FeedbackReport(
        feedback_type=feedback_type,
        user_agent=next(iter(values("user-agent")), "").strip(),
        version=versions[0].strip() if versions else "",
        original_mail_from=_bare(next(iter(values("original-mail-from")), "")),
        original_rcpt_to=tuple(dict.fromkeys(recipients)),
        arrival_date=_date(arrival),
        reported_domains=tuple(v.strip().lower() for v in values("reported-domain") if v.strip()),
        source_ip=next(iter(values("source-ip")), "").strip(),
        fields=tuple(fields),
        original_headers=tuple(original),
        full_message=full,
        description=description[:_MAX_DESCRIPTION],
        subject=subject[:300],
        spam_trap=spam_trap,
    )


# --- MIME: policies.mime's reading, the one the rules and the relay's rewriter use ------------------


def _entity(buf: bytes, start: int, end: int) -> _Part:
    """Header fields and body of one entity; no empty line means headers only."""
    head = mime.read_head(buf, start, end)
    fields = tuple((name.decode("ascii"), mime.as_text(value)) for name, value in head.values(buf))
    return _Part(fields, buf[head.body_start : end], head.body_start)


def _decoded(part: _Part) -> bytes:
    encoding = part.header("Content-Transfer-Encoding").strip().lower()
    try:
        return mime.transfer_decode(part.body, encoding, strict=True)
    except ValueError:
        raise MalformedReport(f"a {part.content_type} part has invalid base64") from None


def _unfold(text: str) -> list[tuple[str, str]]:
    """The report's fields with continuation lines joined; a line that is not a field is refused."""
    out: list[tuple[str, str]] = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if line[0] in " \t":
            if not out:
                raise MalformedReport(f"line {number} of the feedback report continues no field")
            name, value = out[-1]
            out[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise MalformedReport(f"line {number} of the feedback report is not a 'Name: value' field")
        out.append((name, value.strip()))
    return out


def _parse_fields(text: str) -> list[tuple[str, str]]:
    # The fields end at the first blank line; anything after it is not part of the report.
    block = re.split(r"\r?\n[ \t]*\r?\n", text.lstrip("\r\n"), maxsplit=1)[0]
    return _unfold(block)


def _original_headers(data: bytes) -> list[tuple[str, str]]:
    data = data.lstrip(b"\r\n")
    return list(_entity(data, 0, len(data)).headers)


def _bare(value: str) -> str:
    return value.strip().strip("<>").strip()


def _address(value: str) -> str | None:
    value = re.sub(r"^\s*rfc822\s*;", "", value, flags=re.IGNORECASE)  # the DSN address-type prefix some send
    try:
        return normalize_address(_bare(value))
    except InvalidAddress:
        return None


def _date(value: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
