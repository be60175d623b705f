"""Quarantine review shared by the CLI, the JSON API and the web UI: list, show, release, delete
(one or many, audited), counts, and the retention purge that runs in the background."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from relay.engine.pipeline import Pipeline
from relay.errors import NotFound, RelayError, UpstreamUnavailable, UsageError
from relay.engine.feature import Feature, Task
from relay.log import get_logger
from relay.quarantine.release import release_message
from relay.services import Services
from relay.store.records import AuditEntry, QuarantineItem, iso

PURGE_INTERVAL_SECONDS = 3600.0
MAX_PAGE = 500
RETENTION_ACTOR = "retention"

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# --- shapes of docs/SPEC.md §12 -----------------------------------------------------------------------


def item_summary(item: QuarantineItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "account": item.account,
        "stream": item.stream,
        "mail_from": item.mail_from,
        "rcpt_tos": list(item.rcpt_tos),
        "subject": item.subject,
        "rules": list(item.rules),
        "received_at": iso(item.received_at),
        "size": item.size,
    }


def finding_view(finding: dict[str, Any]) -> dict[str, Any]:
    """rule, detail, evidence (docs/SPEC.md §12), plus the action the profile gave it and its recipient."""
    return {
        "rule": finding.get("rule", ""),
        "detail": finding.get("detail", ""),
        "evidence": finding.get("evidence", "") or "",
        "action": finding.get("action", ""),
        "recipient": finding.get("recipient"),
    }


def item_detail(item: QuarantineItem) -> dict[str, Any]:
    return {**item_summary(item), "status": item.status, "findings": [finding_view(f) for f in item.findings]}


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "note": entry.note,
        "detail": entry.detail,
    }


# --- input --------------------------------------------------------------------------------------


def parse_moment(text: str, now: datetime) -> datetime:
    """`2026-03-15`, `2026-03-15T12:00:00+01:00`, or an age ago: `30m`, `12h`, `7d`, `2w`."""
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNIT_SECONDS[relative.group(2).lower()])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not a time: {text!r} (use ISO-8601 like 2026-03-15T12:00Z or an age like 12h, 7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --- reading ------------------------------------------------------------------------------------


async def list_items(
    services: Services,
    *,
    account: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[QuarantineItem], str | None]:
    if limit < 1 or limit > MAX_PAGE:
        raise UsageError(f"limit must be between 1 and {MAX_PAGE}")
    return await services.store.quarantine.list(
        account=account or None, rule=rule or None, since=since, before=before, cursor=cursor or None, limit=limit
    )


async def all_items(services: Services, **filters: Any) -> list[QuarantineItem]:
    """Every held item matching the filters (the CLI prints them all)."""
    items: list[QuarantineItem] = []
    cursor: str | None = None
    while True:
        page, cursor = await list_items(services, cursor=cursor, limit=MAX_PAGE, **filters)
        items += page
        if cursor is None:
            return items


async def get_item(services: Services, item_id: str, *, with_content: bool = False) -> QuarantineItem:
    item = await services.store.quarantine.get(item_id, with_content=with_content)
    if item is None:
        raise NotFound(f"no held quarantine item {item_id!r}")
    return item


@dataclass(frozen=True)
class Counts:
    total: int
    by_rule: dict[str, int]
    by_account: dict[str, int]


async def counts(services: Services, *, since: datetime | None = None, before: datetime | None = None) -> Counts:
    """Held items per rule and per account, received in [since, before)."""
    rules, accounts = await services.store.quarantine.counts(since=since, before=before)
    return Counts(sum(accounts.values()), dict(rules), dict(accounts))


async def audit_entries(services: Services, *, limit: int = 100, target: str | None = None) -> list[AuditEntry]:
    if limit < 1 or limit > 10_000:
        raise UsageError("limit must be between 1 and 10000")
    return await services.store.audit.list(limit=limit, target=target or None)


# --- acting -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one id of a (bulk) release or delete."""

    id: str
    status: str  # released | deleted | error
    delivered: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    error: str = ""  # not_found | conflict | upstream_unavailable | invalid
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "error"

    def as_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"id": self.id, "status": "error", "error": self.error, "detail": self.detail}
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.status == "released":
            out["delivered"] = list(self.delivered)
            out["refused"] = [{"recipient": r, "reason": why} for r, why in self.refused]
            if self.queued:
                out["queued"] = list(self.queued)
        return out


