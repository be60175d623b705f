"""`consent-relay quarantine list|show|release|delete` (docs/SPEC.md §8, §11).

release/delete of several ids: exit 0 when every id succeeded, 2 when none did, 1 when only some did;
each failure is one line on stderr naming the id.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from policies.mime import split_head
from relay.assembly import RelayParts
from relay.cli.common import EXIT_OK, EXIT_USAGE, add_command, print_json
from relay.quarantine import service as qs
from relay.services import Services

EXIT_PARTIAL = 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    quarantine = sub.add_parser("quarantine", help="review held messages")
    qsub = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION", parser_class=type(quarantine))
    qsub.required = True

    listing = add_command(qsub, common, "list", _list, "list held messages, newest first")
    listing.add_argument("--account", help="only this account")
    listing.add_argument("--rule", help="only messages held by this rule id")
    listing.add_argument("--since", help="received at or after: ISO-8601 time or an age like 12h, 7d")
    listing.add_argument("--before", help="received before: ISO-8601 time or an age like 30d")
    listing.add_argument("--json", action="store_true", help="print the items as a JSON array")

    show = add_command(qsub, common, "show", _show, "show one held message: envelope, findings, headers")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--raw", action="store_true", help="print the raw message instead")

    for name, handler, text, needs_relay in (
        ("release", _release, "deliver held messages as normal delivery would (audited)", True),
        ("delete", _delete, "delete held messages (audited)", False),
    ):
        p = add_command(qsub, common, name, handler, text, needs_relay=needs_relay)
        p.add_argument("ids", nargs="+", metavar="ID")
        p.add_argument("--note", default="", help="why (written to the audit log)")
        p.add_argument("--actor", default="cli", help="who, in the audit log (default: cli)")
        p.add_argument("--json", action="store_true")


async def _list(services: Services, args: argparse.Namespace) -> int:
    now = services.clock.now()
    items = await qs.all_items(
        services,
        account=args.account,
        rule=args.rule,
        since=qs.parse_moment(args.since, now) if args.since else None,
        before=qs.parse_moment(args.before, now) if args.before else None,
    )
    if args.json:
        print_json([qs.item_summary(i) for i in items])
        return EXIT_OK
    for item in items:
        when = item.received_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{item.id}\t{when}\t{item.account}/{item.stream}\t{','.join(item.rules)}\t"
            f"{item.mail_from} -> {len(item.rcpt_tos)} rcpt\t{item.subject}"
        )
    if not items:
        print("no held messages", file=sys.stderr)
    return EXIT_OK


async def _show(services: Services, args: argparse.Namespace) -> int:
    item = await qs.get_item(services, args.id, with_content=True)
    if args.raw:
        sys.stdout.buffer.write(item.content)
        sys.stdout.flush()
        return EXIT_OK
    if args.json:
        print_json(qs.item_detail(item))
        return EXIT_OK
    lines = [
        f"id:          {item.id}",
        f"received:    {item.received_at.isoformat()}",
        f"account:     {item.account} (stream {item.stream})",
        f"mail from:   {item.mail_from}",
        f"recipients:  {', '.join(item.rcpt_tos)}",
        f"subject:     {item.subject}",
        f"size:        {item.size} bytes",
        f"held by:     {', '.join(item.rules)}",
        "findings:",
    ]
    for f in item.findings:
        view = qs.finding_view(f)
        who = f" ({view['recipient']})" if view["recipient"] else ""
        lines.append(f"  [{view['rule']}] {view['action']}{who}: {view['detail']}")
        if view["evidence"]:
            lines.append(f"      evidence: {view['evidence']}")
    head = item.content[: split_head(item.content)[0]]
    lines += ["headers:", *("  " + line for line in head.decode("utf-8", "replace").splitlines())]
    print("\n".join(lines))
    return EXIT_OK


def _report(outcomes: list[qs.Outcome], as_json: bool) -> int:
    if as_json:
        print_json([o.as_dict() for o in outcomes])
    for o in outcomes:
        if not o.ok:
            print(f"consent-relay: error: {o.id}: {o.detail}", file=sys.stderr)
        elif as_json:
            continue
        elif o.status == "released":
            refused = ", ".join(f"{r} [{why}]" for r, why in o.refused)
            queued = f"; queued for retry: {', '.join(o.queued)}" if o.queued else ""
            print(f"{o.id}: released; delivered to {len(o.delivered)}{queued}" + (f"; refused: {refused}" if refused else ""))
        else:
            print(f"{o.id}: {o.status}")
    ok = sum(1 for o in outcomes if o.ok)
    if ok == len(outcomes):
        return EXIT_OK
    return EXIT_USAGE if ok == 0 else EXIT_PARTIAL


async def _release(relay: RelayParts, args: argparse.Namespace) -> int:
    outcomes = await qs.release_many(relay.services, args.ids, actor=args.actor, note=args.note, through=relay.pipeline)
    return _report(outcomes, args.json)


async def _delete(services: Services, args: argparse.Namespace) -> int:
    return _report(await qs.delete_many(services, args.ids, actor=args.actor, note=args.note), args.json)
