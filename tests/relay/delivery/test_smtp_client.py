"""relay.delivery.smtp_client against hand-scripted servers: a pipelined group really is sent as one
group, pipelined and split replies are parsed in order, a server that is not SMTP, talks too much or
says nothing breaks the connection, AUTH mechanisms, the message on the wire."""

from __future__ import annotations

import asyncio
import base64
import hmac
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from relay.config import UpstreamConfig
from relay.delivery import smtp_client
from relay.delivery.smtp_client import Broken, ClientError, Reply
from relay.delivery.upstream import Upstream
from relay.errors import UpstreamRejected, UpstreamUnavailable

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | object"]


@asynccontextmanager
async def scripted(script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]) -> AsyncIterator[int]:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)  # type: ignore[misc]
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *extensions: str) -> None:
    writer.write(b"220 scripted ESMTP\r\n")
    assert (await reader.readline()).startswith(b"EHLO ")
    lines = ["scripted", *extensions]
    writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n" for i, x in enumerate(lines)).encode())


async def connect(port: int, **kw: object) -> smtp_client.Connection:
    settings: dict[str, object] = {"timeout": 5.0, "local_hostname": "relay.test", "starttls": False, "tls_context": None}
    settings.update(kw)
    return await smtp_client.connect("127.0.0.1", port, **settings)  # type: ignore[arg-type]


async def test_a_pipelining_upstream_gets_mail_rcpt_and_data_as_one_group() -> None:
    """This server answers nothing until DATA has arrived: a client waiting for each reply would
    time out, as aiosmtplib does. Its three replies come in one segment and are all read."""
    seen: list[bytes] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "PIPELINING", "8BITMIME")
        group = b""
        while not group.endswith(b"DATA\r\n"):
            line = await reader.readline()
            if not line:
                return  # the client gave up waiting for a reply
            group += line
        seen.append(group)
        writer.write(b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n250 2.1.5 Ok\r\n354 go on\r\n")
        seen.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 2.0.0 Ok: queued as Q1\r\n")
        assert await reader.readline() == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    async with scripted(server) as port:
        up = Upstream(UpstreamConfig(host="127.0.0.1", port=port, starttls="off", timeout=2), local_hostname="relay.test")
        result = await up.send("news@shop.example", ["gone@example.net", "a@example.net"], b"Subject: x\r\n\r\n.dot\r\n")
        await up.close()
    assert seen[0] == b"MAIL FROM:<news@shop.example>\r\nRCPT TO:<gone@example.net>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n"
    assert seen[1] == b"Subject: x\r\n\r\n..dot\r\n.\r\n"
    assert result.accepted == ("a@example.net",) and result.refused == {"gone@example.net": (550, "5.1.1 No such user")}
    assert result.reply == "250 2.0.0 Ok: queued as Q1"


async def test_a_group_whose_replies_stop_part_way_keeps_those_that_came() -> None:
    """The replies to a pipelined group arrive one by one, then the upstream hangs up: the reply to
    MAIL FROM came (250), so this is a failure during the transaction, not a stale connection to
    retry; a refused MAIL FROM that came first is reported as the refusal."""
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        await greet(reader, writer, "PIPELINING")
        for _ in range(3):
            await reader.readline()
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"250 2.1.5 Ok\r\n")
        await writer.drain()

    for first, error in ((b"250 2.1.0 Ok\r\n", UpstreamUnavailable), (b"553 5.7.1 Sender refused\r\n", UpstreamRejected)):
        async with scripted(lambda r, w: server(r, w, first)) as port:
            up = Upstream(UpstreamConfig(host="127.0.0.1", port=port, starttls="off", timeout=2), local_hostname="relay.test")
            with pytest.raises(error) as raised:
                await up.send("news@shop.example", ["a@example.net"], b"Subject: x\r\n\r\nhi\r\n")
            await up.close()
        if error is UpstreamUnavailable:
            assert "during the transaction" in str(raised.value)
        else:
            assert raised.value.code == 553


