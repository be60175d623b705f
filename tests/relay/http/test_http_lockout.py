"""Wrong admin credentials on the admin listener (docs/SPEC.md §17): after 20 from one address within 10
minutes, 429 with Retry-After, for the bearer API and the UI sign-in alike; the lock-out is audited
and counted in consent_relay_http_auth_lockouts_total. Real admin app, real sockets, aiohttp client."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from conftest import cheap_hash, no_readiness, serving

from relay.config import build_config
from relay.routes import build_admin_app
from relay.http.lockout import MAX_FAILURES, MAX_TRACKED, FailedAttempts, client_key
from relay.services import Clock, Services

TOKEN = "the-right-admin-token"
ACCOUNT_KEY = "the-shop-applications-key"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Admin:
    base: str
    services: Services
    now: list[float]

    def client(self, source: str = "127.0.0.1") -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def metric(self, name: str) -> float:
        async with self.client("127.0.0.3") as http, http.get(self.base + "/metrics") as r:
            text = await r.text()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    data = {
        "store": {"url": f"sqlite:///{tmp_path}/relay.db"},
        "http": {"admin_tokens": [{"label": "ops", "hash": cheap_hash(TOKEN)}]},
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"]},
        "accounts": [{
            "id": "shop", "domains": ["shop.example"], "default_stream": "news",
            "streams": [{"id": "news", "kind": "marketing"}],
            "api_keys": [{"label": "app", "hash": cheap_hash(ACCOUNT_KEY)}],
        }],
    }
    now = [1000.0]
    services = Services.build(build_config(data, tmp_path / "config.toml"), clock=Clock(monotonic=lambda: now[0]))
    await services.store.open()
    async with serving(build_admin_app(services, no_readiness)) as base:
        yield Admin(base, services, now)
    await services.store.close()


async def _bearer(http: aiohttp.ClientSession, base: str, token: str) -> tuple[int, dict[str, str], Any]:
    async with http.get(base + "/api/audit", headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, dict(r.headers), await r.json()


async def test_wrong_bearer_tokens_lock_the_address_out_with_429(admin: Admin) -> None:
    async with admin.client() as http:
        statuses = [(await _bearer(http, admin.base, f"guess-{i}"))[0] for i in range(MAX_FAILURES)]
        assert statuses == [401] * (MAX_FAILURES - 1) + [429]
        status, headers, body = await _bearer(http, admin.base, TOKEN)  # even the right token: no oracle
        assert status == 429 and body["error"] == "too_many_failures"
        assert 1 <= int(headers["Retry-After"]) <= 600
    async with admin.client("127.0.0.2") as other:
        assert (await _bearer(other, admin.base, TOKEN))[0] == 200  # only that address is locked out

    assert await admin.metric('consent_relay_http_auth_lockouts_total{kind="bearer"}') == 1
    assert await admin.metric('consent_relay_http_auth_failures_total{kind="bearer"}') == MAX_FAILURES
    entries = await admin.services.store.audit.list(target="127.0.0.1")
    assert [e.action for e in entries] == ["auth.lockout"]
    assert entries[0].detail["kind"] == "bearer" and entries[0].detail["failures"] == MAX_FAILURES

    admin.now[0] += 601  # the lock-out ends
    async with admin.client() as http:
        assert (await _bearer(http, admin.base, TOKEN))[0] == 200


async def test_failures_spread_over_more_than_the_window_do_not_lock_out(admin: Admin) -> None:
    async with admin.client() as http:
        for i in range(3 * MAX_FAILURES):
            assert (await _bearer(http, admin.base, f"guess-{i}"))[0] == 401
            admin.now[0] += 32  # 20 failures span 19 × 32 = 608 s: never 20 inside 600 s
        assert (await _bearer(http, admin.base, TOKEN))[0] == 200


async def test_account_api_keys_are_locked_out_alike(admin: Admin) -> None:
    async with admin.client() as http:
        async with http.get(admin.base + "/api/events?account=shop", headers={"Authorization": f"Bearer {ACCOUNT_KEY}"}) as r:
            assert r.status == 200  # the key works
        for i in range(MAX_FAILURES):
            await _bearer(http, admin.base, f"guess-{i}")
        async with http.get(admin.base + "/api/events?account=shop", headers={"Authorization": f"Bearer {ACCOUNT_KEY}"}) as r:
            assert r.status == 429 and "Retry-After" in r.headers


async def _sign_in(http: aiohttp.ClientSession, base: str, token: str) -> tuple[int, dict[str, str], str]:
    async with http.get(base + "/ui/login") as r:
        csrf = CSRF.search(await r.text())
    form = {"csrf": csrf.group(1) if csrf else "", "token": token, "next": "/ui/audit"}
    async with http.post(base + "/ui/login", data=form, allow_redirects=False) as r:
        return r.status, dict(r.headers), await r.text()


async def test_wrong_ui_sign_ins_lock_out_the_form_and_the_api(admin: Admin) -> None:
    async with admin.client() as http:
        statuses = [(await _sign_in(http, admin.base, f"guess-{i}"))[0] for i in range(MAX_FAILURES)]
        assert statuses == [401] * (MAX_FAILURES - 1) + [429]
        status, headers, page = await _sign_in(http, admin.base, TOKEN)
        assert status == 429 and "Too many failed sign-ins" in page and int(headers["Retry-After"]) > 0
        assert (await _bearer(http, admin.base, TOKEN))[0] == 429  # one table for both doors
    assert await admin.metric('consent_relay_http_auth_lockouts_total{kind="login"}') == 1
    admin.now[0] += 601
    async with admin.client() as http:
        status, headers, _ = await _sign_in(http, admin.base, TOKEN)
        assert status == 303 and headers["Location"] == "/ui/audit"


def test_the_table_of_addresses_is_bounded_and_forgets_old_failures() -> None:
    now = [0.0]
    attempts = FailedAttempts(lambda: now[0])
    for i in range(MAX_TRACKED + 5000):
        attempts.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(attempts) == MAX_TRACKED
    now[0] += 601
    attempts.failed("192.0.2.1")
    assert len(attempts) == 1  # everything else left the window


def test_an_ipv6_client_counts_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
