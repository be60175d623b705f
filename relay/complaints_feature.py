"""Hooks complaints into a running Relay: the fbl@<mailto_domain> address on the SMTP listener and
the background check that suspends accounts whose complaints passed their deadline."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Sequence

from relay import replies
from relay.complaints import ComplaintRefused, ComplaintService, mask_address
from relay.errors import StoreUnavailable
from relay.log import get_logger

FBL_KIND = "fbl"
FBL_LOCAL_PART = "fbl"


class ComplaintsFeature:
    # How often overdue complaints are looked for; tests lower it (the deadline itself comes from the clock).
    check_seconds: float = 60.0

    def __init__(self, relay: Any) -> None:
        self.relay = relay
        self.services = relay.services
        self.service = ComplaintService(relay.services)
        self.address = f"{FBL_LOCAL_PART}@{relay.config.unsubscribe.mailto_domain.lower()}"
        self.log = get_logger()
        self.checks = 0  # completed deadline checks, for observers
        self._checked = asyncio.Condition()
        relay.pipeline.own_address_matchers.append(self.match_address)
        relay.pipeline.own_mail[FBL_KIND] = self.handle_mail

    def match_address(self, address: str) -> str | None:
        return FBL_KIND if address == self.address else None

    async def handle_mail(self, txn: Any, addresses: Sequence[str], raw: bytes) -> str:
        """A feedback report by mail. Refused ones get a 550 with the reason (and are kept)."""
        try:
            client_ip = getattr(txn, "client_ip", "")
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

    def background_tasks(self) -> list[Coroutine[Any, Any, None]]:
        # With [smtp] workers = N only the worker that serves HTTP (index 0) runs the check.
        return [self.watch_deadlines()] if self.relay.http else []

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
