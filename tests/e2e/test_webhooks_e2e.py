"""Signed webhooks end to end (docs/SPEC.md §17): a real aiohttp receiver on 127.0.0.1 checks every POST with
the PyPI `standardwebhooks` library (not our code). A one-click unsubscribe and an ARF complaint
arrive signed; with the receiver down and the relay restarted meanwhile every event still arrives,
none twice under different ids; two instances on one PostgreSQL schema send each event once."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook, WebhookVerificationError

from relay.config import load_config
from relay.events.webhooks import WebhookSender, disabled_notes
from relay.passwords import hash_password
from tests.conftest import (
    RecordingUpstream,
    RelayFactory,
    asend,
    cli_run,
    config_dict,
    free_port,
    pg_schema,
    until,
    write_config,
)
from tests.e2e.test_unsubscribe_e2e import consent, list_unsubscribe, newsletter, public_url
from tests.relay.feedback.test_complaints import arf
from tests.relay.web.test_web_ui import TOKEN as UI_TOKEN
from tests.relay.web.test_web_ui import Browserless

DSN_POSTFIX = Path(__file__).parents[1] / "corpus" / "feedback" / "dsn" / "flufl-postfix_01.eml"
SECRET = "whsec_" + base64.b64encode(b"webhook-secret-for-the-e2e-tests").decode()
ADMIN = "admin-token-0123456789abcdef"


@dataclass
class Receiver:
    """An application's endpoint: verifies each POST with standardwebhooks, answers 204."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (webhook-id, payload)
    forged: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.forged.append(str(exc))
            return web.Response(status=400)
        self.received.append((request.headers["webhook-id"], payload))
        return web.Response(status=204)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [p for _, p in self.received if p["type"] == kind]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    await r.down()


def hook_config(tmp_path: Path, upstream: RecordingUpstream, receiver: Receiver, store_url: str | None = None, **events: Any) -> Path:
    data = config_dict(
        tmp_path,
        upstream.port,
        http={
            "admin_listen": "127.0.0.1:0", "public_listen": "127.0.0.1:0", "public_base_url": "https://unsub.test",
            "admin_tokens": [{"label": "ops", "hash": hash_password(ADMIN)}, {"label": "ui", "hash": hash_password(UI_TOKEN)}],
        },
        account={"webhooks": [{"url": receiver.url, "secret": SECRET}]},
        events={"webhook_poll_seconds": 0.05, "webhook_retry_initial_seconds": 0.05, "webhook_retry_max_seconds": 0.2, **events},
    )
    if store_url:
        data["store"] = {"url": store_url}
    return write_config(tmp_path, data)


async def admin(relay: Any, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"http://127.0.0.1:{relay.admin_port}{path}",
                                headers={"Authorization": f"Bearer {ADMIN}", **(headers or {})}, **kwargs) as response:
            return response.status, await response.read()


async def suppress(relay: Any, email: str) -> None:
    status, body = await admin(relay, "POST", "/api/suppressions", json={"account": "shop", "email": email})
    assert status == 201, body


async def test_one_click_unsubscribe_an_arf_complaint_and_a_dsn_hard_bounce_arrive_signed(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory, receiver: Receiver
) -> None:
    await receiver.up()
    relay = await start_relay(load_config(hook_config(tmp_path, upstream, receiver)), background=True)
    await relay.services.store.consent.upsert_consents(
        [consent("anna@example.nl"), consent("bob@example.nl"), consent("carl@example.nl")], now=datetime.now(timezone.utc)
    )
    out = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example",
                      rcpts=["anna@example.nl", "bob@example.nl", "carl@example.nl"])
    assert out.code == 250, out.text
    copies = {m.rcpt_tos[0]: m.content for m in upstream.messages}
    verp = next(m.mail_from for m in upstream.messages if m.rcpt_tos == ["carl@example.nl"])
    url, _ = list_unsubscribe(copies["anna@example.nl"])
    async with aiohttp.ClientSession() as http:
        async with http.post(public_url(relay, url), data={"List-Unsubscribe": "One-Click"}) as done:
            assert done.status == 200
    status, body = await admin(relay, "POST", "/api/complaints", data=arf(copies["bob@example.nl"]),
                               headers={"Content-Type": "message/rfc822"})
    assert status == 201, body
    # A remote MTA's DSN (a genuine Postfix one, 5.1.1) to the copy's VERP address: a hard bounce.
    dsn = await asend(relay.smtp_port, DSN_POSTFIX.read_bytes(), mail_from="", rcpts=[verp], source="127.0.0.2")
    assert dsn.code == 250 and dsn.text.endswith("recorded (hard)"), dsn

    await until(lambda: receiver.of_type("unsubscribed") and receiver.of_type("complained") and receiver.of_type("bounced"),
                what="the three webhooks")
    (unsubscribed,) = receiver.of_type("unsubscribed")
    (complained,) = receiver.of_type("complained")
    assert unsubscribed["recipient"] == "anna@example.nl" and unsubscribed["detail"]["via"] == "one_click"
    assert complained["recipient"] == "bob@example.nl" and complained["detail"]["feedback_type"] == "abuse"
    (bounced,) = receiver.of_type("bounced")
    assert bounced["recipient"] == "carl@example.nl" and bounced["detail"]["reason"] == "suppression.bounced"
    assert "5.1.1" in bounced["detail"]["note"]
    assert complained["account"] == unsubscribed["account"] == bounced["account"] == "shop"
    assert receiver.forged == []
    # The complaint's suppression follows it: every event is one POST, its id the feed's id.
    ids = [i for i, _ in receiver.received]
    assert len(ids) == len(set(ids)) and all(p["id"] == i for i, p in receiver.received)
    status, text = await admin(relay, "GET", "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode()) for s in family.samples
    }
    assert samples[("consent_relay_webhook_deliveries_total", (("account", "shop"), ("result", "ok")))] == len(ids)
    assert ("consent_relay_webhook_oldest_pending_seconds", (("account", "shop"),)) in samples


