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


# --- MAIL and RCPT without aiosmtpd's generic machinery (issue 20, session 17) -------------------


class _AiosmtpdMailRcpt(RelaySMTP):
    """The same session with aiosmtpd's own smtp_MAIL and smtp_RCPT: what the relay's must answer alike."""

    smtp_HELO = SMTP.smtp_HELO
    smtp_MAIL = SMTP.smtp_MAIL
    smtp_RCPT = SMTP.smtp_RCPT


class _EnvelopeHooks:
    """HELO, MAIL, RCPT, DATA and QUIT hooks that note what they were given and refuse some names."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        self.calls.append(("HELO", hostname, []))
        if hostname.startswith("no"):
            return "550 5.7.1 not this name"
        session.host_name = hostname
        return f"250 hello {hostname}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.calls.append(("DATA", envelope.content.decode(), list(envelope.rcpt_tos)))
        return "250 2.0.0 queued"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.calls.append(("QUIT", "", []))
        return "221 2.0.0 see you"

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.calls.append(("MAIL", address, list(options)))
        if address.startswith("no"):
            return "550 5.7.1 not this sender"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.calls.append(("RCPT", address, list(options)))
        if address.startswith("no"):
            return "550 5.1.1 not this recipient"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"


def _envelope_state(envelope: Any) -> tuple[Any, ...]:
    return (envelope.mail_from, list(envelope.mail_options), list(envelope.rcpt_tos), list(envelope.rcpt_options), envelope.smtp_utf8)


async def _mail_rcpt_dialogue(kind: type[RelaySMTP], handler: Any, lines: list[bytes], local_part_limit: int, settings: dict[str, Any]) -> Any:
    """What the session wrote, the hooks it called and its envelope after each line."""
    server = kind(handler, limits=ConnectionLimits(5, 5), hostname="relay.test", loop=asyncio.get_running_loop(), **settings)
    server.local_part_limit = local_part_limit
    transport = _RecordingTransport()
    server.connection_made(transport)
    states = []

    try:
        for line in [b""] + lines:  # the greeting first
            seen = len(transport.writes)
            if line:
                server.data_received(line)
            for _ in range(100):  # each line is one command: done when its reply is out (in one write)
                await asyncio.sleep(0)
                if len(transport.writes) > seen:
                    break
            states.append(_envelope_state(server.envelope) if server.envelope is not None else None)
        return b"".join(transport.writes), getattr(handler, "calls", None), states
    finally:
        server.connection_lost(None)


_SOME_ADDRESSES = [
    "<a@example.net>", "<no.one@example.net>", "<>", "< a@example.net >", "<a@example.net", "a@example.net", "<a.b+c@sub.example.net>",
    "<\"q s\"@example.net>", "<a@[192.0.2.1]>", "<a@example.net>(c)", "<a@example.net> (c)", "<é@example.net>", "<a@exämple.net>",
    "<" + "l" * 70 + "@example.net>", "<" + "m" * 64 + "@example.net>", "<a@example.net>>", "<@x.net:a@example.net>", "", " ",
]
_SOME_PARAMETERS = [
    "", " ", "  \t", " SIZE=100", " size=99999999999", " SIZE=", " SIZE=x", " SIZE", " SIZE=1001", " BODY=8BITMIME", " BODY=7bit",
    " BODY=BINARY", " SMTPUTF8", " SMTPUTF8=yes", " NOTIFY=NEVER", " FOO", " SIZE=10 BODY=8BITMIME SMTPUTF8", " =x", " A-B", "x", " (c)",
    "\t SIZE=5", " SIZE=5 SIZE=6", " BODY=8BITMIME BODY=BINARY",
]
_SETTINGS: list[tuple[dict[str, Any], int]] = [
    ({}, 0), ({}, 64), ({"enable_SMTPUTF8": True}, 0), ({"auth_required": True}, 0), ({"decode_data": True}, 0), ({"data_size_limit": 1000}, 0),
]


def _script() -> list[bytes]:
    """Every address with every parameter string after MAIL FROM (then RSET) and RCPT TO, a nested
    MAIL, and the keyword's spellings."""
    lines = []
    for address in _SOME_ADDRESSES:
        for params in _SOME_PARAMETERS:
            lines += [f"MAIL FROM:{address}{params}", "RSET"]
    lines += ["MAIL FROM:<a@example.net>"]
    lines += [f"RCPT TO:{address}{params}" for address in _SOME_ADDRESSES for params in _SOME_PARAMETERS]
    lines += ["MAIL FROM:<b@example.net>", "RSET", "RCPT TO:<a@example.net>"]  # nested; RCPT before MAIL
    lines += ["HELO", "HELO  ", "MAIL FROM:<a@example.net>", "HELO again.test", "RCPT TO:<a@example.net>", "HELO no.test", "DATA"]
    for verb in ["mail from:", "MAIL FROM: ", "MAIL FROM :", "MAIL TO:", "MAIL", "MAIL ", "RCPT TO:", "rcpt to:", "RCPT TO:  ", "RCPT FROM:", "RCPT"]:
        for tail in ["<a@example.net>", "<a@example.net> SIZE=5", ""]:
            lines += [verb + tail]
    lines += ["RSET", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.net>", "DATA x", "DATA", "Subject: x\r\n\r\nhi\r\n.", "QUIT x", "QUIT"]
    return [line.encode("utf-8") + b"\r\n" for line in lines]


async def test_mail_and_rcpt_answer_as_aiosmtpds_do() -> None:
    """RelaySMTP's smtp_MAIL and smtp_RCPT take what aiosmtpd's take, with the same hook calls, the same
    envelope and the same replies, and leave the rest to aiosmtpd's: before and after HELO or EHLO,
    with and without hooks, with the settings that change what MAIL and RCPT accept."""
    script = _script()
    helo, ehlo = [b"HELO client.test\r\n"], [b"EHLO client.test\r\n"]
    cases = [([], {}, 0, True), (helo, {}, 0, True), (helo, {}, 64, True), (ehlo, {}, 0, False)]
    cases += [(ehlo, setting, local_part_limit, True) for setting, local_part_limit in _SETTINGS]
    for greeting, setting, local_part_limit, hooked in cases:
        ours = await _mail_rcpt_dialogue(RelaySMTP, _EnvelopeHooks() if hooked else object(), greeting + script, local_part_limit, setting)
        theirs = await _mail_rcpt_dialogue(
            _AiosmtpdMailRcpt, _EnvelopeHooks() if hooked else object(), greeting + script, local_part_limit, setting
        )
        assert ours == theirs, (greeting, setting, local_part_limit, hooked)
        written, calls, _ = ours
        if hooked and not setting.get("auth_required"):  # the message went through (the script greets)
            assert calls[-2:] == [("DATA", "Subject: x\r\n\r\nhi\r\n", ["b@example.net"]), ("QUIT", "", [])], calls[-2:]
            assert written.endswith(b"250 2.0.0 queued\r\n501 5.5.4 Syntax: QUIT\r\n221 2.0.0 see you\r\n"), written[-200:]
        else:
            assert ("DATA", "Subject: x\r\n\r\nhi\r\n", ["b@example.net"]) not in (calls or [])


class _AiosmtpdData(RelaySMTP):
    smtp_DATA = SMTP.smtp_DATA


async def test_data_refuses_before_its_354_as_aiosmtpds_does() -> None:
    """Not greeted, not authenticated, no recipient, an argument: aiosmtpd's replies, its hooks not called."""
    for lines, setting in [
        ([b"DATA\r\n"], {}),
        ([b"EHLO c\r\n", b"DATA\r\n"], {"auth_required": True}),
        ([b"DATA\r\n"], {"auth_required": True}),
        ([b"EHLO c\r\n", b"DATA\r\n", b"MAIL FROM:<a@example.net>\r\n", b"RCPT TO:<b@example.net>\r\n", b"DATA x\r\n"], {}),
    ]:
        ours = await _mail_rcpt_dialogue(RelaySMTP, _EnvelopeHooks(), lines, 0, setting)
        theirs = await _mail_rcpt_dialogue(_AiosmtpdData, _EnvelopeHooks(), lines, 0, setting)
        assert ours == theirs, lines
        assert ours[0].split(b"\r\n")[-2].startswith((b"503 ", b"530 ", b"501 ")), ours[0]


_ADDRESSES = st.one_of(
    st.sampled_from(_SOME_ADDRESSES),
    st.from_regex(r"\A<[A-Za-z0-9.+_-]{0,12}@[A-Za-z0-9.-]{0,12}>\Z"),
    st.text(alphabet="<>@.\"() \taZ0+-=", max_size=16),
)
_VERBS = st.sampled_from(["MAIL FROM:", "mail from:", "MAIL FROM: ", "RCPT TO:", "rcpt to:", "RCPT TO: ", "RSET", "HELO c", "EHLO c"])
_LINES = st.lists(
    st.builds(lambda verb, address, params: (verb + address + params).encode("utf-8") + b"\r\n", _VERBS, _ADDRESSES, st.sampled_from(_SOME_PARAMETERS)),
    max_size=8,
)


@given(
    lines=_LINES,
    greeting=st.sampled_from([[], [b"HELO client.test\r\n"], [b"EHLO client.test\r\n"]]),
    case=st.sampled_from(_SETTINGS),
    hooked=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_mail_and_rcpt_answer_any_input_as_aiosmtpds_do(
    lines: list[bytes], greeting: list[bytes], case: tuple[dict[str, Any], int], hooked: bool
) -> None:
    """The same for random sequences of commands and addresses."""
    import uvloop

    setting, local_part_limit = case

    async def both() -> tuple[Any, Any]:
        ours = await _mail_rcpt_dialogue(RelaySMTP, _EnvelopeHooks() if hooked else object(), greeting + lines, local_part_limit, setting)
        theirs = await _mail_rcpt_dialogue(_AiosmtpdMailRcpt, _EnvelopeHooks() if hooked else object(), greeting + lines, local_part_limit, setting)
        return ours, theirs

    loop = uvloop.new_event_loop()
    try:
        ours, theirs = loop.run_until_complete(both())
    finally:
        loop.close()
    assert ours == theirs


async def test_a_plain_mail_and_rcpt_take_the_short_way() -> None:
    """The commands nearly every client sends never reach aiosmtpd's generic methods."""
    reached: list[str] = []

    original_mail, original_rcpt = SMTP.smtp_MAIL, SMTP.smtp_RCPT

    async def mail(self: Any, arg: Any) -> None:
        reached.append("MAIL")
        await original_mail(self, arg)

    async def rcpt(self: Any, arg: Any) -> None:
        reached.append("RCPT")
        await original_rcpt(self, arg)

    SMTP.smtp_MAIL, SMTP.smtp_RCPT = mail, rcpt  # type: ignore[method-assign]
    try:
        hooks = _EnvelopeHooks()
        written, calls, states = await _mail_rcpt_dialogue(
            RelaySMTP, hooks,
            [b"EHLO c\r\n", b"MAIL FROM:<a@example.net> SIZE=100 BODY=8BITMIME\r\n", b"RCPT TO:<b@example.net>\r\n", b"RSET\r\n",
             b"MAIL FROM:<a@example.net> SIZE=x\r\n"],
            0, {},
        )
    finally:
        SMTP.smtp_MAIL, SMTP.smtp_RCPT = original_mail, original_rcpt  # type: ignore[method-assign]
    assert calls == [("MAIL", "a@example.net", ["SIZE=100", "BODY=8BITMIME"]), ("RCPT", "b@example.net", [])]
    assert states[3][:3] == ("a@example.net", ["SIZE=100", "BODY=8BITMIME"], ["b@example.net"])
    assert reached == ["MAIL"]  # only the refused SIZE=x went the long way
    assert written.endswith(b"501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n"), written


@given(
    st.one_of(
        st.lists(st.tuples(st.integers(min_value=0, max_value=1100), st.sampled_from([b"\n", b"\r\n", b""])), max_size=12).map(
            lambda lines: b"".join(b"x" * n + end for n, end in lines)
        ),
        st.lists(st.integers(min_value=995, max_value=1005), max_size=6).map(lambda lengths: b"\n".join(b"y" * n for n in lengths)),
        st.binary(max_size=3000),
    )
)
@settings(max_examples=500, deadline=None)
def test_the_long_line_check_agrees_with_splitting(body: bytes) -> None:
    """_has_long_line steps through the body with rfind; splitting it into lines is the definition."""
    from relay.smtp.server import _MAX_LINE, _has_long_line

    assert _has_long_line(body) == (max(map(len, body.split(b"\n"))) > _MAX_LINE)


def test_the_long_line_check_at_the_limit() -> None:
    from relay.smtp.server import _has_long_line

    for before in (b"", b"a\n", b"b" * 999 + b"\n", b"c" * 1000 + b"\n" + b"d" * 500 + b"\n"):
        for after in (b"", b"\n", b"\nshort\n"):
            assert not _has_long_line(before + b"x" * 1000 + after)
            assert _has_long_line(before + b"x" * 1001 + after)
    assert _has_long_line(b"\r\n" + b"y" * 1000 + b"\r\n")  # 1,000 octets before the CR: 1,001 before the LF
    assert not _has_long_line(b"\r\n" + b"y" * 999 + b"\r\n")


# --- the DATA reader's one scan (issue 20, session 19) ---------------------------------------------


def _body_by_find_and_replace(chunks: list[bytes], limit: int) -> tuple[tuple[bytes | None, str | None], bytes]:
    """The DATA reader as sessions 16-18 had it, for the same chunks: the end marker found by its own
    scan of each chunk, the dots removed by a second scan (`replace`) of the body. With what is left
    for the command loop."""
    from relay.smtp.server import _has_long_line

    buf = bytearray(b"\r\n")
    scanned = 0
    too_much = False
    for taken, chunk in enumerate(chunks, 1):
        buf += chunk
        end = buf.find(b"\r\n.\r\n", scanned)
        if end >= 0:
            break
        scanned = max(0, len(buf) - 4)
        if limit and len(buf) - 2 > limit:
            too_much = True
            del buf[:scanned]
            scanned = 0
    else:
        return (None, None), b""
    rest = bytes(buf[end + 5 :]) + b"".join(chunks[taken:])
    if too_much or (limit and end > limit):
        return (b"", replies_module.TOO_BIG), rest
    body = bytes(buf[: end + 2])
    if _has_long_line(body):
        return (b"", replies_module.LINE_TOO_LONG), rest
    if b"\0" in body:
        return (b"", replies_module.NUL_IN_MESSAGE), rest
    return (body.replace(b"\r\n.", b"\r\n")[2:], None), rest


async def _body_read_by_the_session(chunks: list[bytes], limit: int) -> tuple[tuple[bytes | None, str | None], bytes]:
    """RelaySMTP._read_body given `chunks` as separate arrivals, each taken before the next comes."""
    loop = asyncio.get_running_loop()
    server = RelaySMTP(object(), limits=ConnectionLimits(5, 5), hostname="relay.test", loop=loop, data_size_limit=limit)
    reader = server._reader = asyncio.StreamReader(limit=server.line_length_limit, loop=loop)
    reading = loop.create_task(server._read_body())
    try:
        for chunk in chunks:
            for _ in range(3):
                await asyncio.sleep(0)
            server.data_received(chunk)
        for _ in range(3):
            await asyncio.sleep(0)
        if not reading.done():
            reader.feed_eof()
        return await reading, bytes(reader._buffer)  # type: ignore[attr-defined]
    finally:
        if server._timeout_handle is not None:
            server._timeout_handle.cancel()


_BODY_PIECES = [b"\r\n", b".", b"..", b"\r", b"\n", b"x", b"text", b"\r\n.\r\n", b"\r\n..\r\n", b"\0", b"z" * 1001]


@given(
    st.lists(st.sampled_from(_BODY_PIECES), max_size=30).map(b"".join),
    st.sampled_from([b"\r\n.\r\n", b"\r\n.\r\nNOOP\r\n", b".\r\n", b""]),
    st.lists(st.integers(min_value=1, max_value=40), max_size=8),
    st.sampled_from([0, 12, 40, 2000]),
)
@settings(max_examples=400, deadline=None)
def test_the_body_reader_agrees_with_find_and_replace(body: bytes, tail: bytes, cuts: list[int], limit: int) -> None:
    """One scan for the end marker and the dots to remove gives the body, the refusal and the bytes
    left for the command loop that a scan for each gave, however the stream is cut into arrivals."""
    stream = body + tail
    chunks, at = [], 0
    for cut in cuts:
        if at + cut < len(stream):
            chunks.append(stream[at : at + cut])
            at += cut
    chunks.append(stream[at:])
    chunks = [chunk for chunk in chunks if chunk]
    loop = asyncio.new_event_loop()
    try:
        ours = loop.run_until_complete(_body_read_by_the_session(chunks, limit))
    finally:
        loop.close()
    assert ours == _body_by_find_and_replace(chunks, limit), (chunks, limit)
