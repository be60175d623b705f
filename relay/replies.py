"""Every SMTP reply the relay sends, as named constants and one renderer (docs/SPEC.md §4 reply table)."""

from __future__ import annotations

import re

from policies.findings import Finding

OK_RCPT = "250 2.1.5 Recipient ok"
OK_MAIL = "250 2.1.0 Sender ok"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_LOCKED = "421 4.7.0 Too many authentication failures; try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections; try again later"
TOO_BIG = "552 5.3.4 Message too big for system"
NUL_IN_MESSAGE = "550 5.6.0 Message contains NUL characters (not allowed by RFC 5322)"
EIGHT_BIT_UPSTREAM = "554 5.6.3 Message has 8-bit data and the upstream does not accept 8BITMIME"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
UPSTREAM_UNAVAILABLE = "451 4.4.1 Upstream mail server unavailable; try again later"
STORE_UNAVAILABLE = "451 4.3.0 Temporary local problem (store unavailable); try again later"
SCANNER_UNAVAILABLE = "451 4.3.0 Temporary local problem (malware scanner unavailable); try again later"
INTERNAL_ERROR = "451 4.3.0 Temporary local problem; try again later"
POLICY_TIMEOUT = "451 4.3.0 Temporary local problem (policy check timed out); try again later"
IDLE_TIMEOUT = "421 4.4.2 Idle timeout; closing connection"
DATA_TIMEOUT = "421 4.4.2 Message transfer took too long; closing connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down; try again later"
OK = "250 2.0.0 OK"
# aiosmtpd's answer to a MAIL or RCPT that no handler hook answers: relay/smtp/server.py mirrors
# aiosmtpd's methods word for word. The relay's own handler answers both commands, so the relay
# never sends it (tests/relay/test_replies.py checks the handler has both hooks).
HOOKLESS_OK = "250 OK"
NOT_SENT_BY_THE_RELAY = frozenset({HOOKLESS_OK})
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
BAD_BASE64 = "501 5.5.2 Cannot decode base64"
BAD_AUTH_VALUE = "501 5.5.2 Cannot split auth value"
UNKNOWN_UNSUBSCRIBE_ADDRESS = "550 5.1.1 Unknown unsubscribe address"
# A feature asked for mail to an address it does not claim (never happens: the pipeline asks only the claimant).
NO_SUCH_ADDRESS = "550 5.1.1 No such address"
UNSUBSCRIBED = "250 2.0.0 Unsubscribed"
SMTPUTF8_UPSTREAM = "553 5.6.7 SMTPUTF8 not supported upstream"
# EHLO lines the relay adds before aiosmtpd's last one
EHLO_EXTENSIONS = ("250-PIPELINING", "250-ENHANCEDSTATUSCODES")
# RelaySMTP's DATA (aiosmtpd's wording, with the enhanced code push() used to add); 3xx has none (RFC 2034)
DATA_WITHOUT_RCPT = "503 5.5.1 need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"

# aiosmtpd's command-loop replies as they leave (its wording, the enhanced code push() used to add):
# RelaySMTP runs its own copy of that loop
COMMAND_TOO_LONG = "500 5.5.2 Command line too long"
COMMAND_BAD_SYNTAX = "500 5.5.2 bad syntax"
COMMAND_NOT_ASCII = "500 5.5.2 strict ASCII mode"
COMMAND_AFTER_FAILED_TLS = "554 5.3.0 Command refused due to lack of security"
COMMAND_BEFORE_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
TOO_MANY_UNKNOWN_COMMANDS = "502 5.5.1 Too many unrecognized commands, goodbye."
UNDESCRIBABLE_ERROR = "500 5.5.2 Cannot describe error"
QUIT_SYNTAX = "501 5.5.4 Syntax: QUIT"


def bye() -> str:
    """aiosmtpd's reply to QUIT, word for word: a 2xx, to which the relay never added an enhanced code."""
    return "221 Bye"


def command_over_call_limit(command: str) -> str:
    return f"421 4.7.0 {command} sent too many times"


def unknown_command(command: str) -> str:
    return f'500 5.5.2 command "{command}" not recognized'


def session_error(error: BaseException) -> str:
    """aiosmtpd's reply when handle_exception itself fails."""
    return f"500 5.5.2 ({error.__class__.__name__}) {error}"


_UNSAFE = re.compile(r"[\r\n\x00-\x1f\x7f]")


def clean(text: str, limit: int = 400) -> str:
    """Text safe inside one reply line: no control characters, bounded length."""
    return _UNSAFE.sub(" ", text)[:limit]


def policy_reply(finding: Finding) -> str:
    """The reply for a rule hit: 550 reject, 554 suspended, 451 tempfail (docs/SPEC.md §4)."""
    detail = clean(finding.detail)
    if finding.rule == "account.suspended":
        return f"554 5.7.1 [{finding.rule}] {detail}"
    if finding.action.value == "tempfail":
        return f"451 4.7.1 [{finding.rule}] {detail}"
    if finding.rule == "suppression.bounced":
        return f"550 5.1.1 [{finding.rule}] {detail}"  # the mailbox does not exist (docs/SPEC.md §15)
    return f"550 5.7.1 [{finding.rule}] {detail}"


def feedback_refused(reason: str, reject_id: str) -> str:
    return clean(f"550 5.6.0 Feedback report refused: {reason} (kept as reject {reject_id})", 500)


def complaint_recorded(complaint_id: str, state: str, account: str, masked_recipient: str, more: str, status: str) -> str:
    return clean(f"250 2.0.0 Complaint {complaint_id} {state} for account {account}, recipient {masked_recipient}{more} ({status})")


def bounce_recorded(bounce_id: str, kind: str) -> str:
    return clean(f"250 2.0.0 Bounce {bounce_id} recorded ({kind})")


def saved(where: str) -> str:
    """The development sink's reply: where it wrote the message."""
    return f"250 2.0.0 Saved as {where}"


def quarantined(quarantine_id: str, rule: str) -> str:
    return f"250 2.6.0 Held for review as {quarantine_id} [{rule}]"


def delivered(relay_id: str, queue_note: str = "") -> str:
    extra = f"; upstream: {clean(queue_note, 120)}" if queue_note else ""
    return f"250 2.0.0 Delivered as {relay_id}{extra}"


def partially_delivered(relay_id: str, delivered_count: int, total: int, refusals: list[tuple[str, str]]) -> str:
    refused = ", ".join(f"{clean(address, 254)} [{rule}]" for address, rule in refusals)
    return clean(f"250 2.0.0 Delivered to {delivered_count} of {total} recipients; refused: {refused} ({relay_id})", 900)


def upstream_passthrough(code: int, message: str) -> str:
    """An upstream's own reply, passed on (its enhanced code kept when it gave one)."""
    text = clean(message)
    if not re.match(r"^[245]\.\d{1,3}\.\d{1,3}\b", text):
        text = f"{code // 100}.0.0 {text}"
    return f"{code} {text}"


# aiosmtpd's built-in replies carry no enhanced status code; translate them where they leave.
_ENHANCED_DEFAULT = {
    "421": "4.4.2",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "554": "5.3.0",
    "555": "5.5.4",
}
_SPECIFIC = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}")


def with_enhanced_code(status: str) -> str:
    if status in _SPECIFIC:
        return _SPECIFIC[status]
    if len(status) < 4 or status[3] != " " or _HAS_ENHANCED.match(status):
        return status
    code = status[:3]
    enhanced = _ENHANCED_DEFAULT.get(code)
    if enhanced is None:
        return status
    return f"{code} {enhanced} {status[4:].removeprefix('Error: ')}"
