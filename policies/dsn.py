"""Delivery status notifications (docs/SPEC.md §15): RFC 3464 reports read field by field, the common
non-standard bounce formats of large MTAs through flufl.bounce (GNU Mailman's detectors), and
what a recipient's status means for the list: hard, an other permanent failure, or soft.
Pure parsing and classification; anything unreadable raises MalformedDsn(reason)."""

from __future__ import annotations

import email
import itertools
import re
from dataclasses import dataclass

from policies import mime
from policies.addresses import InvalidAddress, normalize_address

__all__ = ["DeliveryStatus", "DsnReport", "MalformedDsn", "classify", "parse_dsn", "MAX_DSN_BYTES", "HARD", "FAILED", "SOFT"]

MAX_DSN_BYTES = 10 * 1024 * 1024
HARD, FAILED, SOFT = "hard", "failed", "soft"  # failed: permanent, but not (yet) a dead mailbox

# The mailbox does not exist (or never will): 5.1.1 bad mailbox, 5.1.2 bad system, 5.1.10 null MX,
# 5.2.1 mailbox disabled (RFC 3463, RFC 7505).
_HARD_STATUS = re.compile(r"5\.(?:1\.(?:1|2|10)|2\.1)")
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# What MTAs without enhanced codes say about a mailbox that does not exist.
_NO_MAILBOX = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient)|mailbox (?:does not exist|not found|unavailable)"
    r"|does not exist|unknown (?:local[- ]part|recipient)|recipient (?:address )?rejected|invalid (?:recipient|mailbox)"
    r"|account (?:is )?(?:disabled|closed|deactivated)|no mailbox here",
    re.IGNORECASE,
)
_MAX_TEXT = 200_000
_MAX_PARTS = 200


class MalformedDsn(ValueError):
    """The bytes are not a readable bounce; `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DeliveryStatus:
    """One recipient's fate as the report states it."""

    address: str  # normalised Final-Recipient (or the address a non-standard bounce names); "" unknown
    action: str = ""  # failed | delayed | delivered | relayed | expanded (RFC 3464); "" when not said
    status: str = ""  # enhanced status code, "5.1.1"
    diagnostic: str = ""  # the remote MTA's words, one line

    @property
    def kind(self) -> str:
        return classify(self.action, self.status, self.diagnostic)


@dataclass(frozen=True)
class DsnReport:
    recipients: tuple[DeliveryStatus, ...]
    standard: bool  # RFC 3464 multipart/report; report-type=delivery-status
    subject: str = ""

    def for_recipient(self, address: str) -> DeliveryStatus | None:
        """The status about `address`, else the only failed or delayed one (forwarded mailboxes
        report their final address, not ours)."""
        wanted = address.lower()
        exact = next((r for r in self.recipients if r.address == wanted), None)
        if exact is not None:
            return exact
        failing = [r for r in self.recipients if r.action in ("failed", "delayed") or r.status[:1] in ("4", "5")]
        return failing[0] if len(failing) == 1 else None


def classify(action: str, status: str, diagnostic: str = "") -> str:
    action = action.lower()
    if action == "delayed" or status.startswith("4"):
        return SOFT
    if status.startswith("5") or action == "failed":
        if _HARD_STATUS.fullmatch(status):
            return HARD
        if not status and _NO_MAILBOX.search(diagnostic):
            return HARD
        return FAILED
    return SOFT if action else ""


def parse_dsn(raw: bytes, *, max_bytes: int = MAX_DSN_BYTES) -> DsnReport:
    """Total: a DsnReport (perhaps with no recipients) or MalformedDsn."""
    if not isinstance(raw, (bytes, bytearray)):
        raise MalformedDsn("a DSN must be bytes")
    if not raw.strip():
        raise MalformedDsn("empty message")
    if len(raw) > max_bytes:
        raise MalformedDsn(f"message is {len(raw)} bytes, more than the limit of {max_bytes}")
    raw = bytes(raw)
    try:
        head = mime.read_head(raw)
        if not any(f.name for f in head.fields):
            raise MalformedDsn("no header fields: not a mail message")
        parts = list(itertools.islice(mime.walk(raw), _MAX_PARTS))
        standard = _standard(parts)
        recipients = standard if standard else _non_standard(raw, parts)
        subject = mime.as_text(head.value(raw, "subject") or "")[:300]
    except MalformedDsn:
        raise
    except (RecursionError, ValueError, IndexError, TypeError, LookupError, AttributeError, UnicodeError) as exc:
        raise MalformedDsn(f"unreadable message ({type(exc).__name__})") from exc
    return DsnReport(tuple(recipients), bool(standard), subject)