async def release_one(services: Services, item_id: str, *, actor: str, note: str, through: Pipeline | None) -> Outcome:
    """Deliver a held message `through` the relay's pipeline (None: an admin API without a relay)."""
    # A second click, a second admin or a second process: release_message claims the item in the
    # store first (held → releasing), so only one of them delivers; the others get a conflict.
    item = await services.store.quarantine.get(item_id)
    if item is None:
        return Outcome(item_id, "error", error="not_found", detail=f"no held quarantine item {item_id!r}")
    if through is None:
        return Outcome(item_id, "error", error="upstream_unavailable", detail="still held: no relay process to deliver through")
    try:
        result = await release_message(through, item, actor=actor, note=note)
    except UpstreamUnavailable as exc:
        return Outcome(item_id, "error", error="upstream_unavailable", detail=f"still held: {exc}")
    except UsageError as exc:
        return Outcome(item_id, "error", error="conflict", detail=str(exc))
    get_logger().info(
        "quarantine_released", id=item_id, actor=actor, delivered=len(result.delivered),
        queued=len(result.queued), refused=[why for _, why in result.refused],
    )
    return Outcome(
        item_id, "released", delivered=list(result.delivered), refused=list(result.refused),
        queued=list(result.queued),
    )


async def delete_one(services: Services, item_id: str, *, actor: str, note: str) -> Outcome:
    audit = AuditEntry(actor=actor, action="quarantine.delete", target=item_id, note=note, at=services.clock.now())
    if not await services.store.quarantine.set_status(item_id, "deleted", audit):  # held only, not releasing
        return Outcome(item_id, "error", error="not_found", detail=f"no held quarantine item {item_id!r}")
    services.metrics.quarantine_deletes.labels("admin").inc()
    services.metrics.quarantine_messages.dec()
    get_logger().info("quarantine_deleted", id=item_id, actor=actor)
    return Outcome(item_id, "deleted")


async def release_many(
    services: Services, ids: Iterable[str], *, actor: str, note: str, through: Pipeline | None
) -> list[Outcome]:
    # One after the other: each release is its own upstream transaction and audit entry.
    return [await release_one(services, i, actor=actor, note=note, through=through) for i in _unique(ids)]


async def delete_many(services: Services, ids: Iterable[str], *, actor: str, note: str) -> list[Outcome]:
    return [await delete_one(services, i, actor=actor, note=note) for i in _unique(ids)]


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i.strip() for i in ids if i and i.strip()))


# --- retention ----------------------------------------------------------------------------------


# A release delivers within minutes (every upstream wait has its timeout); a claim this old belongs
# to a process that stopped mid-release, and the message goes back to held rather than vanish.
ABANDONED_CLAIM = timedelta(hours=1)


async def purge_expired(services: Services) -> int:
    """Give abandoned release claims back, purge held items older than retention_days (each step
    audited by the store), refresh the gauge."""
    now = services.clock.now()
    returned = await services.store.quarantine.reclaim_abandoned(now - ABANDONED_CLAIM, RETENTION_ACTOR, now)
    if returned:
        get_logger().warning("quarantine_release_abandoned", ids=returned, hint="held again; release them anew")
    cutoff = now - timedelta(days=services.config.quarantine.retention_days)
    purged = await services.store.quarantine.purge_older_than(cutoff, RETENTION_ACTOR)
    if purged:
        services.metrics.quarantine_deletes.labels("retention").inc(purged)
        get_logger().info("quarantine_purged", count=purged, older_than=iso(cutoff))
    services.metrics.quarantine_messages.set(await services.store.quarantine.count())
    return purged


async def purge_loop(services: Services, interval: float = PURGE_INTERVAL_SECONDS) -> None:
    """Purge at start and then every `interval` seconds; a store outage waits for the next round."""
    while True:
        try:
            await purge_expired(services)
        except RelayError as exc:
            get_logger().warning("quarantine_purge_failed", error=str(exc))
        await asyncio.sleep(interval)


class QuarantineFeature(Feature):
    """The retention purge task (only where background tasks run)."""

    name = "quarantine"

    def __init__(self, services: Services) -> None:
        self.services = services

    def background_tasks(self) -> list[Task]:
        return [purge_loop(self.services)]
