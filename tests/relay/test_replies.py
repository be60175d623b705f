"""Reply texts (docs/SPEC.md §4 table): policy replies, enhanced codes on aiosmtpd's built-in replies, no
control characters or unbounded text in a reply line."""

from __future__ import annotations

import re

import pytest

from policies.findings import Action, Finding
from relay import replies

ENHANCED = re.compile(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} ")


def test_every_constant_has_an_enhanced_code() -> None:
    constants = [
        v for k, v in vars(replies).items()
        if k.isupper() and isinstance(v, str) and v[:3].isdigit() and v not in replies.NOT_SENT_BY_THE_RELAY
    ]
    assert len(constants) > 10
    for text in constants:
        assert ENHANCED.match(text) or text.startswith("3"), text  # RFC 2034: 3xx replies carry none


def test_the_replies_without_an_enhanced_code_are_never_sent_by_the_relay() -> None:
    """HOOKLESS_OK is aiosmtpd's default for a MAIL or RCPT no hook answers: the relay's handler answers both."""
    from relay.smtp.handler import RelayHandler

    assert replies.NOT_SENT_BY_THE_RELAY == {replies.HOOKLESS_OK}
    assert callable(RelayHandler.handle_MAIL) and callable(RelayHandler.handle_RCPT)


@pytest.mark.parametrize(
    ("finding", "expected"),
    [
        (Finding("consent.missing", Action.REJECT, "No consent"), "550 5.7.1 [consent.missing] No consent"),
        (Finding("account.suspended", Action.REJECT, "Suspended"), "554 5.7.1 [account.suspended] Suspended"),
        (Finding("account.paused", Action.TEMPFAIL, "Paused"), "451 4.7.1 [account.paused] Paused"),
        (Finding("relay.denied", Action.REJECT, "Relaying denied"), "550 5.7.1 [relay.denied] Relaying denied"),
    ],
)
def test_policy_reply(finding: Finding, expected: str) -> None:
    assert replies.policy_reply(finding) == expected


def test_spec_table_codes() -> None:
    assert replies.AUTH_REQUIRED.startswith("530 5.7.0")
    assert replies.AUTH_FAILED.startswith("535 5.7.8")
    assert replies.AUTH_LOCKED.startswith("421 4.7.0")
    assert replies.TOO_BIG.startswith("552 5.3.4")
    assert replies.TOO_MANY_RECIPIENTS.startswith("452 4.5.3")
    assert replies.UPSTREAM_UNAVAILABLE.startswith("451 4.4.1")
    assert replies.INTERNAL_ERROR.startswith("451 4.3.0") and "Error" not in replies.INTERNAL_ERROR
    assert replies.quarantined("Q1", "content.adult") == "250 2.6.0 Held for review as Q1 [content.adult]"
    assert replies.delivered("abc", "2.0.0 Ok: queued as X1").startswith("250 2.0.0 Delivered as abc")
    assert "queued as X1" in replies.delivered("abc", "2.0.0 Ok: queued as X1")


def test_reply_text_is_one_clean_bounded_line() -> None:
    nasty = Finding("content.adult", Action.REJECT, "evil\r\n250 OK\x00" + "x" * 5000)
    text = replies.policy_reply(nasty)
    assert "\r" not in text and "\n" not in text and "\x00" not in text and len(text) < 500


def test_partially_delivered() -> None:
    text = replies.partially_delivered("rid", 1, 3, [("b@x.nl", "consent.missing"), ("c@x.nl", "upstream")])
    assert text == "250 2.0.0 Delivered to 1 of 3 recipients; refused: b@x.nl [consent.missing], c@x.nl [upstream] (rid)"


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (554, "5.7.9 Refused by policy", "554 5.7.9 Refused by policy"),
        (550, "No such user", "550 5.0.0 No such user"),
        (552, "bad\r\nline", "552 5.0.0 bad  line"),
    ],
)
def test_upstream_passthrough(code: int, message: str, expected: str) -> None:
    assert replies.upstream_passthrough(code, message) == expected


@pytest.mark.parametrize(
    ("builtin", "expected"),
    [
        ("500 Error: command \"FOO\" not recognized", '500 5.5.2 command "FOO" not recognized'),
        ("503 Error: need MAIL command", "503 5.5.1 need MAIL command"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("552 Error: Too much mail data", replies.TOO_BIG),
        ("552 Error: message size exceeds fixed maximum message size", replies.TOO_BIG),
        ("250 OK", "250 OK"),
        ("250-relay.test", "250-relay.test"),
        ("550 5.7.1 [relay.denied] x", "550 5.7.1 [relay.denied] x"),
    ],
)
def test_enhanced_codes_on_builtin_replies(builtin: str, expected: str) -> None:
    assert replies.with_enhanced_code(builtin) == expected


def test_the_command_loop_replies_are_aiosmtpds_with_their_enhanced_codes() -> None:
    """RelaySMTP's command loop answers as aiosmtpd's did once push() added the enhanced code."""
    error = ValueError("broken")
    pairs = [
        (replies.COMMAND_TOO_LONG, "500 Command line too long"),
        (replies.COMMAND_BAD_SYNTAX, "500 Error: bad syntax"),
        (replies.COMMAND_NOT_ASCII, "500 Error: strict ASCII mode"),
        (replies.COMMAND_AFTER_FAILED_TLS, "554 Command refused due to lack of security"),
        (replies.COMMAND_BEFORE_STARTTLS, "530 Must issue a STARTTLS command first"),
        (replies.TOO_MANY_UNKNOWN_COMMANDS, "502 5.5.1 Too many unrecognized commands, goodbye."),
        (replies.UNDESCRIBABLE_ERROR, "500 Error: Cannot describe error"),
        (replies.command_over_call_limit("RCPT"), "421 4.7.0 RCPT sent too many times"),
        (replies.unknown_command("FOO"), '500 Error: command "FOO" not recognized'),
        (replies.session_error(error), "500 Error: (ValueError) broken"),
        (replies.QUIT_SYNTAX, "501 Syntax: QUIT"),
        (replies.bye(), "221 Bye"),
    ]
    for ours, aiosmtpds in pairs:
        assert ours == replies.with_enhanced_code(aiosmtpds)
