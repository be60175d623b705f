"""relay/events/webhook_http.py, the webhook sender's HTTP/1.1 client, against a scripted server on 127.0.0.1:
connections are kept and reused, a connection the server dropped while idle costs no failed POST,
and every way an answer can end (length, chunks, close) leaves the next POST working."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import pytest

from relay.events.webhook_http import EndpointClient, HttpError
from tests.conftest import CertFiles

Answer = Callable[[int], bytes]  # request number (from 1) → the raw answer


@dataclass
class Scripted:
    answer: Answer
    close_after: bool = False  # drop the connection after each answer, without saying so
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks?x=1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answer(len(self.requests)))
                await writer.drain()
                if self.close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    async def start(answer: Answer, close_after: bool = False, tls: ssl.SSLContext | None = None) -> Scripted:
        s = Scripted(answer, close_after)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0, ssl=tls)
        servers.append(s)
        return s

    yield start  # type: ignore[misc]
    for s in servers:
        assert s.server is not None
        s.server.close()


def no_content(n: int) -> bytes:
    return b"HTTP/1.1 204 No Content\r\n\r\n"


async def post_all(client: EndpointClient, count: int) -> list[int]:
    statuses = []
    for i in range(count):
        async with asyncio.timeout(10):
            statuses.append(await client.post(b'{"n":%d}' % i, {"content-type": "application/json", "webhook-id": f"evt_{i}"}))
    return statuses


async def test_one_connection_carries_every_post_with_host_path_and_length(scripted: Callable[..., Scripted]) -> None:
    server = await scripted(no_content)
    client = EndpointClient(server.url)
    assert await post_all(client, 3) == [204, 204, 204]
    client.close()
    assert server.connections == 1
    head, _, body = server.requests[2].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hooks?x=1 HTTP/1.1"
    assert f"host: {server.url.split('/')[2]}" in lines and "webhook-id: evt_2" in lines
    assert f"content-length: {len(body)}" in lines and body == b'{"n":2}'


async def test_a_connection_the_server_dropped_while_idle_is_replaced_without_a_failed_post(
    scripted: Callable[..., Scripted],
) -> None:
    server = await scripted(no_content, close_after=True)
    client = EndpointClient(server.url)
    for _ in range(3):
        assert await post_all(client, 1) == [204]
        await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
    client.close()
    assert len(server.requests) == 3 and server.connections == 3


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nok\r\n1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\n", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n\r\n", False),  # no length: the body ends with the connection
    ],
    ids=["length", "chunked", "interim", "connection-close", "http-1.0", "until-close"],
)
async def test_every_way_an_answer_ends_leaves_the_next_post_working(
    scripted: Callable[..., Scripted], answer: bytes, reused: bool
) -> None:
    server = await scripted(lambda n: answer if n == 1 else no_content(n))
    client = EndpointClient(server.url)
    first, second = await post_all(client, 2)
    client.close()
    assert first == int(answer.rsplit(b"HTTP/1.", 1)[1][2:5]) and second == 204
    assert server.connections == (1 if reused else 2)


async def test_an_answer_that_is_not_http_is_an_error(scripted: Callable[..., Scripted]) -> None:
    server = await scripted(lambda n: b"220 smtp.example ESMTP\r\n\r\n")
    client = EndpointClient(server.url)
    with pytest.raises(HttpError):
        await post_all(client, 1)
    client.close()


async def test_a_refused_connection_raises_oserror() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(OSError):
        await post_all(EndpointClient(f"http://127.0.0.1:{port}/"), 1)


async def test_https_checks_the_certificate_and_keeps_the_connection(scripted: Callable[..., Scripted], tls_cert: CertFiles) -> None:
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(tls_cert.cert, tls_cert.key)
    server = await scripted(no_content, tls=server_side)
    url = server.url.replace("http://127.0.0.1", "https://localhost")
    trusting = ssl.create_default_context(cafile=str(tls_cert.cert))
    client = EndpointClient(url, ssl_context=trusting)
    assert await post_all(client, 2) == [204, 204]
    client.close()
    assert server.connections == 1
    with pytest.raises(ssl.SSLError):  # the system's CAs do not know this certificate
        await post_all(EndpointClient(url), 1)