async def test_replies_split_anywhere_are_put_together() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        await reader.readline()
        for piece in (b"250-scripted\r", b"\n250-PIPE", b"LINING\r\n250-AUTH PLAIN", b" LOGIN\r\n25", b"0 SIZE 1000\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        await reader.readline()

    async with scripted(server) as port:
        conn = await connect(port)
        conn.close()
    assert conn.pipelining and conn.extensions["size"] == "1000" and conn.auth_methods == ("PLAIN", "LOGIN")


@pytest.mark.parametrize(
    "answer",
    [b"hello, this is not SMTP\r\n", b"250-" + b"x" * (smtp_client.MAX_REPLY + 10)],
    ids=["not-smtp", "endless-reply"],
)
async def test_a_server_that_does_not_speak_smtp_breaks_the_connection(answer: bytes) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await reader.read(1)

    async with scripted(server) as port:
        with pytest.raises(Broken):
            await connect(port)


async def test_silence_is_a_timeout() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # never greets

    async with scripted(server) as port:
        with pytest.raises(Broken, match="timed out"):
            await connect(port, timeout=0.2)


async def test_each_wait_has_its_own_timeout_from_one_timer() -> None:
    """The reply timer is armed once and moved only when it fires early: a wait that begins after an
    idle spell still has its whole timeout (the timer armed for an earlier wait does not cut it
    short), a reply later than the timeout still breaks the connection, and quick replies do not
    make a timer each."""
    loop = asyncio.get_running_loop()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        for delay in (0.0, 0.0, 0.0, 0.25, 0.6):
            await reader.readline()
            await asyncio.sleep(delay)
            writer.write(b"250 2.0.0 Ok\r\n")
        await reader.read(1)

    async with scripted(server) as port:
        conn = await connect(port, timeout=0.4)
        try:
            made: list[float] = []
            call_at, call_later = loop.call_at, loop.call_later

            def counting_at(when: float, callback: Callable[..., object], *args: object, **kw: object) -> asyncio.TimerHandle:
                made.append(when)
                return call_at(when, callback, *args, **kw)  # type: ignore[arg-type]

            def counting_later(delay: float, callback: Callable[..., object], *args: object, **kw: object) -> asyncio.TimerHandle:
                made.append(loop.time() + delay)
                return call_later(delay, callback, *args, **kw)  # type: ignore[arg-type]

            loop.call_at, loop.call_later = counting_at, counting_later  # type: ignore[method-assign]
            try:
                for _ in range(3):
                    assert (await conn.command(b"NOOP")).code == 250
                assert len(made) <= 1, made  # at most one timer for three quick replies (none if still armed)
                await asyncio.sleep(0.3)  # idle: the timer armed for the quick replies is nearly due
                started = loop.time()
                assert (await conn.command(b"NOOP")).code == 250  # 0.25 s: within its own 0.4 s
                assert loop.time() - started >= 0.2
                started = loop.time()
                with pytest.raises(Broken, match="timed out"):
                    await conn.command(b"NOOP")  # 0.6 s: over
                assert 0.35 <= loop.time() - started < 0.59
            finally:
                del loop.call_at, loop.call_later
        finally:
            conn.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
async def test_auth_mechanisms(mechanism: str) -> None:
    said: list[bytes] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, f"AUTH {mechanism}")
        line = await reader.readline()
        said.append(line)
        if mechanism == "LOGIN":
            writer.write(b"334 UGFzc3dvcmQ6\r\n")
            said.append(await reader.readline())
        elif mechanism == "CRAM-MD5":
            writer.write(b"334 " + base64.b64encode(b"<1.2@scripted>") + b"\r\n")
            said.append(await reader.readline())
        writer.write(b"235 2.7.0 ok\r\n")
        await reader.readline()

    async with scripted(server) as port:
        conn = await connect(port, username="relay", password="s3cret")
        conn.close()
    if mechanism == "PLAIN":
        assert said == [b"AUTH PLAIN " + base64.b64encode(b"\0relay\0s3cret") + b"\r\n"]
    elif mechanism == "LOGIN":
        assert said == [b"AUTH LOGIN " + base64.b64encode(b"relay") + b"\r\n", base64.b64encode(b"s3cret") + b"\r\n"]
    else:
        digest = hmac.new(b"s3cret", b"<1.2@scripted>", "md5").hexdigest().encode()
        assert said == [b"AUTH CRAM-MD5\r\n", base64.b64encode(b"relay " + digest) + b"\r\n"]