async def test_receiver_down_and_relay_restarted_every_event_arrives_under_one_id(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory, receiver: Receiver
) -> None:
    # One POST at a time: the account's order exactly (a window may reorder events of different recipients).
    config = load_config(hook_config(tmp_path, upstream, receiver, webhook_concurrency=1))
    first = await start_relay(config, background=True)
    for i in range(3):
        await suppress(first, f"early{i}@example.nl")

    async def failing() -> bool:
        states = await first.services.store.webhooks.states()
        return bool(states) and states[0].attempts >= 2

    await until(failing, what="the endpoint failing and backing off")
    await first.stop(grace=1)
    second = await start_relay(config, background=True)
    for i in range(2):
        await suppress(second, f"late{i}@example.nl")
    await receiver.up()
    await until(lambda: len({i for i, _ in receiver.received}) >= 5, what="five events")
    by_recipient: dict[str, set[str]] = defaultdict(set)
    by_id: dict[str, list[str]] = defaultdict(list)
    for msg_id, payload in receiver.received:
        by_recipient[payload["recipient"]].add(msg_id)
        by_id[msg_id].append(json.dumps(payload, sort_keys=True))
    assert sorted(by_recipient) == sorted([f"early{i}@example.nl" for i in range(3)] + [f"late{i}@example.nl" for i in range(2)])
    assert all(len(ids) == 1 for ids in by_recipient.values())  # never the same event under two ids
    assert all(len(set(bodies)) == 1 for bodies in by_id.values())  # a repeat is the same event
    order = [int(p["cursor"]) for _, p in receiver.received]
    assert order == sorted(order)  # in the account's order
    assert receiver.forged == []
    # Caught up: nothing pending, the failures forgotten (written once the last answer is in,
    # a moment after the receiver has the event).
    async def caught_up() -> bool:
        (state,) = await second.services.store.webhooks.states()
        return state.attempts == 0

    await until(caught_up, what="the endpoint's failures forgotten")
    (state,) = await second.services.store.webhooks.states()
    assert state.attempts == 0 and state.disabled_at is None


async def test_two_instances_on_one_postgresql_schema_send_each_event_once(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory, receiver: Receiver
) -> None:
    async with pg_schema() as url:
        await receiver.up()
        config = load_config(hook_config(tmp_path, upstream, receiver, store_url=url))
        one = await start_relay(config, background=True)
        two = await start_relay(config, background=True)
        for i in range(30):
            await suppress(one if i % 2 else two, f"p{i}@example.nl")
        await until(lambda: len({i for i, _ in receiver.received}) >= 30, what="thirty events")
        # Both instances ran their senders; a last round from each finds nothing more to send.
        await one.stop(grace=1)
        await two.stop(grace=1)
        ids = [i for i, _ in receiver.received]
        assert len(ids) == 30 and len(set(ids)) == 30, sorted(ids)


async def test_an_endpoint_failing_too_long_is_disabled_and_the_account_page_says_so(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory, receiver: Receiver
) -> None:
    # 0.0003 h ≈ 1 s instead of 24 h: the same rule, on a clock the test can wait for.
    relay = await start_relay(load_config(hook_config(tmp_path, upstream, receiver, webhook_give_up_hours=0.0003)), background=True)
    await suppress(relay, "x@example.nl")

    async def disabled() -> Any:
        states = await relay.services.store.webhooks.states()
        return states if states and states[0].disabled_at is not None else None

    states = await until(disabled, what="the endpoint disabled")
    (note,) = disabled_notes(states, relay.config.accounts[0])
    assert receiver.url in note and "disabled" in note
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        page = Browserless(http, f"http://127.0.0.1:{relay.admin_port}", relay.services)
        await page.sign_in()
        text = await page.text("/ui/accounts")
    assert f"webhook {receiver.url} disabled after failing since" in text
    # Disabled means no more attempts, even with the receiver back.
    await receiver.up()
    attempts = states[0].attempts
    sender = WebhookSender(relay.services, owner="test")
    await sender.send_once()
    sender.close()
    assert (await relay.services.store.webhooks.states())[0].attempts == attempts
    assert receiver.received == []


