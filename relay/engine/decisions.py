"""Every decision to the decisions table (batched, flushed within a moment and at shutdown) and
to one JSON log line."""

from __future__ import annotations

import asyncio
import logging

from relay.errors import StoreUnavailable
from relay.store.account_events import decision_events
from relay.log import get_logger, recipient_labels
from relay.store.base import DecisionStore
from relay.store.records import DecisionRecord, DeliveryRecord

_FLUSH_SECONDS = 0.05
_MAX_BUFFER = 500


class DecisionRecorder:
    def __init__(self, store: DecisionStore, delivered_events_for: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.delivered_events_for = delivered_events_for  # accounts whose webhooks asked for `delivered`
        self._decisions: list[DecisionRecord] = []
        self._deliveries: list[DeliveryRecord] = []
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writing = asyncio.Lock()
        self.log = get_logger()

    def record(self, decision: DecisionRecord, deliveries: list[DeliveryRecord] | None = None) -> None:
        self._decisions.append(decision)
        if deliveries:
            self._deliveries.extend(deliveries)
        if self.log.is_enabled_for(logging.INFO):  # the labels hash every recipient: not for nothing
            self._log(decision)
        if len(self._decisions) >= _MAX_BUFFER:
            self._event.set()

    def _log(self, decision: DecisionRecord) -> None:
        self.log.info(
            "decision",
            relay_id=decision.relay_id,
            message_id=decision.message_id,
            account=decision.account,
            stream=decision.stream,
            outcome=decision.outcome,
            rules=list(decision.rules),
            recipients=recipient_labels(decision.recipients),
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-recorder")

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._event.wait(), _FLUSH_SECONDS)
            except TimeoutError:
                pass
            self._event.clear()
            await self.flush()

    async def flush(self) -> None:
        """Everything recorded before the call is in the store when it returns (or kept on failure):
        a flush waits for one in flight, whose batch it cannot see, to commit first."""
        async with self._writing:
            if not self._decisions and not self._deliveries:
                return
            decisions, self._decisions = self._decisions, []
            deliveries, self._deliveries = self._deliveries, []
            try:
                events = decision_events(decisions, deliveries, self.delivered_events_for)
                await self.store.record(decisions, deliveries, events)
            except StoreUnavailable as exc:
                # Keep them for the next flush rather than drop the audit trail.
                self._decisions[:0] = decisions
                self._deliveries[:0] = deliveries
                self.log.warning("decisions_not_written", pending=len(self._decisions), error=str(exc))

    async def close(self) -> None:
        if self._task is not None:
            # Not cancelled: a cancel landing inside a flush would roll its batch back and lose it.
            self._closing = True
            self._event.set()
            await self._task
            self._task = None
        await self.flush()
