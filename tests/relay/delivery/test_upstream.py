"""The pooled upstream client against a real aiosmtpd upstream, with and without PIPELINING: replies
classified, connections reused and replaced when stale, STARTTLS and AUTH towards the upstream."""

from __future__ import annotations

import ssl
from typing import Any, Iterator

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import CertFiles, RecordingHandler, RecordingUpstream, free_port, message

from relay.config import UpstreamConfig
from relay.delivery import smtp_client
from relay.delivery.upstream import Upstream
from relay.errors import UpstreamRejected, UpstreamUnavailable
from relay.metrics import Metrics


class PipeliningHandler(RecordingHandler):
    """aiosmtpd reads pipelined commands fine but does not announce PIPELINING; this one does."""

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


@pytest.fixture(params=["one-by-one", "pipelining"])
def upstream(request: pytest.FixtureRequest) -> Iterator[RecordingUpstream]:
    """Every test here runs against an upstream that offers PIPELINING and one that does not."""
    up = RecordingUpstream()
    if request.param == "pipelining":
        up.handler = PipeliningHandler()
    up.start()
    try:
        yield up
    finally:
        up.stop()


def client(up: RecordingUpstream | int, **changes: Any) -> Upstream:
    port = up if isinstance(up, int) else up.port
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": port, "starttls": "off", "timeout": 5, "pool_size": 2}
    settings.update(changes)
    return Upstream(UpstreamConfig(**settings), Metrics(), local_hostname="relay.test")


async def test_send_returns_accepted_and_queue_id(upstream: RecordingUpstream) -> None:
    up = client(upstream)
    try:
        result = await up.send("orders@shop.example", ["a@example.nl", "b@example.nl"], message())
    finally:
        await up.close()
    assert result.accepted == ("a@example.nl", "b@example.nl") and result.refused == {}
    assert result.reply.startswith("250") and "queued as UP00001" in result.reply
    assert upstream.messages[0].rcpt_tos == ["a@example.nl", "b@example.nl"]


async def test_per_recipient_refusals_are_classified(upstream: RecordingUpstream) -> None:
    upstream.answer_rcpt("busy@example.nl", "450 4.2.1 Mailbox busy")
    upstream.answer_rcpt("gone@example.nl", "550 5.1.1 No such user")
    up = client(upstream)
    try:
        result = await up.send("orders@shop.example", ["a@example.nl", "busy@example.nl", "gone@example.nl"], message())
    finally:
        await up.close()
    assert result.accepted == ("a@example.nl",)
    assert result.temporarily_refused == ("busy@example.nl",)
    assert result.permanently_refused == ("gone@example.nl",)
    assert upstream.recipients() == ["a@example.nl"]


async def test_every_recipient_refused(upstream: RecordingUpstream) -> None:
    upstream.answer_rcpt("gone@example.nl", "550 5.1.1 No such user")
    upstream.answer_rcpt("busy@example.nl", "450 4.2.1 Mailbox busy")
    up = client(upstream)
    try:
        with pytest.raises(UpstreamRejected) as rejected:
            await up.send("orders@shop.example", ["gone@example.nl"], message())
        assert rejected.value.code == 550 and "5.1.1" in rejected.value.reply
        with pytest.raises(UpstreamUnavailable) as deferred:
            await up.send("orders@shop.example", ["busy@example.nl"], message())
        assert deferred.value.code == 450
        # The pooled connection was reset and still works.
        assert (await up.send("orders@shop.example", ["a@example.nl"], message())).accepted == ("a@example.nl",)
    finally:
        await up.close()


async def test_data_replies(upstream: RecordingUpstream) -> None:
    up = client(upstream)
    try:
        upstream.answer_data("554 5.7.1 Spam")
        with pytest.raises(UpstreamRejected):
            await up.send("orders@shop.example", ["a@example.nl"], message())
        upstream.answer_data("451 4.3.0 Later")
        with pytest.raises(UpstreamUnavailable):
            await up.send("orders@shop.example", ["a@example.nl"], message())
    finally:
        await up.close()
    assert upstream.messages == []


async def test_nothing_listening_is_unavailable() -> None:
    up = client(free_port())
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await up.send("orders@shop.example", ["a@example.nl"], message())
    with pytest.raises(UpstreamUnavailable):
        await up.probe()
    await up.close()


