"""Relay instances sharing one PostgreSQL as separate hosts would: real `consent-relay serve`
processes on their own ports, driven over SMTP and HTTP. An unsubscribe, a suspension, a quarantine
release and the outbox work across them; `[smtp] workers = 2` on one host works on either store.
The shared rate limit runs two in-process instances on one frozen clock."""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies.facts import ConsentRecord
from relay.passwords import hash_password
from relay.services import Clock
from relay.store.postgres import PostgresStore
from tests.conftest import (
    RecordingUpstream,
    RelayFactory,
    ServeProcess,
    asend,
    config_dict,
    free_port,
    make_config,
    message,
    pg_schema,
    until,
    write_config,
)

ADMIN_TOKEN = "ops-admin-token-0123456789abcdef"
ADMIN_HASH = hash_password(ADMIN_TOKEN)
RCPTS = ["anna@example.nl", "bob@example.nl", "carl@example.nl"]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_schema() as url:
        yield url


# --- real processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    process: ServeProcess
    smtp: int
    admin: int
    public: int


def instance_config(tmp_path: Path, upstream_port: int, name: str, store_url: str, **overrides: object) -> Path:
    store: dict[str, object] = {"url": store_url, **overrides.pop("store", {})}  # type: ignore[dict-item]
    outbox: dict[str, object] = {
        "retry_initial_seconds": 0.05, "retry_max_seconds": 0.2, "poll_seconds": 0.05, **overrides.pop("outbox", {}),  # type: ignore[dict-item]
    }
    data = config_dict(
        tmp_path,
        upstream_port,
        store=store,
        http={
            "admin_listen": "127.0.0.1:0",
            "public_listen": "127.0.0.1:0",
            "public_base_url": "https://unsub.test",
            "admin_tokens": [{"label": "ops", "hash": ADMIN_HASH}],
            **overrides.pop("http", {}),  # type: ignore[dict-item]
        },
        outbox=outbox,
        **overrides,
    )
    return write_config(tmp_path, data, name)


@pytest.fixture
async def instances(
    tmp_path: Path, upstream: RecordingUpstream, pg_url: str
) -> AsyncIterator[Callable[[], Awaitable[list[Instance]]]]:
    """`await instances()` → two serve processes (one.toml, two.toml) on one PostgreSQL schema."""
    running: list[ServeProcess] = []

    async def start() -> list[Instance]:
        procs = [
            ServeProcess(instance_config(tmp_path, upstream.port, f"{n}.toml", pg_url, store={"shared": True}))
            for n in ("one", "two")
        ]
        running.extend(procs)
        started = await asyncio.gather(*(p.start() for p in procs))  # at once: their migrations race too
        return [Instance(p, s["smtp"], s["admin"], s["public"]) for p, (s,) in zip(procs, started)]

    yield start
    for proc in running:
        await proc.ensure_stopped()


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    """The test's own view of the shared store, for seeding consent and looking at the outbox."""
    s = PostgresStore(pg_url, 5.0)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def stopped(pair: list[Instance]) -> list[int]:
    return [await i.process.stop() for i in pair]


def consent(email: str) -> ConsentRecord:
    now = datetime.now(timezone.utc)
    return ConsentRecord(
        email=email, scope="shop", topic="*", basis="double_opt_in", source="signup_form",
        collected_at=now - timedelta(days=10), confirmed_at=now - timedelta(days=10),
        source_url="https://shop.example/signup", source_ip="198.51.100.4",
        statement_text="Yes, send me the Shop newsletter every Friday", frequency_disclosed=True,
    )


def newsletter(subject: str = "Nieuwe collectie") -> bytes:
    return message(
        sender="news@shop.example", subject=subject, stream="newsletter", body="Nieuw deze week. Afmelden: {{unsubscribe_url}}"
    )


