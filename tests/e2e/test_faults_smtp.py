"""Faults an SMTP client meets (issue 15, items 2, 3, 9, 11, 12): slow uploads, a store failing
during delivery, syntax the relay must refuse, memory that must stay bounded, and a delivery that
must never go unrecorded. docs/faults-smtp.md lists the guarantees and names these tests."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

from conftest import RecordingUpstream, asend, make_config

RELAY_ID = re.compile(r"Delivered as (\w+)")


def relay_id_of(text: str) -> str:
    found = RELAY_ID.search(text)
    assert found is not None, text
    return found.group(1)


# --- item 12: the delivery-id allocator running dry -------------------------------------------


async def test_a_dry_delivery_id_allocator_still_records_the_delivery(relay: Any, upstream: RecordingUpstream) -> None:
    ids = relay.pipeline.delivery_ids
    ids._next = ids._end  # the allocator ran dry before its refill landed
    outcome = await asend(relay.smtp_port)
    assert outcome.code == 250, outcome.text
    await relay.recorder.flush()
    deliveries = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
    assert [d.relay_id for d in deliveries] == [relay_id_of(outcome.text)]
    assert len(upstream.messages) == 1


async def test_no_delivery_id_means_a_tempfail_before_anything_leaves(
    start_relay: Any, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    relay = await start_relay(make_config(tmp_path, upstream.port, store={"timeout": 0.5}))
    ids = relay.pipeline.delivery_ids
    ids._next = ids._end
    # Another process holds the SQLite write lock: no block of ids can be reserved.
    blocker = sqlite3.connect(tmp_path / "var" / "relay.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        outcome = await asend(relay.smtp_port)
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert outcome.code == 451 and outcome.text.startswith("4.3.0"), outcome.text
    assert upstream.messages == []
    # The store is back: the client's retry is delivered and recorded.
    retry = await asend(relay.smtp_port)
    assert retry.code == 250, retry.text
    await relay.recorder.flush()
    deliveries = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
    assert [d.relay_id for d in deliveries] == [relay_id_of(retry.text)]
