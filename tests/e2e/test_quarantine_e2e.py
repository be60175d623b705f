"""Quarantine end to end (docs/SPEC.md §8): a real relay and a real upstream; hold, review over the API
and the CLI, release (never to someone suppressed since), delete, audit, purge, store failure → 451."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from conftest import RecordingUpstream, asend, config_dict, run_tool, until, write_config

from policies.facts import ConsentRecord, Suppression
from relay.config import load_config
from relay.errors import StoreUnavailable
from relay.passwords import hash_password
from relay.quarantine import service as qs

TOKEN = "alice-admin-token-0123456789"
TOKEN_HASH = hash_password(TOKEN)
RCPTS = ["anna@example.nl", "bob@example.nl", "carl@example.nl"]
SECRET = "unsubscribe-secret-for-tests-0123456789"

# relay/http/admin.py stores the admin label under a str key, which aiohttp 3.14 warns about; until it
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
    return await started_with_consent(start_relay, config_path)


async def started_with_consent(start_relay: Any, config_path: Path) -> Any:
    """A started relay on this config, every one of RCPTS with a fresh double opt-in at shop."""
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


async def test_a_release_killed_midway_is_held_again_by_the_background_task(relay: Any) -> None:
    """The claim of a release whose process died is given back (audited) an hour later, and the
    message can be released again: held mail never stays out of sight."""
    qid = await hold(relay)
    now = datetime.now(timezone.utc)
    assert await relay.services.store.quarantine.claim_release(qid, now) is not None  # then "kill -9"
    assert await relay.services.store.quarantine.get(qid) is None
    assert await qs.purge_expired(relay.services) == 0 and await relay.services.store.quarantine.get(qid) is None
    relay.services.clock.now = lambda: now + timedelta(hours=2)
    await qs.purge_expired(relay.services)
    assert await relay.services.store.quarantine.get(qid) is not None
    assert [e.action for e in await relay.services.store.audit.list(target=qid)] == ["quarantine.release_abandoned"]


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
        sys.executable, "-m", "relay.cli.main", *argv, "-c", str(config_path),
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


# --- release delivers as normal delivery would ---------------------------------------------------

VERIFIER = Path(__file__).parents[1] / "relay" / "dkim_verify.pl"


def perl_verify(raw: bytes, records: str, tmp_path: Path) -> str:
    keys = tmp_path / "dkim-keys.txt"
    keys.write_text(records)
    done = run_tool(["perl", str(VERIFIER), str(keys)], input=raw)
    return done.stdout.decode().splitlines()[-1].split()[1]


async def test_release_signs_every_copy_with_dkim(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from relay.delivery.dkim import dkim_dns_record, load_dkim_key

    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    data = config_dict(
        tmp_path, upstream.port,
        http={"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "alice", "hash": TOKEN_HASH}]},
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
        dkim={"keys": [{"domain": "shop.example", "selector": "q2026", "private_key": str(key_path)}]},
    )
    relay = await started_with_consent(start_relay, write_config(tmp_path, data))
    qid = await hold(relay, rcpts=RCPTS[:2])
    async with aiohttp.ClientSession() as session:
        status, body = await Admin(session, f"http://127.0.0.1:{relay.admin_port}").call("POST", f"/api/quarantine/{qid}/release")
    assert status == 200 and sorted(body["delivered"]) == RCPTS[:2], body
    records = f"q2026._domainkey.shop.example {dkim_dns_record(load_dkim_key('shop.example', 'q2026', key_path))}\n"
    assert len(upstream.messages) == 2  # one signed copy per recipient, each with its own List-Unsubscribe
    for copy in upstream.messages:
        assert copy.content.count(b"DKIM-Signature:") == 1 and b"List-Unsubscribe:" in copy.content
        assert perl_verify(copy.content, records, tmp_path) == "pass"
    tampered = upstream.messages[0].content.replace(b"Regen? Dan maar", b"Zon? Dan maar")
    assert perl_verify(tampered, records, tmp_path) == "fail"


async def test_release_failing_part_way_queues_the_rest(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    qid = await hold(relay)
    send_once = relay.pipeline.upstream.send

    async def send_then_upstream_dies(*args: Any, **kwargs: Any) -> Any:
        result = await send_once(*args, **kwargs)
        if upstream.running:
            await asyncio.to_thread(upstream.stop)
        return result

    relay.pipeline.upstream.send = send_then_upstream_dies
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release", json={"note": "fine"})
    assert status == 200 and body["status"] == "released", body
    assert len(body["delivered"]) == 1 and len(body["queued"]) == 2
    assert sorted(body["delivered"] + body["queued"]) == sorted(RCPTS) and body["refused"] == []
    assert upstream.recipients() == body["delivered"]
    assert await relay.services.store.outbox.depth() == 2  # durably kept, not lost and not held again
    assert await relay.services.store.quarantine.get(qid) is None
    (entry,) = await relay.services.store.audit.list(target=qid)
    assert sorted(entry.detail["delivered"]) == sorted(RCPTS)  # type: ignore[arg-type]
    relay.pipeline.upstream.send = send_once
    upstream.start()
    assert await relay.outbox.run_once() == 2
    assert sorted(upstream.recipients()) == sorted(RCPTS)
    assert await relay.services.store.outbox.depth() == 0
    # The queued copies are the same per-recipient copies: their own unsubscribe header each.
    assert len({m.content.split(b"List-Unsubscribe:")[1][:80] for m in upstream.messages}) == 3


async def test_release_skips_only_the_rules_that_held_it(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    from relay.accounts import change_account_state

    # policy: mailpro M-prior-consent — consent revoked since the hold: that recipient is refused
    qid = await hold(relay)
    assert await relay.services.store.consent.revoke("shop", "bob@example.nl", None, via="admin", at=datetime.now(timezone.utc))
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release")
    assert status == 200, body
    assert sorted(body["delivered"]) == ["anna@example.nl", "carl@example.nl"]
    assert body["refused"] == [{"recipient": "bob@example.nl", "reason": "consent.missing"}]
    assert sorted(upstream.recipients()) == ["anna@example.nl", "carl@example.nl"]

    # policy: mailpro M-violation — the account suspended since: the message rule refuses every copy
    second = await hold(relay, "Wat een klote weer! Nog een keer")
    await change_account_state(relay.services, "shop", "suspend", reason="complaints", actor="test")
    status, body = await admin.call("POST", f"/api/quarantine/{second}/release")
    assert status == 200 and body["delivered"] == [], body
    # (bob, without consent now, was refused at the hold already and is not among its recipients)
    assert body["refused"] == [{"recipient": r, "reason": "account.suspended"} for r in ("anna@example.nl", "carl@example.nl")]
    assert len(upstream.messages) == 2  # nothing more went out

    # policy: mailpro M-violation — paused is temporary: the message stays held, to be released later
    await change_account_state(relay.services, "shop", "resume", reason="", actor="test")
    third = await hold(relay, "Wat een klote weer! Derde")
    await change_account_state(relay.services, "shop", "pause", reason="investigating", actor="test")
    status, body = await admin.call("POST", f"/api/quarantine/{third}/release")
    assert status == 409 and "account.paused" in body["detail"], body
    assert await relay.services.store.quarantine.get(third) is not None
    await change_account_state(relay.services, "shop", "resume", reason="", actor="test")
    status, body = await admin.call("POST", f"/api/quarantine/{third}/release")
    assert status == 200 and sorted(body["delivered"]) == ["anna@example.nl", "carl@example.nl"], body


async def test_a_message_level_reject_on_release_refuses_every_recipient_also_when_one_is_refused_alone(
    relay: Any, admin: Admin, upstream: RecordingUpstream
) -> None:
    from relay.accounts import change_account_state

    # policy: mailpro M-violation — the account suspended since the hold refuses the whole message,
    # even though bob is also refused on his own (consent revoked since): nobody gets a copy
    qid = await hold(relay)
    assert await relay.services.store.consent.revoke("shop", "bob@example.nl", None, via="admin", at=datetime.now(timezone.utc))
    await change_account_state(relay.services, "shop", "suspend", reason="complaints", actor="test")
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release", json={"note": "looks fine"})
    assert status == 200 and body["status"] == "released", body
    assert body["delivered"] == [] and "queued" not in body, body
    assert body["refused"] == [
        {"recipient": "anna@example.nl", "reason": "account.suspended"},
        {"recipient": "bob@example.nl", "reason": "account.suspended, consent.missing"},
        {"recipient": "carl@example.nl", "reason": "account.suspended"},
    ]
    assert upstream.messages == [] and await relay.services.store.outbox.depth() == 0
    # Refused for good, as a release the account's suspension refuses outright: out of the queue, audited.
    assert await relay.services.store.quarantine.get(qid) is None
    (entry,) = await relay.services.store.audit.list(target=qid)
    assert entry.detail["delivered"] == [] and len(entry.detail["refused"]) == 3  # type: ignore[arg-type]


async def test_two_releases_at_once_deliver_once(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    qid = await hold(relay, rcpts=["anna@example.nl"])
    (first, body1), (second, body2) = await asyncio.gather(
        admin.call("POST", f"/api/quarantine/{qid}/release"), admin.call("POST", f"/api/quarantine/{qid}/release")
    )
    assert sorted([first, second]) == [200, 404] or sorted([first, second]) == [200, 409], (body1, body2)
    assert upstream.recipients() == ["anna@example.nl"]
    assert [e.action for e in await relay.services.store.audit.list(target=qid)] == ["quarantine.release"]


class GatedData:
    """The upstream's first DATA waits until the test opens the gate; later ones pass straight through."""

    def __init__(self, upstream: RecordingUpstream) -> None:
        self.inner = upstream.handler.handle_DATA
        self.arrived = threading.Event()
        self.gate = threading.Event()
        self._first = True

    async def __call__(self, server: Any, session: Any, envelope: Any) -> str:
        if self._first:
            self._first = False
            self.arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 120)
        return await self.inner(server, session, envelope)


