"""`consent-relay events tail --account ID [--after N] [--follow] [--json]` (SPEC §17)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from relay.cli import EXIT_OK, add_command
from relay.errors import UsageError
from relay.http_events import feed_account, parse_cursor
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
