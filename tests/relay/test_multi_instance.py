"""Two relay instances sharing one PostgreSQL: the outbox and account state work across them."""

from __future__ import annotations

import os
import secrets
from collections import Counter
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import pytest

from relay.store.records import AccountState
from tests.conftest import RecordingUpstream, RelayFactory, asend, make_config, message, until

PG_URL = os.environ.get("RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh schema in the shared database, dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={name}"
    finally:
        await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
        await admin.close()


async def test_outbox_copy_is_delivered_once_when_instances_race(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory, pg_url: str
) -> None:
    config = make_config(
        tmp_path,
        upstream.port,
        store={"url": pg_url},
        outbox={"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2, "poll_seconds": 0.05},
    )
    one = await start_relay(config, background=True)
    two = await start_relay(config, background=True)
    late = [f"late{i}@example.nl" for i in range(12)]
    for address in late:
        upstream.answer_rcpt(address, "451 4.3.0 mailbox busy, try later")
    for i, address in enumerate(late):
        relay = one if i % 2 == 0 else two
        out = await asend(relay.smtp_port, message(), rcpts=["anna@example.nl", address])
        assert out.code == 250, out
    # Both instances' outbox workers now retry the deferred copies from the shared table.
    await until(lambda: one.services.store.outbox.depth(), what="copies queued")
    for address in late:
        upstream.answer_rcpt(address, None)  # the upstream takes them again

    async def drained() -> bool:
        return await one.services.store.outbox.depth() == 0 and set(late) <= set(upstream.recipients())

    await until(drained, what="outbox drained")
    counts = Counter(upstream.recipients())
    assert {address: counts[address] for address in late} == {address: 1 for address in late}
    assert counts["anna@example.nl"] == len(late)


async def test_suspension_on_one_instance_refuses_mail_on_the_other(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: RelayFactory, pg_url: str
) -> None:
    config = make_config(tmp_path, upstream.port, store={"url": pg_url})
    one = await start_relay(config)
    two = await start_relay(config)
    assert (await asend(two.smtp_port, message())).code == 250
    await one.services.store.accounts.set(AccountState("shop", "suspended", "spam run"), actor="ops", note="")
    out = await asend(two.smtp_port, message())
    assert out.mail[0] == 554 and "[account.suspended]" in out.mail[1], out
    assert len(upstream.messages) == 1
