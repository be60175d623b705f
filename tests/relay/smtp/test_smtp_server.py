"""The SMTP edge's own DATA reader (chunked instead of one readuntil per line) keeps aiosmtpd's
semantics: transparency dots removed (RFC 5321 4.5.2), commands pipelined after the dot served
(RFC 2920), an end marker split across TCP segments found, oversize bodies and lines refused; and
its fast path for plain MAIL/RCPT addresses answers exactly as aiosmtpd's parser does."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from aiosmtpd.smtp import SMTP
from conftest import SENDER, RecordingUpstream, make_config, message, until
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import replies as replies_module
from relay.smtp.server import AuthLockout, ConnectionLimits, RelaySMTP

_LOOP = asyncio.new_event_loop()  # the protocol object only needs one to exist; nothing runs on it


def _read_reply(reader: Any) -> bytes:
    line = reader.readline()
    while line[3:4] == b"-":
        line = reader.readline()
    return line.rstrip(b"\r\n")


def _session(port: int, writes: list[bytes], replies: int) -> list[bytes]:
    """Write each chunk as it is (with a short pause between, so they arrive as separate segments)
    and then collect `replies` replies after the greeting."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        for chunk in writes:
            sock.sendall(chunk)
            time.sleep(0.01)  # separate segments, not synchronisation: the replies are awaited below
        return [_read_reply(reader) for _ in range(replies)]


def _envelope(rcpt: str = "anna@example.nl") -> bytes:
    return f"EHLO client.test\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()


async def test_dots_are_unstuffed_and_pipelined_commands_served(relay: Any, upstream: RecordingUpstream) -> None:
    original = message(body=".leading dot\r\n.\r\n..\r\nend")
    stuffed = original.replace(b"\r\n.", b"\r\n..")  # what a client puts on the wire
    first = message(subject="first")
    # Two whole transactions and QUIT in one write, as a pipelining client may send them.
    burst = _envelope() + first + b".\r\n"
    burst += b"MAIL FROM:<%s>\r\nRCPT TO:<anna@example.nl>\r\nDATA\r\n" % SENDER.encode()
    burst += stuffed + b".\r\nQUIT\r\n"
    replies = await asyncio.to_thread(_session, relay.smtp_port, [burst], 9)
    codes = [r[:3] for r in replies]
    assert codes == [b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250"], replies
    await until(lambda: len(upstream.messages) == 2, what="both messages upstream")
    assert b"\r\n.leading dot\r\n.\r\n..\r\nend\r\n" in upstream.messages[1].content
    assert b"...\r\n" not in upstream.messages[1].content


async def test_end_marker_split_across_segments(relay: Any, upstream: RecordingUpstream) -> None:
    raw = message(subject="split") + b".\r\n"
    cut = len(raw) - 3  # "\r\n." in one segment, "\r\n" in the next
    writes = [_envelope(), raw[:cut], raw[cut:], b"QUIT\r\n"]
    replies = await asyncio.to_thread(_session, relay.smtp_port, writes, 6)
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354", b"250", b"221"], replies
    await until(lambda: len(upstream.messages) == 1, what="message upstream")
    assert upstream.messages[0].content.endswith(b"KvK 12345678\r\n")


async def test_empty_body_is_read_like_any_other(relay: Any, upstream: RecordingUpstream) -> None:
    replies = await asyncio.to_thread(_session, relay.smtp_port, [_envelope() + b".\r\nQUIT\r\n"], 6)
    # No From header at all: refused by policy, but read and answered, and the session goes on.
    assert replies[3][:3] == b"354" and replies[4][:1] in (b"5", b"2") and replies[5][:3] == b"221", replies


async def test_oversize_body_is_refused_after_the_end_and_session_goes_on(
    start_relay: Any, tmp_path: Any, upstream: RecordingUpstream
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"max_message_size": 20000}))
    big = message(body="x" * 70 + ("\r\n" + "y" * 70) * 2000) + b".\r\n"
    writes = [_envelope(), big, b"NOOP\r\nQUIT\r\n"]
    replies = await asyncio.to_thread(_session, relay.smtp_port, writes, 7)
    assert replies[4].startswith(b"552 5.3.4"), replies
    assert replies[5].startswith(b"250") and replies[6].startswith(b"221"), replies
    assert upstream.messages == []


async def test_overlong_line_is_refused(relay: Any, upstream: RecordingUpstream) -> None:
    writes = [_envelope(), message(body="z" * 1000) + b".\r\n", b"QUIT\r\n"]
    replies = await asyncio.to_thread(_session, relay.smtp_port, writes, 6)
    assert replies[4].startswith(b"500 5.5."), replies
    assert upstream.messages == []
    ok = await asyncio.to_thread(_session, relay.smtp_port, [_envelope(), message(body="z" * 990) + b".\r\n"], 5)
    assert ok[4].startswith(b"250"), ok


