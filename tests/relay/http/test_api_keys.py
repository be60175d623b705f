"""Account API keys (docs/SPEC.md §17) against a started relay's admin listener: a key acts for its own
account only — another account's data answers 404, an admin-only route 403 — and a property test
over every route with the keys of two accounts: no response ever carries the other's data."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import build_config, load_config
from relay.errors import ConfigError
from relay.passwords import hash_password
from relay.store.records import QuarantineItem
from tests.conftest import RecordingUpstream, RelayFactory, cheap_hash, config_dict, write_config

ADMIN = "admin-token-0123456789abcdef"
KEYS = {"shop": "shop-app-key-0123456789abcdef", "other": "other-app-key-0123456789abcdef"}
# Data only one account has; a response to the other account's key must never contain it.
SECRETS = {
    "shop": {"email": "anna.shoponly@example.nl", "subject": "shop-only subject 7f3a", "url": "https://shop.example/only-form"},
    "other": {"email": "bert.otheronly@example.nl", "subject": "other-only subject 9c1d", "url": "https://other.example/only-form"},
}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def other_account() -> dict[str, Any]:
    return {
        "id": "other",
        "name": "Other",
        "domains": ["other.example"],
        "legal_name": "Other B.V.",
        "postal_address": "Damrak 1, 1012 LG Amsterdam",
        "registration_number": "87654321",
        "default_stream": "orders",
        "streams": [{"id": "orders", "kind": "transactional"}],
        "api_keys": [{"label": "crm", "hash": cheap_hash(KEYS["other"])}],
    }


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def call(self, token: str, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            return response.status, await response.text()

    async def json(self, token: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, text = await self.call(token, method, path, **kwargs)
        return status, json.loads(text) if text else None


@pytest.fixture
async def world(tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory) -> AsyncIterator[Any]:
    """A relay with accounts shop and other, each with a key, consent, a suppression, a held
    message and an open complaint of its own."""
    data = config_dict(
        tmp_path,
        upstream.port,
        http={"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "ops", "hash": cheap_hash(ADMIN)}]},
        account={"parent": "holding", "api_keys": [{"label": "app", "hash": cheap_hash(KEYS["shop"])}]},
    )
    data["accounts"].append(other_account())
    config = load_config(write_config(tmp_path, data))
    relay = await start_relay(config)
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{relay.admin_port}")
        ids: dict[str, dict[str, Any]] = {}
        for account, secret in SECRETS.items():
            status, body = await api.json(ADMIN, "POST", "/api/consent", json={
                "account": account, "email": secret["email"], "basis": "double_opt_in", "source": "signup_form",
                "collected_at": "2026-01-10T09:00:00Z", "confirmed_at": "2026-01-10T09:03:00Z",
                "source_url": secret["url"], "source_ip": "198.51.100.4",
                "statement_text": "Yes, send me the newsletter every Friday", "frequency_disclosed": True,
            })
            assert status == 201, body
            status, body = await api.json(ADMIN, "POST", "/api/suppressions", json={"account": account, "email": "x." + secret["email"]})
            assert status == 201, body
            item_id = f"q-{account}-1"
            await relay.services.store.quarantine.hold(QuarantineItem(
                id=item_id, relay_id=f"r-{account}", account=account, stream="orders", mail_from=f"news@{account}.example",
                rcpt_tos=(secret["email"],), subject=secret["subject"], rules=("R1",), findings=(), size=10,
                received_at=NOW, content=f"Subject: {secret['subject']}\r\n\r\nhi\r\n".encode(),
            ))
            status, body = await api.json(ADMIN, "POST", "/api/complaints", json={
                "account": account, "email": secret["email"], "feedback_type": "abuse"})
            assert status == 201, body
            ids[account] = {"quarantine": item_id, "complaint": body["id"]}
        yield api, ids, relay


def other(account: str) -> str:
    return "other" if account == "shop" else "shop"


async def test_a_key_reads_its_own_account_and_another_accounts_data_is_not_found(world: Any) -> None:
    api, ids, _ = world
    email = SECRETS["shop"]["email"]
    status, body = await api.json(KEYS["shop"], "GET", f"/api/consent/{email}")
    assert status == 200 and body["account"] == "shop" and body["consents"]
    status, body = await api.json(KEYS["shop"], "GET", f"/api/consent/{email}?account=other")
    assert status == 404 and body["error"] == "not_found"
    # The same answer as for an account that does not exist: a key cannot probe for accounts.
    status, missing = await api.json(KEYS["shop"], "GET", f"/api/consent/{email}?account=nosuch")
    assert status == 404 and missing["detail"].replace("nosuch", "other") == body["detail"]
    status, body = await api.json(KEYS["shop"], "GET", "/api/quarantine")
    assert status == 200 and [i["id"] for i in body["items"]] == [ids["shop"]["quarantine"]]
    status, _ = await api.json(KEYS["shop"], "GET", f"/api/quarantine/{ids['other']['quarantine']}")
    assert status == 404
    status, text = await api.call(KEYS["shop"], "GET", f"/api/quarantine/{ids['shop']['quarantine']}/raw")
    assert status == 200 and SECRETS["shop"]["subject"] in text
    status, body = await api.json(KEYS["shop"], "GET", "/api/complaints")
    assert status == 200 and [c["account"] for c in body["items"]] == ["shop"]
    status, _ = await api.json(KEYS["shop"], "GET", f"/api/complaints/{ids['other']['complaint']}")
    assert status == 404


async def test_admin_only_routes_answer_403_to_a_key(world: Any) -> None:
    api, ids, _ = world
    item = ids["shop"]["quarantine"]
    for method, path in [
        ("POST", f"/api/quarantine/{item}/release"),
        ("DELETE", f"/api/quarantine/{item}"),
        ("POST", "/api/quarantine/release"),
        ("GET", "/api/audit"),
        ("POST", "/api/complaints"),
        ("GET", "/api/complaints/rejected"),
        ("POST", "/api/interactions"),
    ]:
        status, body = await api.json(KEYS["shop"], method, path, json={"ids": [item]})
        assert (status, body["error"]) == (403, "forbidden"), (method, path)
    # A parent scope reaches sibling accounts: a key writes at its own scope only.
    status, body = await api.json(KEYS["shop"], "POST", "/api/suppressions", json={"email": "p@example.nl", "scope": "holding"})
    assert status in (403, 422) and body["error"] in ("forbidden", "validation")
    status, _ = await api.json("not-a-key", "GET", "/api/complaints")
    assert status == 401
    # A key is for the API: it does not open the admin UI.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(api.base + "/ui/login") as page:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
        async with http.post(api.base + "/ui/login", data={"csrf": csrf, "token": KEYS["shop"], "next": "/ui/audit"},
                             allow_redirects=False) as login:
            assert login.status == 401 and "not a valid admin token" in await login.text()


async def test_a_key_acknowledges_its_complaint_and_the_audit_log_names_the_key(world: Any) -> None:
    api, ids, _ = world
    mine, theirs = ids["shop"]["complaint"], ids["other"]["complaint"]
    status, _ = await api.json(KEYS["shop"], "POST", f"/api/complaints/{theirs}/ack", json={"note": "looked"})
    assert status == 404
    status, body = await api.json(KEYS["shop"], "POST", f"/api/complaints/{mine}/ack", json={"note": "list cleaned"})
    assert status == 200 and body["status"] == "acknowledged" and body["acknowledged_by"] == "key:shop/app"
    status, body = await api.json(KEYS["shop"], "POST", "/api/suppressions", json={"email": "new@example.nl"})
    assert status == 201
    status, body = await api.json(ADMIN, "GET", "/api/audit?limit=50")
    actors = {(e["action"], e["actor"]) for e in body["items"]}
    assert ("suppression.add", "key:shop/app") in actors
    assert ("complaint.acknowledged", "key:shop/app") in actors
    # The other account's complaint is untouched.
    status, body = await api.json(ADMIN, "GET", f"/api/complaints/{theirs}")
    assert body["status"] == "open"


def test_api_keys_are_hashes_with_unique_labels(tmp_path: Path) -> None:
    data = config_dict(tmp_path, 2525)
    data["accounts"][0]["api_keys"] = [{"label": "app", "hash": "plain-secret"}]
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.api_keys\[0\]\.hash"):
        build_config(data, tmp_path / "relay.toml")
    digest = hash_password("k" * 20)
    data["accounts"][0]["api_keys"] = [{"label": "app", "hash": digest}, {"label": "app", "hash": digest}]
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.api_keys"):
        build_config(data, tmp_path / "relay.toml")


# --- the property: every route, every key, no response carries the other account's data ----------


def _route_table(relay: Any) -> list[tuple[str, str]]:
    """Every (method, path template) of the admin app, read from the router itself."""
    routes = []
    for route in relay._runners[0].app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        template = info.get("formatter") or info.get("path")
        if template and route.method != "HEAD":
            routes.append((route.method, template))
    return sorted(set(routes))


VALUES = st.sampled_from(["shop", "other", "holding", "nosuch", ""])


@st.composite
def requests(draw: st.DrawFn, routes: list[tuple[str, str]], ids: dict[str, dict[str, Any]]) -> tuple[str, str, str, dict[str, Any]]:
    me = draw(st.sampled_from(sorted(KEYS)))
    method, template = draw(st.sampled_from(routes))
    target = draw(st.sampled_from(["shop", "other"]))
    fill = {
        "email": SECRETS[target]["email"],
        "id": str(draw(st.sampled_from([ids[target]["quarantine"], ids[target]["complaint"]]))),
        "token": "x",
    }
    path = template
    for name, value in fill.items():
        path = path.replace("{" + name + "}", value)
    query: dict[str, str] = {}
    body: dict[str, Any] = {}
    account = draw(VALUES)
    if account:
        query["account"] = account
        body["account"] = account
    if draw(st.booleans()):
        body.update(email=SECRETS[target]["email"], note="n", ids=[ids[target]["quarantine"]])
    if draw(st.booleans()):
        query["scope"] = body["scope"] = draw(VALUES) or "shop"
    url = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    return me, method, url, body


async def test_no_response_to_a_key_ever_contains_the_other_accounts_data(world: Any) -> None:
    api, ids, relay = world
    routes = _route_table(relay)
    assert ("GET", "/api/consent/{email}") in routes and ("POST", "/api/complaints/{id}/ack") in routes
    seen_ok: set[str] = set()
    loop = asyncio.get_running_loop()

    # Hypothesis drives synchronous examples: run it in a thread, the requests on the relay's loop.
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        me, method, url, body = data.draw(requests(routes, ids))
        call = api.call(KEYS[me], method, url, json=body if method in ("POST", "DELETE") else None)
        status, text = asyncio.run_coroutine_threadsafe(call, loop).result(timeout=60)
        assert status != 401, (me, method, url)  # the key itself is accepted everywhere
        assert status < 500, (me, method, url, body, text)  # and refused cleanly, never by a crash
        request_text = url + json.dumps(body)
        for marker in SECRETS[other(me)].values():
            if marker not in request_text:
                assert marker not in text, (me, method, url, body, status, text)
        if status < 300:
            seen_ok.add(me)

    await asyncio.to_thread(check)
    assert seen_ok == {"shop", "other"}
    # Nothing the keys did reached the other account: each still has its consent and held message.
    for account, secret in SECRETS.items():
        status, body = await api.json(ADMIN, "GET", f"/api/quarantine?account={account}")
        assert [i["subject"] for i in body["items"]] == [secret["subject"]]