async def test_releases_from_two_processes_deliver_once(
    relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    qid = await hold(relay, rcpts=["anna@example.nl"])
    # Two admins' shells, one config (the relay's store); a patient upstream timeout for the gate.
    data = config_dict(
        tmp_path, upstream.port, upstream={"host": "127.0.0.1", "port": upstream.port, "starttls": "off", "timeout": 120},
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
    )
    shell_config = write_config(tmp_path, data, name="shell.toml")
    gated = GatedData(upstream)
    upstream.handler.handle_DATA = gated  # type: ignore[method-assign]
    first = asyncio.create_task(cli(shell_config, "quarantine", "release", qid, "--note", "first"))
    try:
        await until(gated.arrived.is_set, timeout=60, what="the first release to reach DATA")
        # While the first process is mid-delivery, a second one tries the same id.
        second = await cli(shell_config, "quarantine", "release", qid, "--note", "second")
    finally:
        gated.gate.set()
        code, out, err = await first
    assert second[0] != 0 and qid in second[2] and "released" not in second[1], second
    assert code == 0 and f"{qid}: released; delivered to 1" in out, (out, err)
    assert upstream.recipients() == ["anna@example.nl"]
    entries = await relay.services.store.audit.list(target=qid)
    assert [(e.action, e.note) for e in entries] == [("quarantine.release", "first")]


async def test_a_failed_release_is_held_again_and_can_be_retried(relay: Any, admin: Admin, upstream: RecordingUpstream) -> None:
    qid = await hold(relay, rcpts=["anna@example.nl"])
    upstream.answer_rcpt("anna@example.nl", "451 4.3.0 try later")
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release")
    assert status == 503 and body["error"] == "upstream_unavailable", body
    item = await relay.services.store.quarantine.get(qid)
    assert item is not None and item.status == "held"  # not stuck in "releasing"
    upstream.answer_rcpt("anna@example.nl", None)
    status, body = await admin.call("POST", f"/api/quarantine/{qid}/release")
    assert status == 200 and body["delivered"] == ["anna@example.nl"], body
