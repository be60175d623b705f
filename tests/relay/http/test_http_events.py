"""The event feed (docs/SPEC.md §17) of a started relay: mail refused over SMTP and admin actions become
events, read page by page with a stable cursor over HTTP (admin token or the account's own key)
and by `consent-relay events tail`, once and in order."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from relay.config import load_config
from relay.passwords import hash_password
from relay.store.records import QuarantineItem
from tests.conftest import RecordingUpstream, RelayFactory, asend, cli_run, config_dict, message, until, write_config

ADMIN = "admin-token-0123456789abcdef"
SHOP_KEY = "shop-app-key-0123456789abcdef"
OTHER_KEY = "other-app-key-0123456789abcdef"


@pytest.fixture
async def feed(tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory) -> AsyncIterator[Any]:
    data = config_dict(
        tmp_path,
        upstream.port,
        http={"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "ops", "hash": hash_password(ADMIN)}]},
        account={"api_keys": [{"label": "app", "hash": hash_password(SHOP_KEY)}]},
    )
    data["accounts"].append({
        "id": "other", "domains": ["other.example"], "legal_name": "Other B.V.", "postal_address": "Damrak 1, Amsterdam",
        "registration_number": "87654321", "default_stream": "orders", "streams": [{"id": "orders", "kind": "transactional"}],
        "api_keys": [{"label": "crm", "hash": hash_password(OTHER_KEY)}],
    })
    path = write_config(tmp_path, data)
    relay = await start_relay(load_config(path))
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{relay.admin_port}"

        async def call(token: str, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
            async with session.request(method, base + url, headers={"Authorization": f"Bearer {token}"}, **kwargs) as r:
                return r.status, await r.json()

        yield relay, call, path


async def read_all(call: Any, token: str, query: str, limit: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body = await call(token, "GET", f"/api/events?{query}&after={cursor}&limit={limit}")
        assert status == 200, body
        if not body["events"]:
            assert body["next"] == (cursor or "0")
            return events
        events += body["events"]
        cursor = body["next"]


async def test_decisions_become_a_feed_read_page_by_page(feed: Any) -> None:
    relay, call, _ = feed
    out = await asend(relay.smtp_port, message(to="bob@example.nl", stream="newsletter", subject="Nieuw"), rcpts="bob@example.nl")
    assert out.code == 550

    async def rejection_recorded() -> list[dict[str, Any]] | None:
        return await read_all(call, ADMIN, "account=shop", 2) or None

    # Decisions are recorded in batches after the reply: the feed follows the order of the writes.
    await until(rejection_recorded, what="the rejection's event")
    assert (await call(ADMIN, "POST", "/api/suppressions", json={"account": "shop", "email": "carl@example.nl"}))[0] == 201
    assert (await call(SHOP_KEY, "DELETE", "/api/suppressions", json={"email": "carl@example.nl"}))[0] == 200
    await relay.services.store.quarantine.hold(QuarantineItem(
        "q1", "r1", "shop", "orders", "orders@shop.example", ("dora@example.nl",), "s", ("content.x",), (), 1,
        relay.services.clock.now(),
    ))
    assert (await call(ADMIN, "DELETE", "/api/quarantine/q1"))[0] == 200
    assert (await call(ADMIN, "POST", "/api/suppressions", json={"account": "other", "email": "otto@example.nl"}))[0] == 201

    async def shop_events() -> list[dict[str, Any]] | None:
        events = await read_all(call, ADMIN, "account=shop", 2)
        return events if len(events) >= 4 else None

    events = await until(shop_events, what="four events of shop")
    assert [(e["type"], e["recipient"]) for e in events] == [
        ("rejected", "bob@example.nl"), ("suppression_added", "carl@example.nl"),
        ("suppression_removed", "carl@example.nl"), ("deleted", "dora@example.nl"),
    ]
    assert "consent.missing" in events[0]["detail"]["rules"] and events[3]["detail"]["by"] == "ops"
    assert len({e["id"] for e in events}) == 4 and all(e["account"] == "shop" for e in events)
    # The account's key reads its own feed without naming it; another account's feed is not there.
    assert await read_all(call, SHOP_KEY, "", 100) == events
    assert [e["recipient"] for e in await read_all(call, OTHER_KEY, "", 100)] == ["otto@example.nl"]
    status, body = await call(OTHER_KEY, "GET", "/api/events?account=shop")
    assert status == 404 and body["error"] == "not_found"
    # From a cursor: only what came after it.
    status, body = await call(ADMIN, "GET", f"/api/events?account=shop&after={events[1]['cursor']}")
    assert [e["id"] for e in body["events"]] == [e["id"] for e in events[2:]]


@pytest.mark.parametrize(
    "query", ["account=shop&after=abc", "account=shop&after=-1", "account=shop&limit=0", "account=shop&limit=5000", ""]
)
async def test_a_bad_feed_request_is_a_422(feed: Any, query: str) -> None:
    _, call, _ = feed
    status, body = await call(ADMIN, "GET", f"/api/events?{query}")
    assert status == 422 and body["error"] == "invalid", body


async def test_events_tail_prints_the_feed_and_follows_it(feed: Any, capsys: pytest.CaptureFixture[str]) -> None:
    relay, call, path = feed
    for email in ("a1@example.nl", "a2@example.nl"):
        assert (await call(ADMIN, "POST", "/api/suppressions", json={"account": "shop", "email": email}))[0] == 201
    code, out, err = await asyncio.to_thread(cli_run, ["events", "tail", "--account", "shop", "--json", "-c", str(path)], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["recipient"]) for e in lines] == [("suppression_added", "a1@example.nl"), ("suppression_added", "a2@example.nl")]
    code, out, _ = await asyncio.to_thread(cli_run, ["events", "tail", "--account", "shop", "--after", "1", "-c", str(path)], capsys)
    assert code == 0 and [line.split("\t")[:3][2] for line in out.splitlines()] == ["suppression_added"]
    code, out, err = await asyncio.to_thread(cli_run, ["events", "tail", "--account", "nosuch", "-c", str(path)], capsys)
    assert code == 2 and out == "" and "unknown account" in err and len(err.splitlines()) == 1
    follower = subprocess.Popen(
        [sys.executable, "-m", "relay.cli.main", "events", "tail", "--account", "shop", "--follow", "--json", "--poll", "0.05",
         "--after", "2", "-c", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert (await call(ADMIN, "POST", "/api/suppressions", json={"account": "shop", "email": "a3@example.nl"}))[0] == 201
        line = await asyncio.wait_for(asyncio.to_thread(follower.stdout.readline), 30)  # type: ignore[union-attr]
        assert json.loads(line)["recipient"] == "a3@example.nl"
    finally:
        follower.terminate()
        follower.communicate(timeout=30)
