"""`consent-relay bounce list` (docs/SPEC.md §15). A hard bounce is lifted like any suppression:
`consent-relay suppression remove EMAIL --account ID --reason bounced --note …` (audited)."""

from __future__ import annotations

import argparse
from typing import Any

from relay.cli.common import EXIT_OK, add_command, print_json
from relay.feedback.bounces import bounce_as_dict
from relay.services import Services
from relay.store.bounces import KINDS


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    bounce = sub.add_parser("bounce", help="list bounces (delivery status notifications)")
    bsub = bounce.add_subparsers(dest="bounce_command", metavar="ACTION", parser_class=type(bounce))
    bsub.required = True
    p = add_command(bsub, common, "list", _list, "list bounces, newest first")
    p.add_argument("--account")
    p.add_argument("--kind", choices=KINDS)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")


async def _list(services: Services, args: argparse.Namespace) -> int:
    items = await services.store.bounces.list(account=args.account, kind=args.kind, limit=max(1, args.limit))
    if args.json:
        print_json([bounce_as_dict(b) for b in items])
        return EXIT_OK
    for b in items:
        print(f"{b.id}\t{b.kind}\t{b.account or '-'}\t{b.email or '-'}\t{b.status or '-'}\t{b.received_at:%Y-%m-%d %H:%M}\t{b.detail or b.diagnostic[:80] or '-'}")
    return EXIT_OK
