"""Faults an SMTP client meets (issue 15, items 2, 3, 9, 11, 12): slow uploads, a store failing
during delivery, syntax the relay must refuse, memory that must stay bounded, and a delivery that
must never go unrecorded. docs/faults-smtp.md lists the guarantees and names these tests."""

from __future__ import annotations

import asyncio
import errno
import re
import smtplib
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import SENDER, RecordingUpstream, asend, make_config, message, until
from tests.e2e.test_accounts_and_records import http_get
from tests.e2e.test_robustness import _raw_session

RELAY_ID = re.compile(r"Delivered as (\w+)")


def relay_id_of(text: str) -> str:
    found = RELAY_ID.search(text)
    assert found is not None, text
    return found.group(1)


# --- item 2: slow uploads ---------------------------------------------------------------------


def _reply(reader: Any) -> bytes:
    line = reader.readline()
    while line[3:4] == b"-":
        line = reader.readline()
    return line.rstrip(b"\r\n")


def _trickle(port: int, data: bytes, *, chunk: int, pause: float, give_up: float) -> tuple[bytes, int]:
    """A slow client: one transaction whose DATA goes `chunk` bytes every `pause` seconds. Returns the
    reply after the data (or the one the relay sent before hanging up) and how many bytes were sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        reader = sock.makefile("rb")
        assert _reply(reader).startswith(b"220 ")
        for command in (b"EHLO client.test", f"MAIL FROM:<{SENDER}>".encode(), b"RCPT TO:<anna@example.nl>", b"DATA"):
            sock.sendall(command + b"\r\n")
            assert _reply(reader)[:1] in (b"2", b"3"), command
        sent = 0
        deadline = time.monotonic() + give_up
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sock.sendall(data[sent : sent + chunk])
            except OSError:
                break  # the relay hung up: its reply is in the socket
            sent += chunk
            time.sleep(pause)  # the client's pace, not a synchronisation
        return _reply(reader), min(sent, len(data))


def slow_message() -> bytes:
    body = "\r\n".join(f"Line {n} of your order confirmation, sent slowly." for n in range(16))
    return message(body=body)


async def test_a_slow_upload_that_keeps_flowing_is_not_cut_off(
    start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    # 100 bytes every 0.3 s: a pause well inside idle_timeout each time, the whole upload far beyond it.
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"idle_timeout": 1}))
    content = slow_message()
    assert len(content) > 1000  # more than three seconds at this pace
    reply, sent = await asyncio.to_thread(
        _trickle, relay.smtp_port, content + b".\r\n", chunk=100, pause=0.3, give_up=30
    )
    assert reply.startswith(b"250 2.0.0"), reply
    assert len(upstream.messages) == 1
    assert b"Line 15 of your order" in upstream.messages[0].content


async def test_the_whole_data_limit_ends_a_never_ending_upload(
    start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"idle_timeout": 1, "data_timeout": 2}))
    endless = b"X-Filler: never ends\r\n" * 10_000  # no end of data, ever (the test gives up after 20 s)
    reply, sent = await asyncio.to_thread(_trickle, relay.smtp_port, endless, chunk=100, pause=0.3, give_up=20)
    assert reply.startswith(b"421 4.4.2") and b"too long" in reply, reply
    assert sent < len(endless)
    assert upstream.messages == []
    await until(lambda: not relay.limits.sessions, what="the session to end")


# --- item 3: the store failing during delivery --------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 8 MB tmpfs (the tests run as root), unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its file system is full; the file, to delete to free it."""
    path = folder / "filler"
    block = bytes(1 << 16)
    with open(path, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return path


async def test_disk_full_mid_delivery_is_a_store_tempfail_and_the_retry_delivers_nothing_twice(
    small_disk: Path, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, store={"url": f"sqlite:///{small_disk}/relay.db"}))
    upstream.answer_rcpt("bob@example.nl", "451 4.2.1 Mailbox busy, try again later")  # bob goes to the outbox
    content = message()
    rcpts = ["anna@example.nl", "bob@example.nl"]
    filler = fill(small_disk)
    first = await asend(relay.smtp_port, content, rcpts=rcpts)
    # Anna has her copy; bob's could not be kept: the client must retry, and is told why.
    assert first.code == 451 and first.text.startswith("4.3.0") and "store" in first.text, first.text
    assert upstream.recipients() == ["anna@example.nl"]

    filler.unlink()
    upstream.answer_rcpt("bob@example.nl", None)
    retry = await asend(relay.smtp_port, content, rcpts=rcpts)
    assert retry.code == 250 and "1 of 2 delivered by an earlier attempt" in retry.text, retry.text
    assert sorted(upstream.recipients()) == rcpts  # anna once, bob once
    await relay.recorder.flush()
    decisions = relay.services.store.decisions
    anna = await decisions.deliveries_to("anna@example.nl", ["shop"])
    bob = await decisions.deliveries_to("bob@example.nl", ["shop"])
    assert len(anna) == 1 and len(bob) == 1
    assert anna[0].relay_id != bob[0].relay_id  # anna's record is the first attempt's
    assert (await decisions.for_relay_id(anna[0].relay_id))[0].outcome == "tempfailed"


