"""Hostile or broken input gets a clean reply and the server keeps serving; internal failures and an
unreachable store become 451 4.3.0, never aiosmtpd's "500 Error: (Type)" and never a pass."""

from __future__ import annotations

import asyncio
import re
import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import RecordingUpstream, asend, make_config, message, send, transaction

from relay.errors import StoreUnavailable

CLEAN_REPLY = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3} [^\x00-\x08\x0b-\x1f\x7f]*$")


def assert_clean(code: int, text: str) -> None:
    line = f"{code} {text}"
    assert CLEAN_REPLY.match(line), line
    assert "Error" not in text and "Traceback" not in text, line


def _raw_session(port: int, lines: list[bytes]) -> list[bytes]:
    """Send raw lines one at a time; collect one reply (possibly multi-line) for each."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        greeting = reader.readline()
        assert greeting.startswith(b"220 ")
        replies = []
        for line in lines:
            sock.sendall(line + b"\r\n")
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            replies.append(reply.rstrip(b"\r\n"))
        return replies


async def test_garbage_commands_get_clean_replies(relay: Any, upstream: RecordingUpstream) -> None:
    garbage = [
        b"EHLO client.test",
        b"FOO BAR",
        b"\x01\x02\x03\xff\xfe",
        b"MAIL",
        b"MAIL FROM:",
        b"MAIL FROM:<not an address>",
        b"RCPT TO:<anna@example.nl>",
        b"DATA",
        b"AUTH NOPE",
        b"X" * 2000,
        b"NOOP",
    ]
    replies = await asyncio.to_thread(_raw_session, relay.smtp_port, garbage)
    assert replies[0].startswith(b"250 ")
    for reply in replies[1:-1]:
        code = int(reply[:3])
        assert 400 <= code < 600, reply
        assert re.match(rb"^\d{3} [45]\.\d{1,3}\.\d{1,3} ", reply), reply  # enhanced status code on every error
        assert b"Error:" not in reply
    assert replies[-1].startswith(b"250"), replies[-1]
    out = await asend(relay.smtp_port)
    assert out.code == 250, out


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(message(body="nul \x00 byte in the body\x00"), id="nul-bytes"),
        pytest.param(message(headers=("X-Long: " + "a" * 100_000,)), id="100kb-header-line"),
        pytest.param(message().replace(b"Subject: Your order 1234", b"Subject: Your order \xff\xfe\xc3("), id="invalid-utf8-header"),
        pytest.param(message().replace(b"It ships tomorrow.", b"It ships \xff\xfe\x80 tomorrow."), id="invalid-utf8-body"),
        pytest.param(b"no headers at all, just text\r\n", id="no-header-block"),
        pytest.param(b"From: Shop <orders@shop.example>\r\nSubject: =?utf-8?b?!!!invalid?=\r\n", id="broken-encoded-word"),
    ],
)
async def test_odd_messages_get_clean_replies(relay: Any, upstream: RecordingUpstream, content: bytes) -> None:
    out = await asend(relay.smtp_port, content)
    assert_clean(*out.final)
    if out.code == 250:
        assert len(upstream.messages) == 1
    out = await asend(relay.smtp_port)  # the server keeps serving
    assert out.code == 250, out


async def test_handler_exception_becomes_451_not_500(relay: Any, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("secret internal detail")

    def run() -> tuple[Any, Any]:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("orders@shop.example")
            client.rcpt("anna@example.nl")
            monkeypatch.setattr(relay.pipeline, "evaluate", broken)  # in the helper or inline
            failed = client.data(message())
            monkeypatch.undo()
            client.rset()
            return failed, transaction(client, "orders@shop.example", ["anna@example.nl"], message())

    failed, after = await asyncio.to_thread(run)
    assert failed[0] == 451 and failed[1].decode().startswith("4.3.0"), failed
    assert b"ValueError" not in failed[1] and b"secret" not in failed[1]
    assert len(upstream.messages) == 1  # only the second transaction went upstream
    assert after.code == 250, after  # same session keeps working


async def test_store_unavailable_at_mail_is_tempfail(relay: Any, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("store read failed: timeout")

    monkeypatch.setattr(relay.services.store.accounts, "get", unavailable)
    out = await asend(relay.smtp_port)
    assert out.final[0] == 451 and out.final[1].startswith("4.3.0"), out
    assert upstream.messages == []


async def test_closed_store_is_tempfail(relay: Any, upstream: RecordingUpstream) -> None:
    await relay.services.store.close()
    out = await asend(relay.smtp_port)
    assert out.code == 451 and out.text.startswith("4.3.0"), out
    assert upstream.messages == []
    await relay.services.store.open()
    assert (await asend(relay.smtp_port)).code == 250


async def test_consent_lookup_failure_is_tempfail_not_pass(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams = [
        {"id": "orders", "kind": "transactional"},
        {"id": "newsletter", "kind": "marketing", "envelope_from": ["news@shop.example"]},
    ]
    relay = await start_relay(make_config(tmp_path, upstream.port, account={"streams": streams}))

    async def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("store read failed: timeout")

    monkeypatch.setattr(relay.services.store.consent, "find_consents_and_suppressions", unavailable)
    # Stream known at MAIL (envelope_from): the consent lookup happens at RCPT.
    out = await asend(relay.smtp_port, message(sender="news@shop.example"), mail_from="news@shop.example")
    assert out.rcpts and out.rcpts[0][0] == 451 and out.rcpts[0][1].startswith("4.3.0"), out
    # Stream chosen by header at DATA: the lookup happens there.
    out = await asend(relay.smtp_port, message(stream="newsletter"))
    assert out.code == 451 and out.text.startswith("4.3.0"), out
    assert upstream.messages == []


_HEADER_LINES = st.sampled_from(
    [
        b"From: Shop <orders@shop.example>", b"From: =?utf-8?q?=FF=FE?= <orders@shop.example>", b"Subject: RE: hi",
        b"Subject: =?bogus?b?!!!?=", b"Content-Type: multipart/mixed; boundary=x", b"Content-Type: text/html; charset=nope",
        b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable", b"MIME-Version: 1.0",
        b"X-Relay-Stream: orders", b"X-Relay-Stream: \xff\xfe", b"Reply-To: <<>>", b"To: ,,,", b"\tfolded", b": no name",
    ]
)


@st.composite
def _garbage_messages(draw: st.DrawFn) -> bytes:
    head = draw(st.lists(_HEADER_LINES | st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=8))
    body = draw(st.binary(max_size=2000) | st.sampled_from([b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--", b"PGh0bWw+", b"=E2=82=AC=\r\n"]))
    return b"\r\n".join(head) + b"\r\n\r\n" + body + b"\r\n"


async def test_fuzzed_messages_get_a_verdict_or_a_clean_reply(relay: Any, upstream: RecordingUpstream) -> None:
    """Hypothesis over the real SMTP listener: whatever the bytes, the relay answers each message
    with a well-formed reply (delivered, held, refused by a rule, or a tempfail), never aiosmtpd's
    "500 Error" and never a dropped connection, and it keeps serving."""

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(raw=_garbage_messages())
    def check(raw: bytes) -> None:
        out = send(relay.smtp_port, raw)
        code, text = out.data if out.data else out.mail
        assert_clean(code, text)
        assert code in (250, 451, 550, 552, 554) or (code == 500 and "5.5." in text), (code, text)

    await asyncio.to_thread(check)
    assert (await asend(relay.smtp_port)).code == 250  # still serving
