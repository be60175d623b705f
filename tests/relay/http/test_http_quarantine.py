"""Admin API of the quarantine over the real admin app (bearer middleware included) on an ephemeral port:
filters, cursor paging, the JSON shapes of docs/SPEC.md §12, validation, the audit listing.
Release/delivery end to end lives in tests/e2e/test_quarantine_e2e.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from conftest import no_readiness, serving

from relay.config import build_config
from relay.routes import build_admin_app
from relay.passwords import hash_password
from relay.services import Clock, Services
from relay.store.records import QuarantineItem

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
TOKEN = "api-admin-token-0123456789"

# relay/http/admin.py stores the admin label under a str key, which aiohttp 3.14 warns about.


def item(n: int, *, account: str = "shop", rules: tuple[str, ...] = ("content.offensive_subject",), age: timedelta = timedelta(0)) -> QuarantineItem:
    return QuarantineItem(
        id=f"Q{n:04d}", relay_id=f"{n:04d}", account=account, stream="newsletter", mail_from="news@shop.example",
        rcpt_tos=("anna@example.nl",), subject=f"Subject {n}", rules=rules,
        findings=tuple({"rule": r, "action": "quarantine", "detail": f"why {r}", "evidence": "klote", "recipient": None} for r in rules),
        size=100 + n, received_at=NOW - age - timedelta(seconds=n), content=b"Subject: x\r\n\r\nbody\r\n",
    )


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, services: Services) -> None:
        self.session, self.base, self.services = session, base, services

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else await response.read()
            return response.status, body


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    data = {
        "store": {"url": f"sqlite:///{tmp_path}/relay.db"},
        "http": {"admin_tokens": [{"label": "bob", "hash": hash_password(TOKEN)}]},
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"]},
        "accounts": [
            {"id": "shop", "domains": ["shop.example"], "default_stream": "newsletter", "streams": [{"id": "newsletter", "kind": "marketing"}]},
            {"id": "bakkerij", "domains": ["bakkerij.example"], "default_stream": "news", "streams": [{"id": "news", "kind": "marketing"}]},
        ],
    }
    services = Services.build(build_config(data, tmp_path / "config.toml"), clock=Clock(now=lambda: NOW))
    await services.store.open()

    async with serving(build_admin_app(services, no_readiness)) as base, aiohttp.ClientSession() as session:
        yield Api(session, base, services)
    await services.store.close()


async def test_cursor_paging_walks_everything_once_newest_first(api: Api) -> None:
    for n in range(1, 8):
        await api.services.store.quarantine.hold(item(n))
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        status, body = await api.call("GET", "/api/quarantine?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200
        seen += [i["id"] for i in body["items"]]
        pages += 1
        if body["next"] is None:
            break
        cursor = body["next"]
    assert seen == [f"Q{n:04d}" for n in range(1, 8)] and pages == 3


async def test_filters_account_rule_since_before(api: Api) -> None:
    store = api.services.store.quarantine
    await store.hold(item(1, account="shop"))
    await store.hold(item(2, account="bakkerij", rules=("content.adult", "content.hateful")))
    await store.hold(item(3, account="shop", age=timedelta(days=10)))

    async def ids(query: str) -> list[str]:
        status, body = await api.call("GET", "/api/quarantine" + query)
        assert status == 200, body
        return [i["id"] for i in body["items"]]

    assert await ids("?account=bakkerij") == ["Q0002"]
    assert await ids("?rule=content.hateful") == ["Q0002"]
    assert await ids("?rule=content.offensive_subject&account=shop") == ["Q0001", "Q0003"]
    assert await ids("?since=7d") == ["Q0001", "Q0002"]
    assert await ids("?before=7d") == ["Q0003"]
    assert await ids("?since=2026-03-15T00:00:00Z") == ["Q0001", "Q0002"]
    status, body = await api.call("GET", "/api/quarantine?since=last-tuesday")
    assert status == 422 and body["error"] == "invalid" and "since" in body["detail"]
    status, body = await api.call("GET", "/api/quarantine?limit=100000")
    assert status == 422


async def test_shapes_of_spec_12(api: Api) -> None:
    await api.services.store.quarantine.hold(item(1, rules=("content.adult",)))
    status, body = await api.call("GET", "/api/quarantine")
    (summary,) = body["items"]
    assert summary == {
        "id": "Q0001", "account": "shop", "stream": "newsletter", "mail_from": "news@shop.example",
        "rcpt_tos": ["anna@example.nl"], "subject": "Subject 1", "rules": ["content.adult"],
        "received_at": "2026-03-15T11:59:59.000000+00:00", "size": 101,
    }
    status, detail = await api.call("GET", "/api/quarantine/Q0001")
    assert status == 200 and {k: detail[k] for k in summary} == summary
    assert [{k: f[k] for k in ("rule", "detail", "evidence")} for f in detail["findings"]] == [
        {"rule": "content.adult", "detail": "why content.adult", "evidence": "klote"}
    ]
    status, raw = await api.call("GET", "/api/quarantine/Q0001/raw")
    assert status == 200 and raw == b"Subject: x\r\n\r\nbody\r\n"


async def test_delete_audited_with_token_label_and_note(api: Api) -> None:
    await api.services.store.quarantine.hold(item(1))
    await api.services.store.quarantine.hold(item(2))
    api.services.metrics.quarantine_messages.set(2)
    status, body = await api.call("DELETE", "/api/quarantine/Q0001", json={"note": "junk"})
    assert status == 200 and body == {"id": "Q0001", "status": "deleted"}
    status, body = await api.call("GET", "/api/audit?target=Q0001")
    (entry,) = body["items"]
    assert (entry["actor"], entry["action"], entry["note"]) == ("bob", "quarantine.delete", "junk")
    assert entry["at"].startswith("2026-03-15T12:00:00")
    status, body = await api.call("POST", "/api/quarantine/delete", json={"ids": ["Q0002", "Q0001"], "note": 5})
    assert status == 422  # a note must be text
    status, body = await api.call("POST", "/api/quarantine/delete", json={"ids": ["Q0002", "Q0001"]})
    assert status == 200 and body["ok"] == 1 and body["failed"] == 1
    assert body["results"][1] == {"id": "Q0001", "status": "error", "error": "not_found", "detail": "no held quarantine item 'Q0001'"}
    status, body = await api.call("GET", "/api/audit?limit=1")
    assert len(body["items"]) == 1 and body["items"][0]["target"] == "Q0002"
    assert api.services.metrics.quarantine_messages._value.get() == 0
    assert api.services.metrics.quarantine_deletes.labels("admin")._value.get() == 2


async def test_bad_bodies(api: Api) -> None:
    for payload in ({"ids": "Q1"}, {"ids": []}, {"ids": [1, 2]}, {}):
        status, body = await api.call("POST", "/api/quarantine/release", json=payload)
        assert status == 422 and body["error"] == "invalid", payload
    status, body = await api.call("POST", "/api/quarantine/release", data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400
    status, body = await api.call("POST", "/api/quarantine/Qnone/release")
    assert status == 404 and body["error"] == "not_found"
