"""`consent-relay complaint {import,list,ack,verify,rejected}` (docs/SPEC.md §9, §11, §16)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from relay.cli.common import EXIT_OK, add_command, print_json
from relay.errors import UsageError
from relay.feedback.complaints import ComplaintService, complaint_as_dict, mask_address
from relay.services import Services


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    complaint = sub.add_parser("complaint", help="import, list and acknowledge complaints (feedback reports)")
    csub = complaint.add_subparsers(dest="complaint_command", metavar="ACTION", parser_class=type(complaint))
    csub.required = True

    p = add_command(csub, common, "import", _import, "import a feedback report (ARF, RFC 5965) from a file ('-' = stdin)")
    p.add_argument("file")
    p.add_argument("--account", help="the account, when the report cannot be mapped to a delivered copy")
    p.add_argument("--actor", default="cli")
    p.add_argument("--json", action="store_true")

    p = add_command(csub, common, "list", _list, "list complaints, newest first")
    p.add_argument("--open", action="store_true", help="only complaints still waiting for the account's answer")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")

    p = add_command(csub, common, "ack", _ack, "acknowledge a complaint: the account answered it")
    p.add_argument("id", type=int)
    p.add_argument("--note", required=True, help="what was found and done about it")
    p.add_argument("--actor", default="cli")
    p.add_argument("--json", action="store_true")

    p = add_command(
        csub, common, "verify", _verify,
        "verify a complaint from no configured source (docs/SPEC.md §16): it counts and its deadline starts",
    )
    p.add_argument("id", type=int)
    p.add_argument("--note", default="", help="why it is genuine")
    p.add_argument("--actor", default="cli")
    p.add_argument("--json", action="store_true")

    p = add_command(csub, common, "rejected", _rejected, "list feedback reports refused as malformed or unmappable")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from exc


async def _import(services: Services, args: argparse.Namespace) -> int:
    raw = _read(args.file)
    service = ComplaintService(services)
    try:
        result = await service.ingest_raw(raw, source="cli", account=args.account, actor=args.actor)
    finally:
        await service.close()
    complaint = result.complaint
    if args.json:
        print_json({**complaint_as_dict(complaint), "duplicate": not result.created, "account_paused": result.account_paused})
        return EXIT_OK
    what = "recorded" if result.created else "was already recorded"
    line = f"complaint {complaint.id} {what}: account {complaint.account}, recipient {mask_address(complaint.email)}, {complaint.status}"
    if complaint.deadline:
        line += f", respond before {complaint.deadline:%Y-%m-%d %H:%M} UTC"
    print(line)
    if complaint.forward_error:
        print(f"forward to the abuse contact: {complaint.forward_error}")
    if result.account_paused:
        print(f"account {complaint.account} paused: complaint rate over the limit (account.complaint_rate)")
    return EXIT_OK


async def _list(services: Services, args: argparse.Namespace) -> int:
    items = await services.store.complaints.list(open_only=args.open, account=args.account, limit=max(1, args.limit))
    if args.json:
        print_json([complaint_as_dict(c) for c in items])
        return EXIT_OK
    for c in items:
        deadline = f"{c.deadline:%Y-%m-%d %H:%M}" if c.deadline else "-"
        verified = "verified" if c.verified else "unverified"
        print(f"{c.id}\t{c.status}\t{c.account}\t{c.email}\t{c.feedback_type}\t{c.received_at:%Y-%m-%d %H:%M}\t{deadline}\t{verified}")
    return EXIT_OK


async def _ack(services: Services, args: argparse.Namespace) -> int:
    complaint = await ComplaintService(services).acknowledge(args.id, note=args.note, actor=args.actor)
    if args.json:
        print_json(complaint_as_dict(complaint))
    else:
        print(f"complaint {complaint.id}: acknowledged by {complaint.acknowledged_by}")
    return EXIT_OK


async def _verify(services: Services, args: argparse.Namespace) -> int:
    service = ComplaintService(services)
    try:
        complaint = await service.verify(args.id, note=args.note, actor=args.actor)
    finally:
        await service.close()
    if args.json:
        print_json(complaint_as_dict(complaint))
        return EXIT_OK
    line = f"complaint {complaint.id}: verified by {args.actor}"
    if complaint.deadline:
        line += f", respond before {complaint.deadline:%Y-%m-%d %H:%M} UTC"
    print(line)
    return EXIT_OK


async def _rejected(services: Services, args: argparse.Namespace) -> int:
    rejects = await services.store.complaints.list_rejected(limit=max(1, args.limit))
    rows = [
        {"id": r.id, "source": r.source, "reason": r.reason, "received_at": r.received_at.isoformat(), "size": r.size}
        for r in rejects
    ]
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(f"{row['id']}\t{row['received_at']}\t{row['source']}\t{row['reason']}")
    return EXIT_OK
