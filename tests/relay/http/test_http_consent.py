"""Admin API for consent and suppressions over a real aiohttp server on an ephemeral port."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from conftest import serving

from relay.config import build_config
from relay.http.common import SERVICES
from relay.http.consent import add_routes
from relay.services import Clock, Services

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)

GOOD: dict[str, Any] = {
    "account": "shop",
    "email": "Anna@Example.nl",
    "basis": "double_opt_in",
    "source": "signup_form",
    "collected_at": "2026-01-10T09:00:00Z",
    "confirmed_at": "2026-01-10T09:03:00Z",
    "source_url": "https://shop.example/signup",
    "source_ip": "198.51.100.4",
    "statement_text": "Yes, send me the Shop newsletter every Friday",
    "frequency_disclosed": True,
}


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, services: Services) -> None:
        self.session = session
        self.base = base
        self.services = services

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, **kwargs) as response:
            return response.status, await response.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    data = {
        "store": {"url": f"sqlite:///{tmp_path}/relay.db"},
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"]},
        "accounts": [
            {
                "id": "shop",
                "domains": ["shop.example"],
                "parent": "holding",
                "default_stream": "newsletter",
                "streams": [{"id": "newsletter", "kind": "marketing"}],
            }
        ],
    }
    services = Services.build(build_config(data, tmp_path / "config.toml"), clock=Clock(now=lambda: NOW))
    await services.store.open()
    app = web.Application()
    app[SERVICES] = services
    add_routes(app)
    async with serving(app) as base, aiohttp.ClientSession() as session:
        yield Api(session, base, services)
    await services.store.close()


async def test_post_get_and_proof(api: Api) -> None:
    status, body = await api.call("POST", "/api/consent", json=GOOD)
    assert status == 201 and body["changed"] is True
    consent = body["consent"]
    assert consent["email"] == "anna@example.nl" and consent["scope"] == "shop" and consent["topic"] == "*"
    assert consent["source_ip"] == "198.51.100.4" and consent["frequency_disclosed"] is True
    status, again = await api.call("POST", "/api/consent", json=GOOD)
    assert status == 200 and again["changed"] is False and again["consent"]["id"] == consent["id"]

    status, shown = await api.call("GET", "/api/consent/ANNA@example.nl", params={"account": "shop"})
    assert status == 200 and [c["id"] for c in shown["consents"]] == [consent["id"]]
    status, proof = await api.call("GET", "/api/consent/anna@example.nl/proof", params={"account": "shop"})
    assert status == 200
    # docs/SPEC.md §15 adds the bounces about the address to the proof (issue 13).
    assert set(proof) == {"email", "account", "consents", "suppressions", "deliveries", "bounces", "signups"}
    assert proof["consents"][0]["statement_text"] == GOOD["statement_text"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"collected_at": "15/01/2026"}, "collected_at"),
        ({"basis": "telepathy"}, "basis"),
        ({"prechecked": "perhaps"}, "prechecked"),
        ({"colour": "red"}, "colour"),
        ({"account": None}, "account"),
        ({"source_ip": "1.2.3"}, "source_ip"),
    ],
)
async def test_validation_errors_are_422_naming_the_field(api: Api, change: dict[str, Any], field: str) -> None:
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    status, error = await api.call("POST", "/api/consent", json=body)
    assert status == 422
    assert error["error"] == "validation" and error["field"] == field and field in error["detail"]


async def test_policy_refusal_names_the_rule(api: Api) -> None:
    # policy: mailpro M-third-party-lists
    status, error = await api.call("POST", "/api/consent", json={**GOOD, "source": "rented"})
    assert status == 422 and error["error"] == "refused" and error["rule"] == "consent.third_party"
    assert await api.services.store.consent.count() == 0


async def test_unknown_account_404_and_bad_json(api: Api) -> None:
    status, error = await api.call("POST", "/api/consent", json={**GOOD, "account": "nobody"})
    assert status == 404 and error["error"] == "not_found"
    status, _ = await api.call("GET", "/api/consent/anna@example.nl", params={"account": "nobody"})
    assert status == 404
    status, error = await api.call("POST", "/api/consent", data=b"{nope", headers={"Content-Type": "application/json"})
    assert status == 400 and error["error"] == "invalid_json"


async def test_delete_revokes(api: Api) -> None:
    await api.call("POST", "/api/consent", json=GOOD)
    status, body = await api.call("DELETE", "/api/consent/anna@example.nl", params={"account": "shop"})
    assert status == 200 and body["revoked"] == 1
    status, shown = await api.call("GET", "/api/consent/anna@example.nl", params={"account": "shop"})
    assert shown["consents"][0]["revoked_at"] is not None
    assert shown["consents"][0]["revoked_via"].startswith("api:")
    status, _ = await api.call("DELETE", "/api/consent/anna@example.nl", params={"account": "shop"})
    assert status == 404


async def test_interactions_extend_life(api: Api) -> None:
    await api.call("POST", "/api/consent", json=GOOD)
    status, body = await api.call(
        "POST", "/api/interactions", json={"account": "shop", "email": "anna@example.nl", "kind": "purchase", "at": "2026-03-01T12:00:00Z"}
    )
    assert status == 200 and body["updated"] == 1
    _, shown = await api.call("GET", "/api/consent/anna@example.nl", params={"account": "shop"})
    assert shown["consents"][0]["last_purchase_at"].startswith("2026-03-01T12:00:00")
    assert shown["consents"][0]["last_interaction_at"].startswith("2026-03-01T12:00:00")
    status, error = await api.call("POST", "/api/interactions", json={"account": "shop", "email": "anna@example.nl", "kind": "wave"})
    assert status == 422 and error["field"] == "kind"
    status, _ = await api.call("POST", "/api/interactions", json={"account": "shop", "email": "zed@example.nl", "kind": "click"})
    assert status == 404


async def test_suppressions_crud(api: Api) -> None:
    status, body = await api.call("POST", "/api/suppressions", json={"account": "shop", "email": "Zed@Example.nl", "scope": "holding"})
    assert status == 201 and body["created"] is True
    assert body["suppression"]["reason"] == "suppression.unsubscribed" and body["suppression"]["scope"] == "holding"
    status, body = await api.call("POST", "/api/suppressions", json={"account": "shop", "email": "zed@example.nl", "scope": "holding"})
    assert status == 200 and body["created"] is False
    status, error = await api.call("POST", "/api/suppressions", json={"account": "shop", "email": "zed@example.nl", "reason": "bored"})
    assert status == 422 and error["field"] == "reason"
    status, error = await api.call("POST", "/api/suppressions", json={"account": "shop", "email": "zed@example.nl", "scope": "rival"})
    assert status == 422 and error["field"] == "scope"
    status, listed = await api.call("GET", "/api/suppressions", params={"account": "shop"})
    assert [s["email"] for s in listed["items"]] == ["zed@example.nl"]
    status, body = await api.call("DELETE", "/api/suppressions", params={"account": "shop", "email": "zed@example.nl", "scope": "holding"})
    assert status == 200 and body["removed"] == 1
    status, _ = await api.call("DELETE", "/api/suppressions", params={"account": "shop", "email": "zed@example.nl", "scope": "holding"})
    assert status == 404
    status, error = await api.call("DELETE", "/api/suppressions", params={"account": "shop"})
    assert status == 422 and error["field"] == "email"