async def test_readyz_reports_a_store_on_a_full_disk_as_not_ready(
    small_disk: Path, start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, store={"url": f"sqlite:///{small_disk}/relay.db"}))
    status, text = await http_get(relay.admin_port, "/readyz")
    assert status == 200, text
    filler = fill(small_disk)
    status, text = await http_get(relay.admin_port, "/readyz")
    assert status == 503 and '"store": {"ok": false' in text and "full" in text, text
    filler.unlink()
    status, text = await http_get(relay.admin_port, "/readyz")
    assert status == 200, text


async def test_a_store_on_a_read_only_file_system_is_not_ready(small_disk: Path) -> None:
    # A file system cannot be remounted read-only under an open SQLite file (EBUSY), so the relay's
    # store stays where it is and the check looks at a read-only tmpfs through a second store object.
    from relay.errors import StoreUnavailable
    from relay.store.sqlite import SqliteStore

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(StoreUnavailable, match="read-only"):
        await SqliteStore(small_disk / "relay.db").check_writable()


async def test_the_write_probe_works_on_both_stores_and_leaves_ids_alone(store_url: str) -> None:
    from relay.config import StoreConfig
    from relay.store import open_store_for

    store = open_store_for(StoreConfig(url=store_url))
    await store.open()
    try:
        first = await store.decisions.reserve_ids("deliveries", 10)
        await store.check_writable()
        await store.check_writable()
        assert await store.decisions.reserve_ids("deliveries", 10) == first + 10
    finally:
        await store.close()


# --- item 9: SMTP syntax --------------------------------------------------------------------------


async def test_an_address_without_its_closing_bracket_is_a_syntax_error(relay: Any, upstream: RecordingUpstream) -> None:
    lines = [
        b"EHLO client.test",
        f"MAIL FROM:<{SENDER}".encode(),
        f"MAIL FROM:<{SENDER} SIZE=100".encode(),
        f"MAIL FROM:<{SENDER}>".encode(),
        b"RCPT TO:<anna@example.nl",
        b"RCPT TO:<anna@example.nl>",
        b"RSET",
    ]
    replies = await asyncio.to_thread(_raw_session, relay.smtp_port, lines)
    assert [r[:9] for r in replies] == [b"250 HELP", b"501 5.5.4", b"501 5.5.4", b"250 2.1.0", b"501 5.5.4", b"250 2.1.5", b"250 2.0.0"], replies


async def test_a_message_with_nul_is_refused_and_the_session_goes_on(relay: Any, upstream: RecordingUpstream) -> None:
    out = await asend(relay.smtp_port, message(body="Your order\x00 ships tomorrow."))
    assert out.code == 550 and out.text.startswith("5.6.0"), out.text
    assert upstream.messages == []
    again = await asend(relay.smtp_port, message())
    assert again.code == 250, again.text


