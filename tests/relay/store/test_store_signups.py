"""The signup store on both backends: the one-mail-per-window guard holds across instances and under
concurrency, the signup and its outbox copy are written together, a confirmation is recorded once."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import pytest

from relay.store.base import Store
from relay.store.postgres import PostgresStore
from relay.store.records import OutboxItem
from relay.store.signups import DELIVERED, Signup
from relay.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 16, 9, 0, tzinfo=timezone.utc)


def _make(url: str) -> Store:
    if url.startswith("sqlite:"):
        from relay.config import sqlite_path as path_of

        return SqliteStore(path_of(url), 5.0)
    return PostgresStore(url, 5.0)


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two instances on one database (two hosts, for PostgreSQL)."""
    first, second = _make(store_url), _make(store_url)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


def signup(signup_id: int, email: str = "anna@example.nl", at: datetime = T0) -> Signup:
    return Signup(
        signup_id, "shop", email, "newsletter", "shop", "newsletter", "Ja, graag", "https://shop.example/x",
        "198.51.100.7", "weekly", "nl", at, f"signup-{signup_id}",
    )


def mail(signup_id: int, email: str = "anna@example.nl") -> OutboxItem:
    return OutboxItem(f"signup-{signup_id}", "shop", "newsletter", "info@shop.example", (email,), b"Subject: x\r\n\r\nx\r\n")


async def test_one_mail_per_window_across_instances_and_under_concurrency(stores: tuple[Store, Store]) -> None:
    a, b = stores
    cutoff = T0 - timedelta(hours=24)
    results = await asyncio.gather(
        *((a if i % 2 else b).signups.create(signup(i), mail(i), resend_cutoff=cutoff, now=T0.timestamp()) for i in range(1, 13))
    )
    assert sorted(results) == [False] * 11 + [True]
    assert await a.outbox.depth() == 1
    assert len(await a.signups.for_address("anna@example.nl", ["shop"])) == 1
    # Another address is independent; the same address again only after the window.
    assert await a.signups.create(signup(20, "bob@example.nl"), mail(20, "bob@example.nl"), resend_cutoff=cutoff, now=T0.timestamp())
    later = T0 + timedelta(hours=24)
    assert not await b.signups.create(signup(21, at=later - timedelta(seconds=1)), mail(21), resend_cutoff=cutoff + timedelta(hours=24) - timedelta(seconds=1), now=later.timestamp())
    assert await b.signups.create(signup(22, at=later), mail(22), resend_cutoff=later - timedelta(hours=24), now=later.timestamp())
    assert await a.outbox.depth() == 3


async def test_confirm_once_and_delivery_noted(stores: tuple[Store, Store]) -> None:
    a, b = stores
    assert await a.signups.create(signup(1), mail(1), resend_cutoff=T0 - timedelta(hours=1), now=T0.timestamp())
    assert await a.signups.mail_delivered("signup-1", T0 + timedelta(seconds=1)) == 1
    assert await b.signups.mail_delivered("signup-1", T0 + timedelta(seconds=9)) == 0  # the first delivery stands
    confirmed = await asyncio.gather(
        a.signups.confirm(1, T0 + timedelta(minutes=5), "203.0.113.1"),
        b.signups.confirm(1, T0 + timedelta(minutes=6), "203.0.113.2"),
    )
    assert sorted(confirmed) == [False, True]
    got = await b.signups.get(1)
    assert got is not None and got.mail_status == DELIVERED and got.mail_at == T0 + timedelta(seconds=1)
    assert got.confirmed_at in (T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))
    assert got.confirm_ip == ("203.0.113.1" if got.confirmed_at == T0 + timedelta(minutes=5) else "203.0.113.2")
    assert got.requested_at == T0 and got.statement == "Ja, graag"
    assert await a.signups.get(99) is None