async def counter(instance: Instance, name: str, **labels: str) -> float:
    """One sample of a counter on this instance's own /metrics (each process counts for itself)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{instance.admin}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli.main", *args, "-c", str(config),
        cwd=config.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_unsubscribe_through_one_instance_refuses_the_next_send_through_the_other(
    instances: Callable[[], Awaitable[list[Instance]]], store: PostgresStore, upstream: RecordingUpstream
) -> None:
    one, two = await instances()
    await store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    out = await asend(two.smtp, newsletter(), mail_from="news@shop.example")
    assert out.code == 250, out
    (copy,) = upstream.messages
    header = re.sub(r"\s+", " ", str(message_from_bytes(copy.content)["List-Unsubscribe"]))
    found = re.search(r"<https://unsub\.test/u/([A-Za-z0-9_-]+)>", header)
    assert found, header
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{one.public}/u/{found.group(1)}"
        async with http.post(url, data={"List-Unsubscribe": "One-Click"}, allow_redirects=False) as done:
            assert done.status == 200, await done.text()
    out = await asend(two.smtp, newsletter(), mail_from="news@shop.example")
    assert out.code == 550 and out.text.startswith("5.7.1 [suppression.unsubscribed]"), out
    assert len(upstream.messages) == 1
    assert await stopped([one, two]) == [0, 0]


async def test_outbox_copies_are_delivered_once_when_both_instances_retry_them(
    instances: Callable[[], Awaitable[list[Instance]]], store: PostgresStore, upstream: RecordingUpstream
) -> None:
    pair = await instances()
    late = [f"late{i}@example.nl" for i in range(12)]
    for address in late:
        upstream.answer_rcpt(address, "451 4.3.0 mailbox busy, try later")
    for i, address in enumerate(late):
        out = await asend(pair[i % 2].smtp, message(), rcpts=["anna@example.nl", address])
        assert out.code == 250 and "queued for retry" in out.text, out
    assert await store.outbox.depth() == len(late)

    upstream.stop()  # really down: nothing listens on its port now
    deferred = "consent_relay_outbox_attempts_total"
    at_stop = [await counter(i, deferred, outcome="deferred") for i in pair]

    async def both_retried_while_down() -> bool:
        # Two more deferred attempts each: an attempt in flight at the stop counts at most once, so the
        # second began against the dead port. Each instance's worker is running and claiming copies.
        now = [await counter(i, deferred, outcome="deferred") for i in pair]
        return all(n >= s + 2 for n, s in zip(now, at_stop))

    await until(both_retried_while_down, timeout=20, what="both instances retrying while the upstream is down")
    assert await store.outbox.depth() == len(late)  # nothing lost, nothing given up
    assert upstream.recipients() == ["anna@example.nl"] * len(late)

    for address in late:
        upstream.answer_rcpt(address, None)
    upstream.start()  # back, on the same port

    async def drained() -> bool:
        return await store.outbox.depth() == 0 and set(late) <= set(upstream.recipients())

    await until(drained, timeout=20, what="outbox drained")
    counts = Counter(upstream.recipients())
    assert {address: counts[address] for address in late} == {address: 1 for address in late}
    assert counts["anna@example.nl"] == len(late)
    delivered = [await counter(i, deferred, outcome="delivered") for i in pair]
    assert sum(delivered) == len(late), delivered  # one successful attempt per copy, over both instances
    assert await stopped(pair) == [0, 0]


def offensive_newsletter() -> bytes:
    """Marketing that passes every rule but content.offensive_subject, which the strict profile holds."""
    return message(
        sender="news@shop.example", to="undisclosed-recipients:;", subject="Wat een klote weer! Tijd voor 20% korting",
        stream="newsletter", body="Regen? Dan maar online shoppen.\r\n\r\nAfmelden: {{unsubscribe_url}}",
    )


async def test_quarantine_release_through_one_instance_of_a_message_held_by_the_other(
    instances: Callable[[], Awaitable[list[Instance]]], store: PostgresStore, upstream: RecordingUpstream
) -> None:
    one, two = await instances()
    await store.consent.upsert_consents([consent(r) for r in RCPTS], now=datetime.now(timezone.utc))
    out = await asend(one.smtp, offensive_newsletter(), mail_from="news@shop.example", rcpts=RCPTS)
    held = re.match(r"2\.6\.0 Held for review as (Q\S+) \[content\.offensive_subject\]", out.text)
    assert out.code == 250 and held, out
    qid = held.group(1)
    assert upstream.messages == []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        release = f"http://127.0.0.1:{two.admin}/api/quarantine/{qid}/release"
        async with http.post(release, json={"note": "subject is fine in context"}) as response:
            body = await response.json()
            assert response.status == 200, body
        assert body["status"] == "released" and sorted(body["delivered"]) == sorted(RCPTS), body
        again = f"http://127.0.0.1:{one.admin}/api/quarantine/{qid}/release"
        async with http.post(again) as response:
            assert response.status == 404  # released once, whichever instance is asked
    assert sorted(upstream.recipients()) == sorted(RCPTS)
    (entry,) = await store.audit.list(target=qid)
    assert entry.actor == "ops" and entry.action == "quarantine.release"
    assert await stopped([one, two]) == [0, 0]


async def test_suspension_through_the_cli_is_seen_by_both_instances(
    instances: Callable[[], Awaitable[list[Instance]]], upstream: RecordingUpstream
) -> None:
    pair = await instances()
    assert [(await asend(i.smtp)).code for i in pair] == [250, 250]
    code, out, err = await cli(pair[0].process.config, "account", "suspend", "shop", "--reason", "spam run")
    assert code == 0 and out.startswith("shop: suspended"), (code, out, err)
    for instance in pair:
        refused = await asend(instance.smtp)
        assert refused.final[0] == 554 and refused.final[1].startswith("5.7.1 [account.suspended]"), refused
    code, out, err = await cli(pair[1].process.config, "account", "resume", "shop", "--reason", "cleaned up")
    assert code == 0, (code, out, err)
    assert [(await asend(i.smtp)).code for i in pair] == [250, 250]
    assert len(upstream.messages) == 4
    assert await stopped(pair) == [0, 0]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_two_workers_on_one_port_deliver_and_stop_cleanly(
    kind: str, tmp_path: Path, upstream: RecordingUpstream, pg_url: str
) -> None:
    """`[smtp] workers = 2`: a supervisor and two worker processes on one port (sockets bound by the parent)."""
    port = free_port()
    url = "sqlite:///var/relay.db" if kind == "sqlite" else pg_url
    relay = ServeProcess(
        instance_config(tmp_path, upstream.port, "relay.toml", url, smtp={"listen": f"127.0.0.1:{port}", "workers": 2})
    )
    try:
        workers = await relay.start(started=2)  # both opened the fresh store at the same moment
        assert len({w["pid"] for w in workers}) == 2 and {w["smtp"] for w in workers} == {port}
        rcpts = [f"r{i}@example.nl" for i in range(10)]
        outcomes = [await asend(port, rcpts=r) for r in rcpts]  # a new connection each: both workers take some
        assert [o.code for o in outcomes] == [250] * len(rcpts), outcomes
        assert sorted(upstream.recipients()) == sorted(rcpts)
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()
    assert len(relay.events("relay_stopped")) == 2, b"".join(relay.raw).decode(errors="replace")
    if kind == "sqlite":
        assert (tmp_path / "var" / "relay.db").exists()


async def test_rate_limit_is_one_bucket_for_both_instances(
    tmp_path: Path, upstream: RecordingUpstream, pg_url: str, start_relay: RelayFactory
) -> None:
    # policy: platform (POLICY.md account.rate_limited: the limit holds however many instances share the store)
    config = make_config(tmp_path, upstream.port, store={"url": pg_url}, account={"rate_limit_per_minute": 3})
    frozen = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)  # no refill while the test runs
    one = await start_relay(config, clock=Clock(now=lambda: frozen))
    two = await start_relay(config, clock=Clock(now=lambda: frozen))
    # Alternating, each instance alone would pass 3 of its 4.
    outcomes = [await asend((one if i % 2 == 0 else two).smtp_port) for i in range(8)]
    assert [o.code for o in outcomes] == [250, 250, 250] + [451] * 5, outcomes
    assert all("[account.rate_limited]" in o.final[1] for o in outcomes[3:]), outcomes
    assert len(upstream.messages) == 3
