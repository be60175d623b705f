"""Hooks complaints into a running Relay: the fbl@<mailto_domain> address on the SMTP listener and
the background check that suspends accounts whose complaints passed their deadline."""

from __future__ import annotations

import asyncio
from typing import Sequence

from relay import replies
from relay.engine.transaction import Transaction
from relay.errors import StoreUnavailable
from relay.engine.feature import Feature, Task
from relay.feedback.complaints import ComplaintRefused, ComplaintService, mask_address
from relay.log import get_logger
from relay.services import Services

FBL_KIND = "fbl"
FBL_LOCAL_PART = "fbl"


class ComplaintsFeature(Feature):
    name = FBL_KIND
    # How often overdue complaints are looked for; tests lower it (the deadline itself comes from the clock).
    check_seconds: float = 60.0

    def __init__(self, services: Services, *, deadline_checks: bool) -> None:
        self.services = services
        self.service = ComplaintService(services)
        self.address = f"{FBL_LOCAL_PART}@{services.config.unsubscribe.mailto_domain.lower()}"
        # With [smtp] workers = N only the worker that serves HTTP (index 0) runs the check.
        self.deadline_checks = deadline_checks
        self.log = get_logger()
        self.checks = 0  # completed deadline checks, for observers
        self._checked = asyncio.Condition()

    def own_address(self, address: str) -> bool:
        return address == self.address

    async def handle_mail(self, txn: Transaction, addresses: Sequence[str], raw: bytes) -> str:
        """A feedback report by mail. Refused ones get a 550 with the reason (and are kept)."""
        try:
            client_ip = txn.client_ip
            result = await self.service.ingest_raw(raw, source="mail", actor=f"smtp:{client_ip}", client_ip=client_ip)
        except ComplaintRefused as exc:
            return replies.feedback_refused(exc.reason, exc.reject_id)
        except StoreUnavailable as exc:
            self.log.error("store_unavailable", stage="complaint", error=str(exc))
            return replies.STORE_UNAVAILABLE
        complaint = result.complaint
        state = "recorded" if result.created else "already recorded"
        verified = "" if complaint.verified else ", unverified"
        more = f"; and {len(result.more)} more recipient(s) of the same report" if result.more else ""
        return replies.complaint_recorded(
            complaint.id, state, complaint.account, mask_address(complaint.email), more, f"{complaint.status}{verified}"
        )

    # --- the deadline ---------------------------------------------------------------------

    def background_tasks(self) -> list[Task]:
        return [self.watch_deadlines()] if self.deadline_checks else []

    async def watch_deadlines(self) -> None:
        while True:
            try:
                await self.service.enforce_deadlines()
            except StoreUnavailable as exc:
                self.log.warning("complaint_deadline_check_failed", error=str(exc))
            async with self._checked:
                self.checks += 1
                self._checked.notify_all()
            await asyncio.sleep(self.check_seconds)

    async def wait_for_check(self, after: int) -> int:
        """Wait until more than `after` deadline checks completed (tests drive the clock, not sleep)."""
        async with self._checked:
            await self._checked.wait_for(lambda: self.checks > after)
            return self.checks

    async def close(self) -> None:
        await self.service.close()
