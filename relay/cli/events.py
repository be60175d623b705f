"""`consent-relay events tail --account ID [--after N] [--follow] [--json]` and
`consent-relay webhook test ACCOUNT` (docs/SPEC.md §17)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from relay.cli.common import EXIT_FINDING, EXIT_OK, add_command
from relay.errors import UsageError
from relay.events.webhooks import send_ping
from relay.http.events import feed_account, parse_cursor
from relay.services import Services
from relay.store.records import Event, iso

_PAGE = 500


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    events = sub.add_parser("events", help="read an account's event feed")
    esub = events.add_subparsers(dest="events_command", metavar="ACTION", parser_class=type(events))
    esub.required = True
    p = add_command(esub, common, "tail", _tail, "print an account's events, oldest first; --follow waits for more")
    p.add_argument("--account", required=True)
    p.add_argument("--after", default="", help="the cursor (seq) to start after; default the start of the feed")
    p.add_argument("--follow", action="store_true", help="keep printing new events until interrupted")
    p.add_argument("--json", action="store_true", help="one JSON object a line, the shape of GET /api/events")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)

    webhook = sub.add_parser("webhook", help="check an account's webhooks")
    wsub = webhook.add_subparsers(dest="webhook_command", metavar="ACTION", parser_class=type(webhook))
    wsub.required = True
    p = add_command(wsub, common, "test", _test, "send a signed ping to each webhook of the account; exit 1 if one fails")
    p.add_argument("account")


def _line(event: Event) -> str:
    return "\t".join(
        (str(event.seq), iso(event.at) or "", event.type, event.recipient or "-", event.stream or "-",
         event.relay_id or "-", event.rule or "-")
    )


async def _tail(services: Services, args: argparse.Namespace) -> int:
    account = feed_account(services, args.account)
    try:
        cursor = parse_cursor(args.after)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    while True:
        events = await services.store.events.after(account.id, cursor, _PAGE)
        for event in events:
            print(json.dumps(event.as_dict(), ensure_ascii=False) if args.json else _line(event), flush=True)
        if events:
            cursor = events[-1].seq
            continue
        if not args.follow:
            return EXIT_OK
        await asyncio.sleep(args.poll)


async def _test(services: Services, args: argparse.Namespace) -> int:
    account = feed_account(services, args.account)
    if not account.webhooks:
        raise UsageError(f"account {account.id!r} has no [[accounts.webhooks]]")
    results = await send_ping(services, account, services.config.events.webhook_timeout)
    for hook, attempt in results:
        print(f"{'ok' if attempt.ok else 'FAILED'}\t{hook.url}\t{attempt.detail}")
    return EXIT_OK if all(a.ok for _, a in results) else EXIT_FINDING
