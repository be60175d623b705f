"""Webhook delivery state (docs/SPEC.md §17), one row per account endpoint: the cursor into the account's
event feed up to which the endpoint has answered 2xx, the backoff of its failures, and a lease.

The lease is how instances sharing a store never send at once: an endpoint is claimed with one
conditional UPDATE, and the cursor moves only for the owner of the lease. Events are the feed's,
so a retry carries the same webhook-id; an instance killed mid-POST leaves its lease to expire
and the next owner sends from the cursor again (at least once, never a new id).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Sequence

from relay.store.sql import Database

_COLUMNS = "account, endpoint, url, cursor, attempts, next_attempt_at, failing_since, last_error, disabled_at"


@dataclass(frozen=True)
class WebhookState:
    account: str
    endpoint: str
    url: str
    cursor: int
    attempts: int = 0
    next_attempt_at: float = 0.0
    failing_since: float | None = None
    last_error: str = ""
    disabled_at: float | None = None


def _state(row: Any) -> WebhookState:
    return WebhookState(
        row["account"], row["endpoint"], row["url"], int(row["cursor"]), int(row["attempts"]),
        float(row["next_attempt_at"]), row["failing_since"], row["last_error"], row["disabled_at"],
    )


# One set of statements for both stores (relay/store/sql.py).
_ENSURE = (
    "INSERT INTO webhook_state (account, endpoint, url, cursor) "
    "VALUES (?, ?, ?, COALESCE((SELECT last FROM event_seq WHERE account = ?), 0)) "
    "ON CONFLICT (account, endpoint) DO UPDATE SET url = excluded.url"
)
_CLAIM = (
    "UPDATE webhook_state SET lease_owner = ?, lease_until = ? "
    "WHERE account = ? AND endpoint = ? AND disabled_at IS NULL AND next_attempt_at <= ? "
    f"AND (lease_until < ? OR lease_owner = ?) RETURNING {_COLUMNS}"
)
_ADVANCE = (
    "UPDATE webhook_state SET cursor = ?, attempts = 0, failing_since = NULL, last_error = '', next_attempt_at = 0 "
    "WHERE account = ? AND endpoint = ? AND lease_owner = ? AND cursor < ?"
)
_FAILED = (
    "UPDATE webhook_state SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, "
    "failing_since = COALESCE(failing_since, ?), lease_until = 0, "
    "disabled_at = CASE WHEN COALESCE(failing_since, ?) <= ? THEN CAST(? AS DOUBLE PRECISION) ELSE NULL END "
    f"WHERE account = ? AND endpoint = ? AND lease_owner = ? RETURNING {_COLUMNS}"
)
_RELEASE = "UPDATE webhook_state SET lease_until = 0 WHERE account = ? AND endpoint = ? AND lease_owner = ?"
_ENABLE = (
    "UPDATE webhook_state SET disabled_at = NULL, failing_since = NULL, attempts = 0, next_attempt_at = 0 "
    "WHERE account = ? AND endpoint = ?"
)
_STATES = f"SELECT {_COLUMNS} FROM webhook_state ORDER BY account, endpoint"
_OLDEST = (
    "SELECT w.account, min(e.at) AS oldest FROM webhook_state w JOIN events e "
    "ON e.account = w.account AND e.seq > w.cursor GROUP BY w.account"
)


class WebhookStateStore(abc.ABC):
    @abc.abstractmethod
    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

    @abc.abstractmethod
    async def _write(self, sql: str, params: Sequence[Any]) -> int: ...

    async def ensure(self, account: str, endpoint: str, url: str) -> None:
        """A new endpoint starts at the account's latest event: it gets what happens from now on."""
        await self._write(_ENSURE, (account, endpoint, url, account))

    async def claim(self, account: str, endpoint: str, owner: str, *, now: float, lease_seconds: float) -> WebhookState | None:
        rows = await self._rows(_CLAIM, (owner, now + lease_seconds, account, endpoint, now, now, owner))
        return _state(rows[0]) if rows else None

    async def advance(self, account: str, endpoint: str, owner: str, cursor: int) -> bool:
        return await self._write(_ADVANCE, (cursor, account, endpoint, owner, cursor)) > 0

    async def failed(
        self, account: str, endpoint: str, owner: str, *, now: float, next_attempt_at: float, error: str, disable_after: float
    ) -> WebhookState | None:
        """Count a failure; an endpoint failing since `disable_after` seconds or more is disabled."""
        params = (next_attempt_at, error[:500], now, now, now - disable_after, now, account, endpoint, owner)
        rows = await self._rows(_FAILED, params)
        return _state(rows[0]) if rows else None

    async def release(self, account: str, endpoint: str, owner: str) -> None:
        await self._write(_RELEASE, (account, endpoint, owner))

    async def enable(self, account: str, endpoint: str) -> None:
        await self._write(_ENABLE, (account, endpoint))

    async def states(self) -> list[WebhookState]:
        return [_state(r) for r in await self._rows(_STATES, ())]

    async def oldest_pending(self) -> dict[str, str]:
        """Per account, the time (ISO) of the oldest event some endpoint has not had yet."""
        return {r["account"]: r["oldest"] for r in await self._rows(_OLDEST, ())}


class SqlWebhookStates(WebhookStateStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if sql.lstrip().startswith("SELECT"):
            return list(await self.db.fetchall(sql, params))
        return await self.db.write_returning(sql, params)

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        return await self.db.write(sql, params)
