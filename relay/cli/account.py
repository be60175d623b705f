"""`consent-relay account status|pause|suspend|resume ID --reason …`."""

from __future__ import annotations

import argparse
from typing import Any

from relay.accounts import change_account_state
from relay.cli.common import EXIT_OK, add_command, print_json
from relay.errors import UsageError
from relay.services import Services


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    account = sub.add_parser("account", help="show or change an account's state")
    asub = account.add_subparsers(dest="account_command", metavar="ACTION", parser_class=type(account))
    asub.required = True
    status = add_command(asub, common, "status", _status, "show accounts' states")
    status.add_argument("account", nargs="?")
    status.add_argument("--json", action="store_true")
    for action in ("pause", "suspend", "resume"):
        p = add_command(asub, common, action, _change, f"{action} an account (effective on its next MAIL FROM)")
        p.add_argument("account")
        # Every change is audited with its reason, resume too (POLICY.md: resume lifts a state "with a reason").
        p.add_argument("--reason", required=True, help="why: kept in the audit log")
        p.add_argument("--stream", help="pause only this stream" if action == "pause" else argparse.SUPPRESS)
        p.add_argument("--actor", default="cli")
        p.set_defaults(action=action)


async def _status(services: Services, args: argparse.Namespace) -> int:
    ids = [args.account] if args.account else [a.id for a in services.config.accounts]
    rows = []
    for account_id in ids:
        if services.config.account(account_id) is None:
            raise UsageError(f"unknown account {account_id!r}")
        state = await services.store.accounts.get(account_id)
        rows.append(
            {
                "account": account_id,
                "state": state.state,
                "reason": state.reason,
                "paused_streams": sorted(state.paused_streams),
                "updated_at": state.updated_at.isoformat() if state.updated_at else None,
            }
        )
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            extra = f" streams={','.join(row['paused_streams'])}" if row["paused_streams"] else ""
            print(f"{row['account']}\t{row['state']}\t{row['reason']}{extra}")
    return EXIT_OK


async def _change(services: Services, args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    if not reason:
        raise UsageError(f"--reason: say why the account is to {args.action}")
    state = await change_account_state(
        services, args.account, args.action, reason=reason, actor=args.actor, stream=getattr(args, "stream", None)
    )
    print(f"{args.account}: {state.state}" + (f" ({state.reason})" if state.reason else ""))
    return EXIT_OK