async def test_auth_refused_and_auth_not_offered() -> None:
    async def refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "AUTH PLAIN")
        await reader.readline()
        writer.write(b"535 5.7.8 no\r\n")
        await reader.read(1)

    async def without_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "PIPELINING")
        await reader.read(1)

    async with scripted(refusing) as port:
        with pytest.raises(smtp_client.AuthFailed) as failed:
            await connect(port, username="relay", password="wrong")
    assert failed.value.reply == Reply(535, "5.7.8 no")
    async with scripted(without_auth) as port:
        with pytest.raises(ClientError, match="AUTH"):
            await connect(port, username="relay", password="x")


def test_the_message_on_the_wire() -> None:
    assert smtp_client.dot_stuffed(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert smtp_client.dot_stuffed(b".a\nb\rc") == b"..a\r\nb\r\nc\r\n.\r\n"
    assert smtp_client.dot_stuffed(b"") == b"\r\n.\r\n"
    assert smtp_client.dot_stuffed(b".") == b"..\r\n.\r\n"
    assert smtp_client.dot_stuffed(b"a\n.\n..\r\n.") == b"a\r\n..\r\n...\r\n..\r\n.\r\n"


def _dot_stuffed_by_regex(content: bytes) -> bytes:
    """The stuffing as RFC 5321 4.5.2 words it (a line that starts with a dot gets another), by
    regular expressions: what dot_stuffed did before its bytes.replace fast path."""
    content = re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", content) + b".\r\n"


def test_dot_stuffing_agrees_with_the_regex_on_random_messages() -> None:
    rng = random.Random(20)
    alphabet = [b".", b"\r", b"\n", b"\r\n", b"a", b" ", b".."]
    for _ in range(5000):
        content = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        assert smtp_client.dot_stuffed(content) == _dot_stuffed_by_regex(content), content
    message = (Path(__file__).parents[3] / "bench" / "message.eml").read_bytes()
    assert smtp_client.dot_stuffed(message) == _dot_stuffed_by_regex(message)


def test_a_control_character_in_an_address_is_refused() -> None:
    with pytest.raises(ValueError):
        smtp_client.address_command(b"RCPT TO:", "a@example.net>\r\nRCPT TO:<b@example.net", [], "ascii")
    assert smtp_client.address_command(b"MAIL FROM:", "a@example.net", ["BODY=8BITMIME"], "ascii") == (
        b"MAIL FROM:<a@example.net> BODY=8BITMIME\r\n"
    )


async def test_a_pooled_connection_that_spoke_unasked_is_not_used_again() -> None:
    """An upstream that says 421 on an idle connection and keeps it open: the next copy goes over a
    new connection, so no reply is paired with the wrong command."""
    sessions: list[int] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append(1)
        await greet(reader, writer)
        for line in (b"MAIL", b"RCPT", b"DATA"):
            assert (await reader.readline()).startswith(line)
            writer.write(b"354 go on\r\n" if line == b"DATA" else b"250 ok\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 queued\r\n421 4.4.2 idle too long\r\n")  # one segment: the 421 is there at once
        await reader.read(1)

    async with scripted(server) as port:
        up = Upstream(UpstreamConfig(host="127.0.0.1", port=port, starttls="off", timeout=2), local_hostname="relay.test")
        await up.send("news@shop.example", ["a@example.net"], b"Subject: 1\r\n\r\nx\r\n")
        result = await up.send("news@shop.example", ["a@example.net"], b"Subject: 2\r\n\r\nx\r\n")
        await up.close()
    assert result.reply == "250 queued" and len(sessions) == 2
