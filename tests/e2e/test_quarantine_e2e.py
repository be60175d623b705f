"""Quarantine end to end (SPEC §8): a real relay and a real upstream; hold, review over the API
and the CLI, release (never to someone suppressed since), delete, audit, purge, store failure → 451."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from conftest import RecordingUpstream, asend, config_dict, until, write_config

from policies.facts import ConsentRecord, Suppression
from relay import quarantine_service as qs
from relay.config import load_config
from relay.errors import StoreUnavailable
from relay.passwords import hash_password

TOKEN = "alice-admin-token-0123456789"
TOKEN_HASH = hash_password(TOKEN)
RCPTS = ["anna@example.nl", "bob@example.nl", "carl@example.nl"]
SECRET = "unsubscribe-secret-for-tests-0123456789"

# relay/http_admin.py stores the admin label under a str key, which aiohttp 3.14 warns about; until it
# uses a web.RequestKey the warning must not turn every authenticated request into a 500.


def newsletter(subject: str = "Wat een klote weer! Tijd voor 20% korting") -> bytes:
    """A marketing message that passes every rule but content.offensive_subject (held by strict)."""
    return (
        "From: Shop <news@shop.example>\r\n"
        "To: undisclosed-recipients:;\r\n"
        f"Subject: {subject}\r\n"
        "Date: Tue, 10 Mar 2026 09:30:00 +0100\r\n"
        "Message-ID: <quarantine-e2e@shop.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "X-Relay-Stream: newsletter\r\n"
        "\r\n"
        "Hoi,\r\n\r\nRegen? Dan maar online shoppen.\r\n\r\n"
        "Shop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678\r\n"
        "Afmelden: {{unsubscribe_url}}\r\n"
    ).encode("utf-8")


def quarantine_id(text: str) -> str:
    found = re.search(r"Held for review as (Q\S+) \[([^\]]+)\]", text)
    assert found, text
    return found.group(1)


class Admin:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, (response.content_type, await response.read())


@pytest.fixture
def config_path(tmp_path: Path, upstream: RecordingUpstream) -> Path:
    data = config_dict(
        tmp_path,
        upstream.port,
        http={"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "alice", "hash": TOKEN_HASH}]},
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
    )
    return write_config(tmp_path, data)


@pytest.fixture
async def relay(start_relay: Any, config_path: Path) -> Any:
    relay = await start_relay(load_config(config_path))
    now = datetime.now(timezone.utc)
    await relay.services.store.consent.upsert_consents(
        [
            ConsentRecord(
                email=r, scope="shop", topic="*", basis="double_opt_in", source="signup_form",
                collected_at=now - timedelta(days=10), confirmed_at=now - timedelta(days=10),
                source_url="https://shop.example/signup", source_ip="198.51.100.4",
                statement_text="Yes, send me the Shop newsletter every Friday", frequency_disclosed=True,
            )
            for r in RCPTS
        ],
        now=now,
    )
    return relay


@pytest.fixture
async def admin(relay: Any) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, f"http://127.0.0.1:{relay.admin_port}")


async def hold(relay: Any, subject: str | None = None, rcpts: list[str] = RCPTS) -> str:
    out = await asend(relay.smtp_port, newsletter(subject) if subject else newsletter(), mail_from="news@shop.example", rcpts=rcpts)
    assert out.code == 250 and out.text.startswith("2.6.0 Held for review as Q"), out
    assert "[content.offensive_subject]" in out.text
    return quarantine_id(out.text)


async def test_held_only_after_commit_with_everything_kept(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    qid = await hold(relay)
    assert upstream.messages == []  # nothing went out
    item = await relay.services.store.quarantine.get(qid, with_content=True)
    assert item is not None and item.content.startswith(b"From: Shop <news@shop.example>")
    assert b"Regen? Dan maar online shoppen." in item.content and item.size == len(item.content)
    assert item.account == "shop" and item.stream == "newsletter" and item.mail_from == "news@shop.example"
    assert sorted(item.rcpt_tos) == sorted(RCPTS)
    status, body = await admin.call("GET", f"/api/quarantine/{qid}")
    assert status == 200
    assert body["rules"] == ["content.offensive_subject"] and body["size"] == item.size
    (finding,) = [f for f in body["findings"] if f["rule"] == "content.offensive_subject"]
    assert "klote" in finding["evidence"].lower() and finding["detail"]
    assert relay.services.metrics.quarantine_messages._value.get() == 1


async def test_api_needs_a_token(relay: Any, admin: Admin) -> None:
    qid = await hold(relay)
    for method, path in (
        ("GET", "/api/quarantine"), ("GET", f"/api/quarantine/{qid}"), ("GET", f"/api/quarantine/{qid}/raw"),
        ("POST", f"/api/quarantine/{qid}/release"), ("DELETE", f"/api/quarantine/{qid}"), ("GET", "/api/audit"),
        ("POST", "/api/quarantine/delete"),
    ):
        status, body = await admin.call(method, path, token=None)
        assert status == 401 and body["error"] == "unauthorized", (method, path)
        status, _ = await admin.call(method, path, token="wrong-token")
        assert status == 401
    assert await relay.services.store.quarantine.get(qid) is not None


async def test_release_after_unsubscribe_refuses_that_recipient(
    relay: Any, admin: Admin, upstream: RecordingUpstream
) -> None:
    qid = await hold(relay)
    await relay.services.store.consent.add_suppression(
        Suppression("bob@example.nl", "shop", "*", "suppression.unsubscribed", "one_click", datetime.now(timezone.utc))
    )
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release", json={"note": "subject is fine in context"})
    assert status == 200, body
    assert body["id"] == qid and body["status"] == "released"
    assert sorted(body["delivered"]) == ["anna@example.nl", "carl@example.nl"]
    assert body["refused"] == [{"recipient": "bob@example.nl", "reason": "suppression.unsubscribed"}]
    got = sorted(r for m in upstream.messages for r in m.rcpt_tos)
    assert got == ["anna@example.nl", "carl@example.nl"]
    for m in upstream.messages:  # per-recipient copies with list headers, signed or not, as normal delivery
        assert b"List-Unsubscribe:" in m.content and b"{{unsubscribe_url}}" not in m.content
    # Gone from the queue, audited with the admin's label and the note.
    status, _ = await admin.call("GET", f"/api/quarantine/{qid}")
    assert status == 404
    status, audit = await admin.call("GET", f"/api/audit?target={qid}")
    (entry,) = audit["items"]
    assert entry["actor"] == "alice" and entry["action"] == "quarantine.release"
    assert entry["note"] == "subject is fine in context" and entry["at"]
    assert relay.services.metrics.quarantine_releases._value.get() == 1
    assert relay.services.metrics.quarantine_messages._value.get() == 0
    # A second release is refused (404), nothing sent twice.
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release")
    assert status == 404 and body["error"] == "not_found"
    assert len(upstream.messages) == 2


async def test_release_when_upstream_down_keeps_it_held(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    qid = await hold(relay)
    upstream.stop()
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release")
    assert status == 503 and body["error"] == "upstream_unavailable", body
    assert await relay.services.store.quarantine.get(qid) is not None
    assert await relay.services.store.audit.list(target=qid) == []


async def test_delete_then_404_and_raw_and_list(relay: Any, admin: Admin) -> None:
    first = await hold(relay, "Wat een klote weer! Eerste")
    second = await hold(relay, "Wat een klote weer! Tweede")
    status, listing = await admin.call("GET", "/api/quarantine?account=shop&rule=content.offensive_subject")
    assert status == 200 and listing["next"] is None
    assert [i["id"] for i in listing["items"]] == [second, first]  # newest first
    assert set(listing["items"][0]) == {"id", "account", "stream", "mail_from", "rcpt_tos", "subject", "rules", "received_at", "size"}
    status, (ctype, raw) = await admin.call("GET", f"/api/quarantine/{first}/raw")
    assert status == 200 and ctype == "message/rfc822" and b"Subject: Wat een klote weer! Eerste" in raw
    status, body = await admin.call("DELETE", f"/api/quarantine/{first}", json={"note": "spam"})
    assert status == 200 and body == {"id": first, "status": "deleted"}
    for path in (f"/api/quarantine/{first}", f"/api/quarantine/{first}/raw"):
        status, body = await admin.call("GET", path)
        assert status == 404 and body["error"] == "not_found"
    status, body = await admin.call("DELETE", f"/api/quarantine/{first}")
    assert status == 404
    status, listing = await admin.call("GET", "/api/quarantine")
    assert [i["id"] for i in listing["items"]] == [second]
    assert relay.services.metrics.quarantine_deletes.labels("admin")._value.get() == 1


async def test_bulk_release_and_delete(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    ids = [await hold(relay, f"Wat een klote weer! nummer {n}", rcpts=["anna@example.nl"]) for n in range(4)]
    status, body = await admin.call("POST", "/api/quarantine/delete", json={"ids": ids[:2] + ["Qnope"], "note": "bulk"})
    assert status == 200 and body["ok"] == 2 and body["failed"] == 1
    assert [r["status"] for r in body["results"]] == ["deleted", "deleted", "error"]
    assert body["results"][2]["error"] == "not_found"
    status, body = await admin.call("POST", "/api/quarantine/release", json={"ids": ids[2:], "note": "ok"})
    assert status == 200 and body["ok"] == 2
    assert all(r["delivered"] == ["anna@example.nl"] for r in body["results"])
    assert len(upstream.messages) == 2
    status, audit = await admin.call("GET", "/api/audit?limit=10")
    actions = sorted((e["target"], e["action"]) for e in audit["items"])
    assert actions == sorted(
        [(ids[0], "quarantine.delete"), (ids[1], "quarantine.delete"), (ids[2], "quarantine.release"), (ids[3], "quarantine.release")]
    )
    status, body = await admin.call("POST", "/api/quarantine/delete", json={"ids": []})
    assert status == 422


async def test_store_failure_while_holding_gives_451(relay: Any, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(item: Any) -> None:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(relay.services.store.quarantine, "hold", broken)
    out = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=RCPTS)
    assert out.code == 451, out
    assert upstream.messages == []
    assert await relay.services.store.quarantine.count() == 0


async def test_purge_after_retention_is_audited(relay: Any) -> None:
    qid = await hold(relay)
    assert await qs.purge_expired(relay.services) == 0
    later = datetime.now(timezone.utc) + timedelta(days=31)
    relay.services.clock.now = lambda: later
    assert await qs.purge_expired(relay.services) == 1
    assert await relay.services.store.quarantine.get(qid) is None
    (entry,) = await relay.services.store.audit.list(target=qid)
    assert entry.actor == "retention" and entry.action == "quarantine.purge"
    assert relay.services.metrics.quarantine_deletes.labels("retention")._value.get() == 1
    assert relay.services.metrics.quarantine_messages._value.get() == 0


async def test_purge_loop_runs_in_the_background(relay: Any) -> None:
    await hold(relay)
    later = datetime.now(timezone.utc) + timedelta(days=31)
    relay.services.clock.now = lambda: later
    task = asyncio.create_task(qs.purge_loop(relay.services, interval=3600))
    try:
        await until(lambda: _count_zero(relay), what="the purge")
    finally:
        task.cancel()


async def _count_zero(relay: Any) -> bool:
    return await relay.services.store.quarantine.count() == 0


async def cli(config_path: Path, *argv: str) -> tuple[int, str, str]:
    """`consent-relay …` as a separate process, as an admin runs it from a shell."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", *argv, "-c", str(config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_cli_list_show_release_delete(relay: Any, config_path: Path, upstream: RecordingUpstream) -> None:
    a = await hold(relay, "Wat een klote weer! A", rcpts=["anna@example.nl"])
    b = await hold(relay, "Wat een klote weer! B", rcpts=["anna@example.nl"])

    code, out, err = await cli(config_path, "quarantine", "list", "--json", "--account", "shop")
    assert code == 0, err
    items = json.loads(out)
    assert isinstance(items, list) and [i["id"] for i in items] == [b, a]
    assert items[0]["rules"] == ["content.offensive_subject"] and items[0]["rcpt_tos"] == ["anna@example.nl"]
    code, out, _ = await cli(config_path, "quarantine", "list", "--rule", "content.adult", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = await cli(config_path, "quarantine", "list", "--since", "1h")
    assert code == 0 and a in out and b in out
    code, out, err = await cli(config_path, "quarantine", "list", "--since", "yesterday-ish")
    assert code == 2 and "not a time" in err and err.count("\n") == 1
    code, out, _ = await cli(config_path, "quarantine", "show", a)
    assert code == 0 and "content.offensive_subject" in out and "Subject: Wat een klote weer! A" in out
    code, out, err = await cli(config_path, "quarantine", "show", "Qmissing")
    assert code == 2 and err.count("\n") == 1 and "Qmissing" in err and "Traceback" not in err
    code, out, err = await cli(config_path, "quarantine", "release", a, "Qmissing", "--note", "fine")
    assert code == 1, (out, err)
    assert f"{a}: released; delivered to 1" in out and "Qmissing" in err, err
    assert [m.rcpt_tos for m in upstream.messages] == [["anna@example.nl"]]
    code, out, err = await cli(config_path, "quarantine", "delete", b, "--note", "junk")
    assert code == 0 and f"{b}: deleted" in out, err
    code, out, err = await cli(config_path, "quarantine", "delete", b)
    assert code == 2 and b in err
    entries = await relay.services.store.audit.list(limit=10)
    assert {(e.target, e.action, e.actor, e.note) for e in entries} >= {
        (a, "quarantine.release", "cli", "fine"), (b, "quarantine.delete", "cli", "junk")
    }