def _blocks(data: bytes) -> list[dict[str, str]]:
    """The groups of fields of a message/delivery-status body, each ended by an empty line."""
    blocks = []
    pos = 0
    while pos < len(data):
        while data.startswith((b"\r\n", b"\n"), pos):
            pos += 2 if data[pos] == 0x0D else 1
        if pos >= len(data):
            break
        head = mime.read_head(data, pos)
        fields: dict[str, str] = {}
        for name, value in head.values(data):
            fields.setdefault(name.decode("ascii").lower(), mime.as_text(value))
        blocks.append(fields)
        pos = max(head.body_start, pos + 1)
    return blocks


def _standard(parts: list[mime.Part]) -> list[DeliveryStatus]:
    """RFC 3464: the per-recipient blocks of the message/delivery-status part."""
    for part in parts:
        if part.content_type != "message/delivery-status":
            continue
        out = []
        for block in _blocks(part.decoded())[1:]:  # the first block is about the message, the others about recipients
            address = _address(block.get("final-recipient", "") or block.get("original-recipient", ""))
            status = _STATUS.search(block.get("status", ""))
            if not address and not status and not block.get("action"):
                continue
            out.append(
                DeliveryStatus(
                    address=address,
                    action=block.get("action", "").strip().lower()[:20],
                    status=".".join(status.groups()) if status else "",
                    diagnostic=_one_line(block.get("diagnostic-code", "")),
                )
            )
        if out:
            return out
    return []


def _non_standard(raw: bytes, parts: list[mime.Part]) -> list[DeliveryStatus]:
    """The detectors of flufl.bounce (Mailman's) find the address; the text around says how bad."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(email.message_from_bytes(raw))
    except Exception:  # noqa: BLE001 - a third-party detector choking on hostile input finds nothing
        temporary, permanent = set(), set()
    text = _text(parts)
    out = []
    for found, kind in ((permanent, "failed"), (temporary, "delayed")):
        for value in sorted(found):
            address = _address(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
            if not address:
                continue
            status, diagnostic = _status_near(text, address)
            out.append(DeliveryStatus(address, kind, status, diagnostic))
    return out


def _status_near(text: str, address: str) -> tuple[str, str]:
    """An enhanced status code and the line it is on, nearest after the address (else anywhere)."""
    at = text.lower().find(address.split("@")[0].lower())
    window = text[at:at + 2000] if at >= 0 else text
    for chunk in (window, text):
        found = _STATUS.search(chunk)
        if found:
            line = chunk[chunk.rfind("\n", 0, found.start()) + 1:].split("\n", 1)[0]
            return ".".join(found.groups()), _one_line(line)
    line = next((ln for ln in window.splitlines() if _NO_MAILBOX.search(ln)), "")
    return "", _one_line(line)


def _text(parts: list[mime.Part]) -> str:
    chunks = []
    size = 0
    for part in parts:
        if not part.content_type.startswith("text/"):
            continue
        chunk = part.decoded()[: _MAX_TEXT - size].decode("utf-8", "replace")
        chunks.append(chunk)
        size += len(chunk)
        if size >= _MAX_TEXT:
            break
    return "\n".join(chunks)


def _address(value: str) -> str:
    value = value.strip()
    value = re.sub(r"^\s*[A-Za-z0-9-]+\s*;", "", value)  # address-type ("rfc822;")
    value = value.strip().strip("<>").strip()
    try:
        return normalize_address(value)
    except InvalidAddress:
        return ""


def _one_line(value: str) -> str:
    return re.sub(r"\s+", " ", value).strip()[:500]
