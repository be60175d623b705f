"""Delivery status notifications (docs/SPEC.md §15): RFC 3464 reports read field by field, the common
non-standard bounce formats of large MTAs through flufl.bounce (GNU Mailman's detectors), and
what a recipient's status means for the list: hard, an other permanent failure, or soft.
Pure parsing and classification; anything unreadable raises MalformedDsn(reason)."""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass

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
    try:
        message = email.message_from_bytes(bytes(raw))
        if not message.keys():
            raise MalformedDsn("no header fields: not a mail message")
        standard = _standard(message)
        recipients = standard if standard else _non_standard(message)
        subject = str(message.get("Subject", ""))[:300]
    except MalformedDsn:
        raise
    except (RecursionError, ValueError, IndexError, TypeError, LookupError, AttributeError, UnicodeError) as exc:
        raise MalformedDsn(f"unreadable message ({type(exc).__name__})") from exc
    return DsnReport(tuple(recipients), bool(standard), subject)


def _standard(message: email.message.Message) -> list[DeliveryStatus]:
    """RFC 3464: the per-recipient blocks of the message/delivery-status part."""
    for part in _walk(message):
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        out = []
        for block in blocks[1:]:  # the first block is about the message, the others about recipients
            if not isinstance(block, email.message.Message):
                continue
            address = _address(str(block.get("Final-Recipient", "") or block.get("Original-Recipient", "")))
            status = _STATUS.search(str(block.get("Status", "")))
            if not address and not status and not block.get("Action"):
                continue
            out.append(
                DeliveryStatus(
                    address=address,
                    action=str(block.get("Action", "")).strip().lower()[:20],
                    status=".".join(status.groups()) if status else "",
                    diagnostic=_one_line(str(block.get("Diagnostic-Code", ""))),
                )
            )
        if out:
            return out
    return []


def _non_standard(message: email.message.Message) -> list[DeliveryStatus]:
    """The detectors of flufl.bounce (Mailman's) find the address; the text around says how bad."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(message)
    except Exception:  # noqa: BLE001 - a third-party detector choking on hostile input finds nothing
        temporary, permanent = set(), set()
    text = _text(message)
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


def _walk(message: email.message.Message, limit: int = 200) -> list[email.message.Message]:
    out: list[email.message.Message] = []
    stack = [message]
    while stack and len(out) < limit:
        part = stack.pop(0)
        out.append(part)
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(p for p in payload if isinstance(p, email.message.Message))
    return out


def _text(message: email.message.Message) -> str:
    chunks = []
    size = 0
    for part in _walk(message):
        if part.get_content_maintype() != "text":
            continue
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            chunk = data[: _MAX_TEXT - size].decode("utf-8", "replace")
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