async def test_undeclared_8bit_data_goes_upstream_declared_as_8bitmime(relay: Any, upstream: RecordingUpstream) -> None:
    content = message(body="Bedankt voor uw bestelling. Één pakket komt morgen.")
    assert not content.isascii()
    out = await asend(relay.smtp_port, content)  # no BODY=8BITMIME from this client
    assert out.code == 250, out.text
    (received,) = upstream.messages
    assert received.mail_options == ["BODY=8BITMIME"]
    assert "Één pakket".encode() in received.content  # every bit kept (RFC 6152)


async def test_8bit_data_for_an_upstream_without_8bitmime_is_refused(start_relay: Any, tmp_path: Path) -> None:
    seven_bit = RecordingUpstream(decode_data=True).start()  # aiosmtpd offers no 8BITMIME then
    try:
        relay = await start_relay(make_config(tmp_path, seven_bit.port))
        out = await asend(relay.smtp_port, message(body="Één pakket komt morgen."))
        assert out.code == 554 and out.text.startswith("5.6.3"), out.text
        assert seven_bit.messages == []
        ascii_only = await asend(relay.smtp_port, message())
        assert ascii_only.code == 250, ascii_only.text
        assert len(seven_bit.messages) == 1
    finally:
        seven_bit.stop()


# --- item 12: the delivery-id allocator running dry -------------------------------------------


async def test_a_dry_delivery_id_allocator_still_records_the_delivery(relay: Any, upstream: RecordingUpstream) -> None:
    ids = relay.pipeline.delivery_ids
    ids._next = ids._end  # the allocator ran dry before its refill landed
    outcome = await asend(relay.smtp_port)
    assert outcome.code == 250, outcome.text
    await relay.recorder.flush()
    deliveries = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
    assert [d.relay_id for d in deliveries] == [relay_id_of(outcome.text)]
    assert len(upstream.messages) == 1


async def test_no_delivery_id_means_a_tempfail_before_anything_leaves(
    start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, store={"timeout": 0.5}))
    ids = relay.pipeline.delivery_ids
    ids._next = ids._end
    # Another process holds the SQLite write lock: no block of ids can be reserved.
    blocker = sqlite3.connect(tmp_path / "var" / "relay.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        outcome = await asend(relay.smtp_port)
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert outcome.code == 451 and outcome.text.startswith("4.3.0"), outcome.text
    assert upstream.messages == []
    # The store is back: the client's retry is delivered and recorded.
    retry = await asend(relay.smtp_port)
    assert retry.code == 250, retry.text
    await relay.recorder.flush()
    deliveries = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
    assert [d.relay_id for d in deliveries] == [relay_id_of(retry.text)]


# --- item 11: the per-address auth-failure map stays bounded ----------------------------------


def _fail_auth_from(port: int, source: str) -> int:
    """One AUTH PLAIN with a wrong password from `source`: the reply code (421 when locked out)."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        client.ehlo("client.test")
        code, _ = client.docmd("AUTH", "PLAIN AG5vYm9keQB3cm9uZw==")  # \0nobody\0wrong
        return code
    except smtplib.SMTPServerDisconnected:
        return 421
    finally:
        client.close()


async def test_auth_failures_from_many_addresses_stay_bounded(
    start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, smtp={"auth_require_tls": False, "auth_max_failures": 2}))
    lockout = relay.lockout
    lockout.max_tracked = 40  # the default is 100,000; the same code path with fewer addresses
    for n in range(200):
        source = f"127.0.{n // 250}.{n % 250 + 2}"
        assert await asyncio.to_thread(_fail_auth_from, relay.smtp_port, source) == 535
        if n % 2:  # every other address fails twice and is locked out
            assert await asyncio.to_thread(_fail_auth_from, relay.smtp_port, source) == 421
        assert len(lockout.failures) <= 40 and len(lockout.locked_until) <= 40
    assert len(lockout.failures) >= 30 and len(lockout.locked_until) >= 30  # bounded, not emptied
    # The newest lock-out still holds, and a fresh address is still locked out at its second failure.
    assert await asyncio.to_thread(_fail_auth_from, relay.smtp_port, "127.0.0.201") == 421
    codes = [await asyncio.to_thread(_fail_auth_from, relay.smtp_port, "127.0.9.9") for _ in range(3)]
    assert codes == [535, 421, 421]