@given(
    st.one_of(
        st.from_regex(r"\A<[A-Za-z0-9.+_-]{1,12}@[A-Za-z0-9.-]{1,12}>[ \t]*(SIZE=\d+|BODY=8BITMIME|\(c\)|x)?\Z"),
        st.text(alphabet="<>@.\"() \t[]:aZ0+-", max_size=20),
    )
)
@settings(max_examples=400, deadline=None)
def test_fast_address_parse_agrees_with_aiosmtpd(arg: str) -> None:
    server = RelaySMTP(object(), limits=ConnectionLimits(1, 1), hostname="relay.test", loop=_LOOP)
    if arg.lstrip().startswith("<") and ">" not in arg:
        # aiosmtpd forgives the missing ">"; the relay answers 501 5.5.4 (issue 15 item 9).
        assert server._getaddr(arg) == ("", "")
        return
    assert _outcome(server._getaddr, arg) == _outcome(lambda a: SMTP._getaddr(server, a), arg)


def _outcome(parse: Any, arg: str) -> Any:
    try:
        return parse(arg)
    except Exception as exc:  # aiosmtpd's parser trips on some garbage ("0@"): the same either way
        return type(exc)


async def test_tests_run_on_the_loop_the_relay_serves_on() -> None:
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_every_handler_hook_is_one_aiosmtpd_calls() -> None:
    """aiosmtpd looks hooks up by name and silently ignores a misspelled one (docs/STYLE.md)."""
    import re as _re
    from pathlib import Path

    import aiosmtpd.smtp as aiosmtpd_smtp

    from relay.smtp.handler import RelayHandler

    source = Path(aiosmtpd_smtp.__file__).read_text()
    called = set(_re.findall(r"_call_handler_hook\(\s*['\"](\w+)['\"]", source)) | {"exception"}
    ours = {name[len("handle_") :] for name in vars(RelayHandler) if name.startswith("handle_")}
    assert ours and ours <= called, ours - called
    assert {"MAIL", "RCPT", "DATA", "exception"} <= ours


async def test_a_permitted_recipient_reaches_the_envelope(relay: Any, upstream: RecordingUpstream) -> None:
    """aiosmtpd drops a recipient that a RCPT hook forgets to append: every accepted one must arrive."""
    rcpts = ["anna@example.nl", "bob@example.nl", "carl@example.nl"]
    writes = [
        b"EHLO client.test\r\nMAIL FROM:<%s>\r\n" % SENDER.encode()
        + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
        + b"DATA\r\n",
        message() + b".\r\nQUIT\r\n",
    ]
    replies = await asyncio.to_thread(_session, relay.smtp_port, writes, 8)
    assert [r[:3] for r in replies] == [b"250"] * 5 + [b"354", b"250", b"221"], replies
    await until(lambda: len(upstream.messages) == 1, what="message upstream")
    assert sorted(upstream.messages[0].rcpt_tos) == rcpts


def test_lockout_lasts_its_window_and_then_ends() -> None:
    lockout = AuthLockout(max_failures=3, lockout_seconds=900)
    assert not lockout.failed("192.0.2.7", now=0) and not lockout.failed("192.0.2.7", now=1)
    assert lockout.failed("192.0.2.7", now=2)  # the third failure locks the address out
    assert lockout.locked("192.0.2.7", now=901) and not lockout.locked("192.0.2.8", now=901)
    assert not lockout.locked("192.0.2.7", now=902)  # 900 s after the lock-out
    assert not lockout.failed("192.0.2.7", now=903)  # counting starts again