async def test_connections_are_pooled_and_stale_ones_replaced(upstream: RecordingUpstream) -> None:
    up = client(upstream)
    try:
        for _ in range(3):
            await up.send("orders@shop.example", ["a@example.nl"], message())
        controller = upstream._controller
        assert controller is not None and len(controller.sessions) == 2  # start-up trigger + one pooled connection
        upstream.stop()  # the pooled connection dies with it
        upstream.start()
        result = await up.send("orders@shop.example", ["a@example.nl"], message())
        assert result.accepted == ("a@example.nl",)
    finally:
        await up.close()
    assert len(upstream.messages) == 4


@pytest.fixture
def tls_upstream(tls_cert: CertFiles) -> Iterator[RecordingUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_cert.cert), str(tls_cert.key))

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login in (b"relay", "relay") and data.password in (
            b"upstream-secret", "upstream-secret"
        )
        return AuthResult(success=ok, handled=False, auth_data="relay" if ok else None)

    up = RecordingUpstream(tls_context=context, require_starttls=True, authenticator=authenticator, auth_require_tls=True)
    up.start()
    try:
        yield up
    finally:
        up.stop()


async def test_starttls_and_auth_towards_upstream(tls_upstream: RecordingUpstream) -> None:
    up = client(tls_upstream, starttls="required", tls_verify=False, username="relay", password="upstream-secret")
    try:
        await up.send("orders@shop.example", ["a@example.nl"], message())
    finally:
        await up.close()
    (got,) = tls_upstream.messages
    assert got.tls and got.login == "relay"


async def test_wrong_upstream_credentials_are_a_tempfail(tls_upstream: RecordingUpstream) -> None:
    up = client(tls_upstream, starttls="required", tls_verify=False, username="relay", password="wrong")
    with pytest.raises(UpstreamUnavailable, match="credentials"):
        await up.send("orders@shop.example", ["a@example.nl"], message())
    await up.close()
    assert tls_upstream.messages == []


async def test_verified_tls_refuses_a_self_signed_upstream(tls_upstream: RecordingUpstream) -> None:
    up = client(tls_upstream, starttls="required", tls_verify=True, username="relay", password="upstream-secret")
    with pytest.raises(UpstreamUnavailable):
        await up.send("orders@shop.example", ["a@example.nl"], message())
    await up.close()


async def test_required_starttls_without_offer_is_unavailable(upstream: RecordingUpstream) -> None:
    up = client(upstream, starttls="required", tls_verify=False)
    with pytest.raises(UpstreamUnavailable):
        await up.send("orders@shop.example", ["a@example.nl"], message())
    await up.close()
    assert upstream.messages == []


class CountingFence:
    """An outbox copy's fence (relay.delivery.outbox): confirmed in the store before the send, or not yet."""

    def __init__(self, confirmed: bool) -> None:
        self.confirmed = confirmed
        self.confirms = 0
        self.checks = 0

    async def confirm(self) -> None:
        self.confirms += 1
        self.confirmed = True

    def check(self) -> None:
        self.checks += 1


async def test_a_fence_confirmed_before_the_send_lets_data_go_in_the_pipelined_group(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = RecordingUpstream()
    sink.handler = PipeliningHandler()
    sink.start()
    up = client(sink)
    writes: list[bytes] = []
    write = smtp_client.Connection.write

    def counted(self: smtp_client.Connection, data: bytes) -> None:
        writes.append(data)
        write(self, data)

    try:
        await up.send("orders@shop.example", ["warm@example.nl"], message())  # the pooled connection, greeted
        monkeypatch.setattr(smtp_client.Connection, "write", counted)
        later, ahead = CountingFence(confirmed=False), CountingFence(confirmed=True)
        await up.send("orders@shop.example", ["a@example.nl"], message(), fence=later)
        assert len(writes) == 3 and later.confirms == 1  # MAIL+RCPT, then DATA once confirmed, then the message
        writes.clear()
        await up.send("orders@shop.example", ["b@example.nl"], message(), fence=ahead)
        assert len(writes) == 2 and writes[0].endswith(b"DATA\r\n")  # MAIL+RCPT+DATA, then the message
        assert ahead.confirms == 0 and ahead.checks == 1  # its deadline is still checked before the message
    finally:
        await up.close()
        sink.stop()
    assert [m.rcpt_tos for m in sink.messages] == [["warm@example.nl"], ["a@example.nl"], ["b@example.nl"]]
