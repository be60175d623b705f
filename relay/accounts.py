"""Account state changes (pause, suspend, resume): validated, audited, logged, exported as a metric."""

from __future__ import annotations

from relay.errors import UsageError
from relay.log import get_logger
from relay.services import Services
from relay.store.records import AccountState

STATES = ("active", "paused", "suspended")


async def change_account_state(
    services: Services, account_id: str, action: str, *, reason: str, actor: str, stream: str | None = None
) -> AccountState:
    account = services.config.account(account_id)
    if account is None:
        raise UsageError(f"unknown account {account_id!r}")
    current = await services.store.accounts.get(account_id)
    if action == "resume":
        new = AccountState(account_id, "active", reason, frozenset())
    elif action == "pause" and stream:
        if account.stream(stream) is None:
            raise UsageError(f"account {account_id!r} has no stream {stream!r}")
        new = AccountState(account_id, current.state, current.reason, current.paused_streams | {stream})
    elif action == "pause":
        new = AccountState(account_id, "paused", reason, current.paused_streams)
    elif action == "suspend":
        new = AccountState(account_id, "suspended", reason, current.paused_streams)
    else:
        raise UsageError(f"unknown account action {action!r}")
    await services.store.accounts.set(new, actor=actor, note=reason)
    for state in STATES:
        services.metrics.account_state.labels(account_id, state).set(1 if new.state == state else 0)
    get_logger().info(
        "account_state_changed", account=account_id, state=new.state, previous=current.state, reason=reason,
        actor=actor, paused_streams=sorted(new.paused_streams),
    )
    return new
