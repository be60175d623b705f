"""The decision recorder: batched writes, and nothing lost when the relay shuts down mid-flush."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Sequence

from relay.engine.decisions import DecisionRecorder
from relay.store.records import DecisionRecord, DeliveryRecord

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)


class SlowDecisions:
    """A decision store whose first write waits until the test lets it finish."""

    def __init__(self) -> None:
        self.writing = asyncio.Event()
        self.release = asyncio.Event()
        self.written: list[DecisionRecord] = []
        self.deliveries: list[DeliveryRecord] = []

    async def record(self, decisions: Sequence[DecisionRecord], deliveries: Sequence[DeliveryRecord], events: Sequence[object] = ()) -> None:
        self.writing.set()
        await self.release.wait()
        self.written += decisions
        self.deliveries += deliveries


async def writing_in_the_background() -> tuple[SlowDecisions, DecisionRecorder, DeliveryRecord]:
    """A started recorder whose background flush has taken decision r1 (with its delivery) and is
    still writing it."""
    store = SlowDecisions()
    recorder = DecisionRecorder(store)  # type: ignore[arg-type]
    recorder.start()
    delivery = DeliveryRecord(7, "r1", "shop", "newsletter", "anna@example.nl", "delivered", NOW)
    recorder.record(DecisionRecord("r1", "delivered", NOW), [delivery])
    await store.writing.wait()
    return store, recorder, delivery


async def test_close_during_a_flush_loses_nothing() -> None:
    store, recorder, delivery = await writing_in_the_background()
    closing = asyncio.create_task(recorder.close())
    recorder.record(DecisionRecord("r2", "rejected", NOW))  # arrives while shutting down
    store.release.set()
    await closing
    assert [d.relay_id for d in store.written] == ["r1", "r2"]
    assert store.deliveries == [delivery]


async def test_flush_returns_only_after_the_batch_in_flight_is_written() -> None:
    # A complaint maps to a delivery row moments after the copy left: flush() must not return while the
    # background flush still holds that row, unseen by the caller, uncommitted.
    store, recorder, delivery = await writing_in_the_background()

    async def flush_then_look() -> list[DeliveryRecord]:
        await recorder.flush()
        return list(store.deliveries)  # what a caller finds in the store the moment flush() returns

    looking = asyncio.create_task(flush_then_look())
    store.release.set()
    assert await looking == [delivery]
    await recorder.close()