class _RecordingTransport(asyncio.Transport):
    """Each write the session makes, as it made it: a reply split over writes shows here."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.9", 40000) if name == "peername" else default


async def test_replies_to_a_pipelined_group_go_out_in_one_write() -> None:
    """EHLO's lines in one write, not one each; the replies to a pipelined group (RFC 2920) held
    until its last command, as Postfix sends them; a command on its own answered at once."""
    server = RelaySMTP(object(), limits=ConnectionLimits(5, 5), hostname="relay.test", loop=asyncio.get_running_loop())
    transport = _RecordingTransport()
    server.connection_made(transport)
    try:
        await until(lambda: len(transport.writes) == 1, what="the greeting")
        server.data_received(b"EHLO client.test\r\n")
        await until(lambda: len(transport.writes) == 2, what="the EHLO reply")
        assert transport.writes[1].startswith(b"250-relay.test\r\n") and transport.writes[1].endswith(b"250 HELP\r\n")
        server.data_received(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        await until(lambda: len(transport.writes) == 3, what="the group's replies")
        group = transport.writes[2].split(b"\r\n")[:-1]
        assert [line[:3] for line in group] == [b"250", b"250", b"250", b"354"], group
        server.data_received(b"Subject: x\r\n\r\nhi\r\n.\r\nNOOP\r\n")
        await until(lambda: len(transport.writes) == 4, what="the DATA and NOOP replies")
        assert [line[:3] for line in transport.writes[3].split(b"\r\n")[:-1]] == [b"250", b"250"], transport.writes
        server.data_received(b"HELP\r\n")
        await until(lambda: len(transport.writes) == 5, what="the HELP reply")
        assert transport.writes[4].startswith(b"250 ")
        server.data_received(b"RSET\r\nQUIT\r\n")
        await until(lambda: len(transport.writes) == 6, what="the RSET and QUIT replies")
        assert transport.writes[5].startswith(b"250 ") and b"\r\n221 " in transport.writes[5]
    finally:
        server.connection_lost(None)


# --- the session's own command loop, set-up and timers (issue 20, session 16) ---------------------


class _AiosmtpdLoop(RelaySMTP):
    """The same session with aiosmtpd's own command loop: what the relay's loop must answer alike."""

    _handle_client = SMTP._handle_client


class _Hooks:
    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        if arg == "boom":
            raise ValueError("the handler failed")
        return "250 OK"


async def _dialogue(kind: type[RelaySMTP], chunks: list[bytes], **settings: Any) -> tuple[bytes, bool]:
    """Everything the session wrote for `chunks` (each one delivered on its own), and whether it hung up."""
    loop = asyncio.get_running_loop()
    server = kind(_Hooks(), limits=ConnectionLimits(5, 5), hostname="relay.test", loop=loop, **settings)
    transport = _RecordingTransport()
    server.connection_made(transport)
    try:
        for chunk in chunks:
            for _ in range(20):  # nothing here waits on anything but the loop's turns
                await asyncio.sleep(0)
            if transport.closed:
                break
            server.data_received(chunk)
        for _ in range(20):
            await asyncio.sleep(0)
        return b"".join(transport.writes), transport.closed
    finally:
        server.connection_lost(None)


_ODD_INPUT = [
    b"EHLO client.test\r\n",
    b"\r\n",  # empty line
    b"\xff\xfe\r\n",  # not ASCII
    b"NOOP " + b"x" * 600 + b"\r\n",  # over 512 octets, within the reader's limit
    b"NOOP " + b"y" * 1500 + b"\r\n",  # over the reader's limit, found in one piece
    b"NOOP " + b"z" * 1200,  # over the reader's limit before its end arrives ...
    b"z" * 3000,
    b"z" * 100 + b"\r\nNOOP\r\n",  # ... and the command after it
    b"NOOP boom\r\n",  # the handler raises: handle_exception's reply
    b"MAIL FROM:<a@example.net> SIZE=100\r\nRCPT TO:<b@example.net>\r\n",
    b"RCPT TO:<c@example.net> NOTIFY=NEVER\r\nMAIL FROM:<d@example.net>\r\nRSET\r\n",
    b"HELP\r\nHELP MAIL\r\nVRFY <x@example.net>\r\nEXPN list\r\nnoop\r\n",
    b"NOOP \xc3\xa9\r\n",  # 8-bit argument: strict ASCII without SMTPUTF8
    b"DATA\r\n",
    b"FOO\r\n",
    b"BAR\r\nBAZ\r\n",
    b"QUX\r\nQUUX\r\nNOOP\r\n",  # the fifth unknown command: 502 and hang up
]


async def test_the_command_loop_answers_as_aiosmtpds_does() -> None:
    for settings in ({}, {"enable_SMTPUTF8": True}, {"auth_required": True}):
        ours = await _dialogue(RelaySMTP, _ODD_INPUT, **settings)
        theirs = await _dialogue(_AiosmtpdLoop, _ODD_INPUT, **settings)
        assert ours == theirs, settings
        assert ours[1], "hung up after too many unknown commands"
    written, _ = await _dialogue(RelaySMTP, _ODD_INPUT)
    assert written.count(b"500 5.5.2 Command line too long\r\n") == 3, written
    quit_mid = [b"HELO c\r\n", b"NOOP\r\nQUIT x\r\nQUIT\r\nNOOP\r\n"]
    assert await _dialogue(RelaySMTP, quit_mid) == await _dialogue(_AiosmtpdLoop, quit_mid)


async def test_a_session_copied_from_the_listeners_first_has_its_own_state() -> None:
    """Sessions after the first of a listener copy what SMTP.__init__ derived from its settings;
    what belongs to one connection (reader, futures, tables bound to the session) is their own."""
    loop = asyncio.get_running_loop()
    handler = _Hooks()
    new_session = RelaySMTP.factory(
        handler, limits=ConnectionLimits(5, 5), hostname="relay.test", loop=loop, auth_require_tls=False
    )
    first, second = new_session(), new_session()
    fresh = SMTP(handler, hostname="relay.test", loop=loop, auth_require_tls=False)
    assert set(vars(fresh)) - {"_smtp_methods", "_auth_methods"} <= set(vars(second))
    for name, value in vars(fresh).items():
        if name not in ("_smtp_methods", "_auth_methods", "_closed", "_drain_waiters", "_stream_reader_wr",
                        "_strong_reader", "_client_connected_cb", "_handle_hooks"):
            assert getattr(second, name) == value, name
    assert second._handle_hooks == fresh._handle_hooks
    assert second._closed is not first._closed and second._drain_waiters is not first._drain_waiters
    assert second._stream_reader is not first._stream_reader
    assert sorted(second._smtp_methods) == sorted(fresh._smtp_methods)
    assert all(method.__self__ is second for method in second._smtp_methods.values())
    assert sorted(second._auth_methods) == sorted(fresh._auth_methods) == ["LOGIN", "PLAIN"]
    assert all(m.method.__self__ is second for m in second._auth_methods.values())


async def test_one_sessions_ehlo_leaves_the_others_command_limits_alone() -> None:
    """aiosmtpd kept the command limits on the class: any session's EHLO raised every session's
    MAIL limit (by 36 octets with SIZE and SMTPUTF8) until the next connection cleared them."""
    long_mail = b"MAIL FROM:<" + b"a" * 40 + b"@example.net> " + b"X" * (549 - 65) + b"\r\n"
    assert len(long_mail) - 2 == 549  # one over an ESMTP session's MAIL limit (512 + 26 + 10)
    loop = asyncio.get_running_loop()
    limits = ConnectionLimits(5, 5)
    sessions = [RelaySMTP(object(), limits=limits, hostname="relay.test", loop=loop, enable_SMTPUTF8=True) for _ in range(2)]
    transports = [_RecordingTransport(), _RecordingTransport()]
    for server, transport in zip(sessions, transports):
        server.connection_made(transport)
    try:
        await until(lambda: all(t.writes for t in transports), what="the greetings")
        for count in (2, 3):
            sessions[0].data_received(b"EHLO one.test\r\n")
            await until(lambda: len(transports[0].writes) == count, what="the EHLO reply")
        sessions[1].data_received(b"EHLO two.test\r\n")
        await until(lambda: len(transports[1].writes) == 2, what="the EHLO reply")
        sessions[1].data_received(long_mail)
        await until(lambda: len(transports[1].writes) == 3, what="the MAIL reply")
        assert transports[1].writes[2] == b"500 5.5.2 Command line too long\r\n"
    finally:
        for server in sessions:
            server.connection_lost(None)


async def test_the_idle_timer_moves_with_each_command_and_ends_a_silent_session() -> None:
    loop = asyncio.get_running_loop()
    server = RelaySMTP(object(), limits=ConnectionLimits(5, 5), hostname="relay.test", loop=loop, timeout=0.3)
    transport = _RecordingTransport()
    server.connection_made(transport)
    try:
        started = loop.time()
        for _ in range(6):  # a command every 0.1 s for 0.6 s: twice the idle timeout, never idle that long
            await asyncio.sleep(0.1)
            server.data_received(b"NOOP\r\n")
        await asyncio.sleep(0.05)
        assert not transport.closed and len(transport.writes) == 7, transport.writes
        last = loop.time()
        await until(lambda: transport.closed, timeout=2, what="the idle timeout")
        assert loop.time() - last >= 0.25 and loop.time() - started >= 0.85
        assert transport.writes[-1] == (replies_module.IDLE_TIMEOUT + "\r\n").encode()
    finally:
        server.connection_lost(None)


async def test_nothing_pipelined_after_quit_is_served() -> None:
    """aiosmtpd's QUIT cancelled its own task, so the commands after it in the buffer ran (their hooks
    called, their replies dropped) until the loop next waited; the relay's ends the loop at QUIT."""
    served: list[str] = []

    class Recording:
        async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
            served.append(arg)
            return "250 OK"

    loop = asyncio.get_running_loop()
    server = RelaySMTP(Recording(), limits=ConnectionLimits(5, 5), hostname="relay.test", loop=loop)
    transport = _RecordingTransport()
    server.connection_made(transport)
    try:
        await until(lambda: transport.writes, what="the greeting")
        server.data_received(b"NOOP first\r\nQUIT\r\nNOOP after\r\n")
        await until(lambda: transport.closed, what="the hang-up")
        for _ in range(20):
            await asyncio.sleep(0)
        assert served == ["first"]
        assert transport.writes[1:] == [b"250 OK\r\n221 Bye\r\n"], transport.writes
    finally:
        server.connection_lost(None)
