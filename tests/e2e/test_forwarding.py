"""Forwarding end to end (docs/SPEC.md §3): 250 only after the upstream accepted or the outbox holds the
rest, 451 when the upstream is down, 5xx passed through, per-recipient copies retried from the outbox."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any, AsyncIterator

from conftest import RecordingUpstream, asend, make_config, message, send, until
from msgspec.structs import replace

from relay.delivery.carrier import Copy


def relay_id_of(text: str) -> str:
    found = re.search(r"(?:Delivered as |\()([0-9a-f]{12,})", text)
    assert found, text
    return found.group(1)


def per_recipient_copies(relay: Any) -> None:
    """What the unsubscribe feature does for marketing: one upstream transaction per recipient."""
    original = relay.pipeline.copies

    async def build(*args: Any) -> AsyncIterator[Copy]:
        async for c in original(*args):
            for r in c.recipients:
                yield Copy((r,), c.content)

    relay.pipeline.copies = build  # the test's fault injection, not wiring


async def outbox_empty(relay: Any) -> bool:
    return await relay.services.store.outbox.depth() == 0


async def decisions(relay: Any, relay_id: str) -> list[Any]:
    return await until(lambda: relay.services.store.decisions.for_relay_id(relay_id), what="decision row")


async def test_250_only_after_upstream_accepted_and_stream_header_removed(relay: Any, upstream: RecordingUpstream) -> None:
    content = message(stream="orders", headers=("X-Relay-Stream: orders",))
    out = await asend(relay.smtp_port, content, rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.code == 250 and out.text.startswith("2.0.0 Delivered as "), out
    assert "queued as UP00001" in out.text  # the upstream's queue id is mentioned
    (got,) = upstream.messages
    assert got.mail_from == "orders@shop.example"
    assert sorted(got.rcpt_tos) == ["anna@example.nl", "bob@example.nl"]
    assert b"x-relay-stream" not in got.content.lower()
    assert b"Subject: Your order 1234" in got.content


async def test_upstream_down_gives_451_and_nothing_half_sent(tmp_path: Path, start_relay: Any) -> None:
    up = RecordingUpstream()  # never started: nothing listens on its port
    relay = await start_relay(make_config(tmp_path, up.port))
    out = await asend(relay.smtp_port, rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.code == 451 and out.text.startswith("4.4.1"), out
    assert await relay.services.store.outbox.depth() == 0
    up.start()
    try:
        assert up.messages == []  # nothing was queued behind the client's back
        out = await asend(relay.smtp_port)
        assert out.code == 250, out
        assert len(up.messages) == 1
    finally:
        up.stop()


async def test_upstream_5xx_passed_through(relay: Any, upstream: RecordingUpstream) -> None:
    upstream.answer_data("554 5.7.9 Message refused by upstream policy")
    out = await asend(relay.smtp_port)
    assert out.code == 554 and "5.7.9" in out.text and "refused by upstream policy" in out.text, out
    assert upstream.messages == []


async def test_upstream_4xx_at_data_is_a_tempfail(relay: Any, upstream: RecordingUpstream) -> None:
    upstream.answer_data("452 4.3.1 Insufficient system storage")
    out = await asend(relay.smtp_port)
    assert out.code == 451 and out.text.startswith("4.4.1"), out
    assert await relay.services.store.outbox.depth() == 0


async def test_every_recipient_refused_upstream_gives_its_5xx(relay: Any, upstream: RecordingUpstream) -> None:
    upstream.answer_rcpt("anna@example.nl", "550 5.1.1 No such user here")
    out = await asend(relay.smtp_port)
    assert out.code == 550 and "5.1.1" in out.text and "No such user" in out.text, out


async def test_some_recipients_refused_upstream_recorded_in_reply(relay: Any, upstream: RecordingUpstream) -> None:
    upstream.answer_rcpt("bob@example.nl", "550 5.1.1 No such user here")
    out = await asend(relay.smtp_port, rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.code == 250 and "1 of 2" in out.text and "bob@example.nl [upstream]" in out.text, out
    assert upstream.recipients() == ["anna@example.nl"]


async def test_partial_failure_goes_to_outbox_then_worker_delivers(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port), background=True)
    per_recipient_copies(relay)
    send_once = relay.upstream.send

    async def send_then_upstream_dies(*args: Any, **kwargs: Any) -> Any:
        result = await send_once(*args, **kwargs)
        if upstream.running:
            await asyncio.to_thread(upstream.stop)
        return result

    relay.upstream.send = send_then_upstream_dies
    rcpts = ["anna@example.nl", "bob@example.nl", "carl@example.nl"]
    out = await asend(relay.smtp_port, rcpts=rcpts)
    assert out.code == 250 and "2 of 3 queued for retry" in out.text, out
    assert upstream.recipients() == ["anna@example.nl"]
    assert await relay.services.store.outbox.depth() == 2
    relay.upstream.send = send_once
    upstream.start()
    # The background worker retries with back-off (1 s, then 2 s) until the upstream answers.
    await until(lambda: len(upstream.recipients()) == 3, timeout=20, what="outbox delivery")
    assert sorted(upstream.recipients()) == sorted(rcpts)
    await until(lambda: outbox_empty(relay), what="empty outbox")
    assert all(b"x-relay-stream" not in m.content.lower() for m in upstream.messages)


async def test_partial_4xx_per_recipient_copy_retried_by_run_once(relay: Any, upstream: RecordingUpstream) -> None:
    per_recipient_copies(relay)
    upstream.answer_rcpt("bob@example.nl", "450 4.2.1 Mailbox busy")
    out = await asend(relay.smtp_port, rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.code == 250 and "queued" in out.text, out
    assert await relay.services.store.outbox.depth() == 1
    assert await relay.outbox.run_once() == 1  # still busy: retried later, not dropped
    assert await relay.services.store.outbox.depth() == 1
    upstream.answer_rcpt("bob@example.nl", None)
    relay.outbox.clock = type(relay.outbox.clock)(now=lambda: _later(relay, 3600))
    assert await relay.outbox.run_once() == 1
    assert sorted(upstream.recipients()) == ["anna@example.nl", "bob@example.nl"]
    assert await relay.services.store.outbox.depth() == 0


def _later(relay: Any, seconds: float) -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


async def test_upstream_stopped_mid_run_loses_nothing(relay: Any, upstream: RecordingUpstream) -> None:
    per_recipient_copies(relay)
    results: dict[str, Any] = {}
    lock = threading.Lock()

    def client(worker: int) -> None:
        for i in range(15):
            tag = f"m{worker}-{i}"
            content = message(subject=f"Your order {tag}")
            try:
                out = send(relay.smtp_port, content, rcpts=[f"a-{tag}@example.nl", f"b-{tag}@example.nl"])
                result: Any = out.final
            except Exception as exc:  # a dropped connection is a "no" the client retries
                result = (0, repr(exc))
            with lock:
                results[tag] = result

    threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    await until(lambda: len(upstream.messages) >= 5, what="some deliveries")
    await asyncio.to_thread(upstream.stop)
    for t in threads:
        await asyncio.to_thread(t.join)

    assert len(results) == 45
    accepted = {tag for tag, (code, _) in results.items() if code == 250}
    deferred = {tag for tag, (code, _) in results.items() if 400 <= code < 500}
    assert accepted | deferred == set(results), {t: r for t, r in results.items() if t not in accepted | deferred}
    assert len(accepted) >= 2 and deferred, (len(accepted), len(deferred))
    # Every accepted recipient is at the upstream or in the outbox; the outbox then delivers them.
    upstream.start()
    while await relay.outbox.run_once():
        pass
    reached = set(upstream.recipients())
    for tag in accepted:
        assert {f"a-{tag}@example.nl", f"b-{tag}@example.nl"} <= reached, tag
    assert await relay.services.store.outbox.depth() == 0


async def test_streams_header_chooses_and_default_applies(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    receipts = {"id": "receipts", "kind": "transactional"}
    relay = await start_relay(
        make_config(
            tmp_path, upstream.port,
            account={"streams": [{"id": "orders", "kind": "transactional"}, receipts,
                                 {"id": "newsletter", "kind": "marketing"}]},
        )
    )
    out = await asend(relay.smtp_port, message(stream="receipts"))
    assert out.code == 250, out
    (row,) = await decisions(relay, relay_id_of(out.text))
    assert row.stream == "receipts" and row.outcome == "delivered"
    assert b"X-Relay-Stream" not in upstream.messages[-1].content

    out = await asend(relay.smtp_port, message())
    (row,) = await decisions(relay, relay_id_of(out.text))
    assert row.stream == "orders"  # the account's default_stream

    # The header really chooses: a marketing stream brings the consent rules with it.
    out = await asend(relay.smtp_port, message(stream="newsletter"))
    assert out.code == 550, out
    assert upstream.messages[-1].content.count(b"Your order") == 1 and len(upstream.messages) == 2


async def test_unknown_stream_refused(relay: Any, upstream: RecordingUpstream) -> None:
    # policy: platform (stream.unknown)
    out = await asend(relay.smtp_port, message(stream="promotions"))
    assert out.code == 550 and out.text.startswith("5.7.1 [stream.unknown]"), out
    assert upstream.messages == []


async def test_no_header_and_no_default_stream_is_unknown(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    config = make_config(tmp_path, upstream.port)
    account = replace(config.accounts[0], default_stream=None)
    relay = await start_relay(replace(config, accounts=(account,)))
    out = await asend(relay.smtp_port, message())
    assert out.code == 550 and "[stream.unknown]" in out.text, out


async def test_upstream_connections_are_reused(relay: Any, upstream: RecordingUpstream) -> None:
    for _ in range(3):
        assert (await asend(relay.smtp_port)).code == 250
    assert len(upstream.messages) == 3
    controller = upstream._controller
    assert controller is not None
    # One connection for the start-up probe, one pooled connection for the three messages.
    assert len(controller.sessions) <= 3, len(controller.sessions)


async def test_folded_and_lowercase_stream_headers_are_removed(relay: Any, upstream: RecordingUpstream) -> None:
    folded = message(headers=("x-relay-stream:", " orders")).replace(b"x-relay-stream:\r\n orders", b"x-relay-stream:\r\n\torders")
    out = await asend(relay.smtp_port, folded)
    assert out.code == 250, out
    (row,) = await decisions(relay, relay_id_of(out.text))
    assert row.stream == "orders"
    content = upstream.messages[0].content
    assert b"relay-stream" not in content.lower() and b"\torders" not in content
    assert b"Subject: Your order 1234" in content and b"KvK 12345678" in content  # nothing else lost


async def test_two_stream_headers_cannot_smuggle_one_through(relay: Any, upstream: RecordingUpstream) -> None:
    out = await asend(relay.smtp_port, message(stream="orders", headers=("X-Relay-Stream: newsletter",)))
    if out.code == 250:
        assert b"relay-stream" not in upstream.messages[0].content.lower()
    else:
        assert out.code == 550, out