async def test_webhook_test_sends_a_signed_ping(
    tmp_path: Path, upstream: RecordingUpstream, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    path = hook_config(tmp_path, upstream, receiver)
    code, out, _ = await asyncio.to_thread(cli_run, ["webhook", "test", "shop", "-c", str(path)], capsys)
    assert code == 1 and out.startswith("FAILED\t" + receiver.url)
    await receiver.up()
    code, out, _ = await asyncio.to_thread(cli_run, ["webhook", "test", "shop", "-c", str(path)], capsys)
    assert code == 0 and out.startswith("ok\t" + receiver.url), out
    ((_, ping),) = receiver.received
    assert ping["type"] == "ping" and ping["account"] == "shop"
    code, _, err = await asyncio.to_thread(cli_run, ["webhook", "test", "nosuch", "-c", str(path)], capsys)
    assert code == 2 and "unknown account" in err


async def test_an_endpoint_that_never_answers_does_not_hold_up_mail(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory
) -> None:
    hanging = asyncio.Event()
    release = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        hanging.set()
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", never)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        receiver = Receiver(port=port)
        config = load_config(hook_config(tmp_path, upstream, receiver, webhook_timeout=120))
        relay = await start_relay(config, background=True)
        await suppress(relay, "first@example.nl")
        await asyncio.wait_for(hanging.wait(), 30)  # the sender now waits on a POST that will not end
        for i in range(5):
            out = await asend(relay.smtp_port, rcpts=f"buyer{i}@example.nl")
            assert out.code == 250, out.text
        await suppress(relay, "second@example.nl")  # and the admin API answers too
        assert len(upstream.messages) == 5
    finally:
        release.set()
        await runner.cleanup()


async def test_a_window_of_posts_keeps_each_recipients_order_and_retries_from_the_first_failure(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory
) -> None:
    # Events of several recipients; three about one recipient (added, removed, added again); one
    # the endpoint refuses once. The sender has a window of three POSTs; the endpoint is slow.
    in_flight: list[str] = []
    most = 0
    answered: list[tuple[str, int, int]] = []  # (recipient, seq, status) in the order of the answers
    spans: dict[str, list[tuple[int, str]]] = defaultdict(list)  # recipient → (seq, "start"/"end") in time order
    refused: set[str] = set()

    async def slow(request: web.Request) -> web.Response:
        nonlocal most
        payload = Webhook(SECRET).verify(await request.read(), dict(request.headers))
        recipient, seq = payload["recipient"], int(payload["cursor"])
        in_flight.append(recipient)
        most = max(most, len(in_flight))
        spans[recipient].append((seq, "start"))
        await asyncio.sleep(0.1)
        in_flight.remove(recipient)
        spans[recipient].append((seq, "end"))
        status = 204
        if recipient == "refuse@example.nl" and payload["id"] not in refused:
            refused.add(payload["id"])
            status = 503
        answered.append((recipient, seq, status))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hooks", slow)
    runner = web.AppRunner(app)
    receiver = Receiver()
    config = load_config(hook_config(tmp_path, upstream, receiver, webhook_concurrency=3))
    relay = await start_relay(config, background=True)
    for i in range(5):
        await suppress(relay, f"a{i}@example.nl")
    await suppress(relay, "same@example.nl")
    status, body = await admin(relay, "DELETE", "/api/suppressions", params={"account": "shop", "email": "same@example.nl"})
    assert status == 200, body
    await suppress(relay, "same@example.nl")
    await suppress(relay, "refuse@example.nl")
    for i in range(4):
        await suppress(relay, f"b{i}@example.nl")
    last = 13
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port, reuse_address=True).start()
    try:
        async def caught_up() -> bool:
            (state,) = await relay.services.store.webhooks.states()
            return state.cursor == last and state.attempts == 0

        await until(caught_up, timeout=30, what="every event answered 2xx")
    finally:
        await runner.cleanup()
    assert most == 3  # three POSTs at once, never more
    ok = {(r, seq) for r, seq, status in answered if status == 204}
    assert {seq for _, seq in ok} == set(range(1, last + 1))  # every event, the refused one included
    # The refused event came back: the cursor stayed before it, whatever later events had got meanwhile.
    assert [s for r, _, s in answered if r == "refuse@example.nl"][:2] == [503, 204]
    # One recipient's events: one POST at a time, in the account's order.
    same = spans["same@example.nl"]
    assert [kind for _, kind in same] == ["start", "end"] * (len(same) // 2)
    first_time = list(dict.fromkeys(seq for seq, _ in same))
    assert first_time == sorted(first_time) and len(first_time) == 3
