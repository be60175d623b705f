"""Who may send and how much (docs/SPEC.md §4): AUTH after STARTTLS or on the implicit-TLS listener, trusted
networks, relay denial, lock-out, sender identity, SIZE, recipients, idle timeout, connection limits."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PASSWORD,
    CertFiles,
    RecordingUpstream,
    asend,
    insecure_client_context,
    make_config,
    message,
    transaction,
    until,
)

UNTRUSTED = {"trusted_networks": ["192.0.2.0/24"]}


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@pytest.fixture
async def tls_relay(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, tls_cert: CertFiles) -> Any:
    config = make_config(
        tmp_path, upstream.port, account=UNTRUSTED,
        smtp={"tls_cert": str(tls_cert.cert), "tls_key": str(tls_cert.key), "tls_listen": "127.0.0.1:0"},
    )
    return await start_relay(config)


def _auth_before_tls(port: int) -> tuple[int, bytes, bool]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        advertised = client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN " + plain("shop", PASSWORD))
        return code, text, advertised


async def test_auth_refused_before_starttls(tls_relay: Any, upstream: RecordingUpstream) -> None:
    code, text, advertised = await asyncio.to_thread(_auth_before_tls, tls_relay.smtp_port)
    assert not advertised
    assert 500 <= code < 600 and code != 235, (code, text)
    # Without AUTH this client is nobody: relaying is denied.
    out = await asend(tls_relay.smtp_port)
    assert out.code == 550 and out.text.startswith("5.7.1 [relay.denied]"), out
    assert upstream.messages == []


async def test_auth_after_starttls_sends(tls_relay: Any, upstream: RecordingUpstream) -> None:
    out = await asend(tls_relay.smtp_port, starttls=True, login=("shop", PASSWORD))
    assert out.code == 250, out
    assert len(upstream.messages) == 1


async def test_auth_login_mechanism_after_starttls(tls_relay: Any, upstream: RecordingUpstream) -> None:
    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", tls_relay.smtp_port, timeout=10) as client:
            client.ehlo("client.test")
            client.starttls(context=insecure_client_context())
            client.ehlo("client.test")
            client.user, client.password = "shop", PASSWORD
            code, text = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            assert code == 235, text
            return transaction(client, "orders@shop.example", ["anna@example.nl"], message())

    out = await asyncio.to_thread(run)
    assert out.code == 250, out


async def test_implicit_tls_listener(tls_relay: Any, upstream: RecordingUpstream) -> None:
    assert tls_relay.tls_port
    out = await asend(tls_relay.tls_port, implicit_tls=True, login=("shop", PASSWORD))
    assert out.code == 250, out
    assert len(upstream.messages) == 1


async def test_auth_without_tls_when_allowed(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, account=UNTRUSTED, smtp={"auth_require_tls": False}))
    out = await asend(relay.smtp_port, login=("shop", PASSWORD))
    assert out.code == 250, out


async def test_trusted_network_sends_without_auth(relay: Any, upstream: RecordingUpstream) -> None:
    out = await asend(relay.smtp_port)
    assert out.code == 250, out


async def test_relay_denied_for_everyone_else(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    # policy: platform (relay.denied): never an open relay
    relay = await start_relay(make_config(tmp_path, upstream.port, account=UNTRUSTED))
    out = await asend(relay.smtp_port, rcpts=["anna@example.nl", "postmaster@example.nl"])
    assert [c for c, _ in out.rcpts] == [550, 550]
    assert all(t.startswith("5.7.1 [relay.denied]") for _, t in out.rcpts), out
    assert out.data is None and upstream.messages == []
    hits = relay.services.metrics.rule_hits.labels("relay.denied", "reject")._value.get()
    assert hits == 2


def _bad_passwords(port: int, attempts: int) -> list[tuple[int, str]]:
    replies: list[tuple[int, str]] = []
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.test")
    try:
        for _ in range(attempts):
            code, text = client.docmd("AUTH", "PLAIN " + plain("shop", "wrong password"))
            replies.append((code, text.decode()))
    except smtplib.SMTPServerDisconnected:
        replies.append((-1, "disconnected"))
    finally:
        client.close()
    return replies


async def test_bad_passwords_then_lockout(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(
        make_config(tmp_path, upstream.port, account=UNTRUSTED, smtp={"auth_require_tls": False, "auth_max_failures": 3})
    )
    replies = await asyncio.to_thread(_bad_passwords, relay.smtp_port, 4)
    assert replies[0][0] == 535 and replies[0][1].startswith("5.7.8"), replies
    assert replies[1][0] == 535
    assert replies[2][0] == 421 and replies[2][1].startswith("4.7.0"), replies
    assert replies[3][0] in (-1, 421)  # the server hung up after the 421
    # The address stays locked out, even with the right password.
    def good_login() -> tuple[int, str]:
        client = smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10)
        client.ehlo("client.test")
        try:
            code, text = client.docmd("AUTH", "PLAIN " + plain("shop", PASSWORD))
            return code, text.decode()
        finally:
            client.close()

    code, text = await asyncio.to_thread(good_login)
    assert code == 421 and text.startswith("4.7.0"), (code, text)
    assert relay.services.metrics.auth_failures._value.get() == 3


async def test_unknown_user_is_535(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, account=UNTRUSTED, smtp={"auth_require_tls": False}))
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        await asend(relay.smtp_port, login=("nobody", PASSWORD))
    assert err.value.smtp_code == 535


async def test_envelope_sender_outside_domains(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: mailpro M-echte-identiteit, clang E-werkelijke-identiteit (identity.sender_not_authorized)
    out = await asend(relay.smtp_port, message(sender="orders@other.example"), mail_from="orders@other.example")
    assert out.final[0] == 550 and out.final[1].startswith("5.7.1 [identity.sender_not_authorized]"), out
    assert upstream.messages == []


async def test_header_from_outside_domains(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: mailpro M-echte-identiteit, clang E-werkelijke-identiteit (identity.sender_not_authorized)
    out = await asend(relay.smtp_port, message(sender="ceo@other.example"))
    assert out.mail[0] == 250
    assert out.code == 550 and out.text.startswith("5.7.1 [identity.sender_not_authorized]"), out
    assert upstream.messages == []


async def test_size_limit(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"max_message_size": 4000}))

    def run() -> tuple[Any, Any, Any]:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=10) as client:
            client.ehlo("client.test")
            size = client.esmtp_features.get("size")
            announced = client.mail("orders@shop.example", ["SIZE=50000"])
            client.rset()
            big = message(body="x" * 70 + ("\r\n" + "y" * 70) * 100)
            out = transaction(client, "orders@shop.example", ["anna@example.nl"], big)
            return size, announced, out

    size, announced, out = await asyncio.to_thread(run)
    assert size == "4000"
    assert announced[0] == 552 and announced[1].decode().startswith("5.3.4"), announced
    assert out.code == 552 and out.text.startswith("5.3.4"), out
    assert upstream.messages == []
    assert (await asend(relay.smtp_port)).code == 250  # a small one still goes through


async def test_too_many_recipients(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"max_recipients": 2}))
    out = await asend(relay.smtp_port, rcpts=["a@example.nl", "b@example.nl", "c@example.nl"])
    assert [c for c, _ in out.rcpts] == [250, 250, 452]
    assert out.rcpts[2][1].startswith("4.5.3"), out
    assert out.code == 250
    assert sorted(upstream.recipients()) == ["a@example.nl", "b@example.nl"]


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


async def test_idle_timeout_closes_silent_clients(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"idle_timeout": 0.5}))

    def silent() -> bytes:
        with socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=10) as sock:
            return _read_until_closed(sock)

    data = await asyncio.to_thread(silent)
    assert data.startswith(b"220 ")
    assert b"\r\n421 " in data  # told why, then closed (recv() returned b"" well before its 10 s timeout)


def _connect_from(source: str, port: int) -> tuple[socket.socket, bytes]:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock, sock.recv(1024)


async def test_per_ip_connection_limit(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(
        make_config(tmp_path, upstream.port, smtp={"max_connections_per_ip": 2, "max_connections": 10})
    )
    port = relay.smtp_port
    first = await asyncio.to_thread(_connect_from, "127.0.0.1", port)
    second = await asyncio.to_thread(_connect_from, "127.0.0.1", port)
    third = await asyncio.to_thread(_connect_from, "127.0.0.1", port)
    other = await asyncio.to_thread(_connect_from, "127.0.0.2", port)
    try:
        assert first[1].startswith(b"220") and second[1].startswith(b"220")
        assert third[1].startswith(b"421 4.7.0"), third[1]
        assert other[1].startswith(b"220"), other[1]  # another address has its own budget
        first[0].close()
        await until(lambda: relay.limits.per_ip.get("127.0.0.1") == 1, what="release")
        again = await asyncio.to_thread(_connect_from, "127.0.0.1", port)
        assert again[1].startswith(b"220")
        again[0].close()
    finally:
        for sock, _ in (first, second, third, other):
            sock.close()


async def test_total_connection_limit(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    relay = await start_relay(
        make_config(tmp_path, upstream.port, smtp={"max_connections_per_ip": 10, "max_connections": 2})
    )
    port = relay.smtp_port
    socks = [await asyncio.to_thread(_connect_from, f"127.0.0.{i}", port) for i in (1, 2, 3)]
    try:
        assert [s[1][:3] for s in socks] == [b"220", b"220", b"421"], [s[1] for s in socks]
        assert relay.services.metrics.smtp_connections._value.get() == 2
    finally:
        for sock, _ in socks:
            sock.close()
    # Slots come back once the server has seen the clients leave.
    await until(lambda: relay.services.metrics.smtp_connections._value.get() == 0, what="connections released")
    out = await asend(port)
    assert out.code == 250


async def test_the_total_connection_limit_is_shared_by_the_workers(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any
) -> None:
    """max_connections is the relay's total: with workers = 2 each process admits its half
    (rounded up), so two workers never admit twice the configured total (issue 21)."""
    relay = await start_relay(
        make_config(tmp_path, upstream.port, smtp={"max_connections_per_ip": 10, "max_connections": 3, "workers": 2})
    )
    assert relay.limits.max_total == 2 and relay.limits.max_per_ip == 10
    socks = [await asyncio.to_thread(_connect_from, f"127.0.0.{i}", relay.smtp_port) for i in (1, 2, 3)]
    try:
        assert [s[1][:3] for s in socks] == [b"220", b"220", b"421"], [s[1] for s in socks]
    finally:
        for sock, _ in socks:
            sock.close()


async def test_stop_tells_idle_sessions_to_come_back(relay: Any) -> None:
    sock, greeting = await asyncio.to_thread(_connect_from, "127.0.0.1", relay.smtp_port)
    try:
        assert greeting.startswith(b"220")
        await relay.stop(grace=1)
        data = await asyncio.to_thread(_read_until_closed, sock)
        assert data.startswith(b"421 4.3.2"), data
    finally:
        sock.close()
