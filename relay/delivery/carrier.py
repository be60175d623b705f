"""Carry copies to the upstream, never losing one: 250 only after the upstream accepted, or after
the rest went durably into the outbox (docs/SPEC.md §3)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator

from relay.delivery.upstream import Upstream
from relay.errors import StoreUnavailable, UpstreamRejected, UpstreamUnavailable
from relay.store.base import OutboxStore
from relay.store.records import OutboxItem


@dataclass(frozen=True)
class Copy:
    """One upstream transaction: the recipients that get these exact bytes."""

    recipients: tuple[str, ...]
    content: bytes
    mail_from: str | None = None  # its own envelope sender (VERP, docs/SPEC.md §15); None: the transaction's
    # smtp_client.wire_ready(content) and a CRLF at its end, known where the copy was made (its
    # template's pieces checked once): dot-stuffing would change nothing, so the upstream does not look.
    wire_ready: bool = False


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # in the outbox, retried later
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> upstream reply (5xx)
    tempfailed: bool = False  # the client must retry (nothing accepted, or the rest not kept)
    tempfail_reason: str = ""
    store_failed: bool = False  # the tempfail is the store's (the outbox could not keep the rest)
    earlier: list[str] = field(default_factory=list)  # delivered by an earlier attempt, skipped now
    upstream_reply: str = ""  # the last DATA reply (queue id)
    rejected_code: int = 0  # every recipient refused with this 5xx code
    rejected_reply: str = ""


# Upstream transactions one message keeps in flight once the upstream has taken one of its copies:
# a message to 1,000 recipients is not 1,000 round trips end to end (the upstream pool, shared by
# every message of the process, still bounds the total).
PARALLEL_COPIES = 4


async def deliver(
    upstream: Upstream,
    outbox: OutboxStore,
    *,
    relay_id: str,
    account: str,
    stream: str,
    mail_from: str,
    copies: AsyncIterator[Copy],
    now: float,
) -> DeliveryReport:
    """Carry `copies` as they are made (relay.engine.copies: a window at a time), so a message's
    copies are not all in memory at once; only those kept for the outbox are. One at a time until
    the upstream accepts one (a down upstream: a 4xx with nothing sent), then PARALLEL_COPIES at once."""
    report = DeliveryReport()
    pending: list[Copy] = []
    flying: set[asyncio.Task[bool]] = set()
    try:
        async with contextlib.aclosing(copies):  # ends the maker when we stop early
            async for copy in copies:
                if not pending and not report.delivered:
                    if not await _carry(upstream, copy, mail_from, report, pending) and not report.delivered:
                        # Nothing was accepted yet: tell the client to keep its mail.
                        return report
                    continue
                while len(flying) >= PARALLEL_COPIES:
                    done, flying = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                if pending:  # the upstream failed a copy: the rest go to the outbox untried
                    pending.append(copy)
                    continue
                flying.add(asyncio.create_task(_carry(upstream, copy, mail_from, report, pending, keep=True)))
        while flying:
            done, flying = await asyncio.wait(flying)
            for task in done:
                task.result()
    finally:
        for task in flying:
            task.cancel()
        if flying:
            await asyncio.gather(*flying, return_exceptions=True)
    if pending:
        if not report.delivered:
            report.tempfailed = True
            report.tempfail_reason = "upstream deferred every recipient"
            return report
        items = [
            OutboxItem(relay_id, account, stream, _sender(copy, mail_from), copy.recipients, copy.content)
            for copy in pending
        ]
        try:
            await outbox.enqueue(items, now=now)
        except StoreUnavailable as exc:
            # Part was delivered but the rest cannot be kept: a 4xx makes the client retry
            # (duplicates for some) rather than lose the rest.
            report.tempfailed = True
            report.store_failed = True
            report.tempfail_reason = f"outbox unavailable: {exc}"
            return report
        report.queued = [r for copy in pending for r in copy.recipients]
    if report.refused and not report.delivered and not report.queued:
        code = report.rejected_code or int(next(iter(report.refused.values()))[:3] or 550)
        report.rejected_code = code
        report.rejected_reply = report.rejected_reply or next(iter(report.refused.values()))
    return report


async def _carry(
    upstream: Upstream, copy: Copy, mail_from: str, report: DeliveryReport, pending: list[Copy], *, keep: bool = False
) -> bool:
    """Send one copy and put what came of it in `report`; False when the upstream was unavailable:
    the copy joins `pending` when `keep` or when something was delivered already, else `report`
    says to tempfail."""
    try:
        result = await upstream.send(_sender(copy, mail_from), copy.recipients, copy.content, wire_ready=copy.wire_ready)
    except UpstreamUnavailable as exc:
        if keep or report.delivered:
            pending.append(copy)
        else:
            report.tempfailed = True
            report.tempfail_reason = str(exc)
        return False
    except UpstreamRejected as exc:
        for rcpt in copy.recipients:
            report.refused[rcpt] = exc.reply or str(exc)
        report.rejected_code, report.rejected_reply = exc.code, exc.reply or str(exc)
        return True
    report.delivered += result.accepted
    report.upstream_reply = result.reply
    for rcpt in result.permanently_refused:
        code, text = result.refused[rcpt]
        report.refused[rcpt] = f"{code} {text}"
    later = result.temporarily_refused
    if later:
        pending.append(Copy(later, copy.content, copy.mail_from, copy.wire_ready))
    return True


def _sender(copy: Copy, mail_from: str) -> str:
    return copy.mail_from if copy.mail_from is not None else mail_from
