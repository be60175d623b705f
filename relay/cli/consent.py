"""`consent-relay consent {import,add,show,proof,touch,revoke}` and `suppression {list,add,remove}`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from typing import Any

from policies.consent_rows import CONSENT_FIELDS, InvalidRow, parse_time
from policies.facts import Suppression
from policies.rules.consent import BASES, BOUNCED, COMPLAINT, INTERACTION_KINDS, SOURCES, UNSUBSCRIBED
from relay.cli.common import EXIT_FINDING, EXIT_OK, add_command, print_json
from relay.consent.imports import ConsentRefused, account_scopes, add_consent, import_consents, write_report_json
from relay.consent.proof import address_argument, build_proof, consent_as_dict, render_proof_text, suppression_as_dict
from relay.errors import NotFound, UsageError
from relay.services import Services
from relay.store.records import AuditEntry

# How many refusals the text output of an import lists (the --report file has all of them).
SHOWN_REFUSALS = 20
REASONS = {
    "unsubscribed": UNSUBSCRIBED, "complaint": COMPLAINT, "bounced": BOUNCED,
    UNSUBSCRIBED: UNSUBSCRIBED, COMPLAINT: COMPLAINT, BOUNCED: BOUNCED,
}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    consent = sub.add_parser("consent", help="import, add, show, prove, touch and revoke consent")
    csub = consent.add_subparsers(dest="consent_command", metavar="ACTION", parser_class=type(consent))
    csub.required = True

    p = add_command(csub, common, "import", _import, "import consent records from a CSV file (docs/SPEC.md §5)")
    p.add_argument("file")
    p.add_argument("--account", required=True)
    p.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    p.add_argument("--strict", action="store_true", help="exit 1 when any row was refused")
    p.add_argument("--report", metavar="OUT.csv", help="write one line per refused row (row, rule, detail)")
    p.add_argument("--json", action="store_true")

    p = add_command(csub, common, "add", _add, "add or update one consent record")
    p.add_argument("email")
    p.add_argument("--account", required=True)
    for name in CONSENT_FIELDS:
        if name in ("email", "created_at", "updated_at", "revoked_at", "revoked_via"):
            continue
        flag = "--" + name.replace("_", "-")
        if name in ("prechecked", "frequency_disclosed", "informed_at_collection", "objection_offered", "email_contact_announced"):
            p.add_argument(flag, dest=name, action="store_true")
        elif name == "basis":
            p.add_argument(flag, dest=name, choices=BASES)
        elif name == "source":
            p.add_argument(flag, dest=name, choices=SOURCES)
        else:
            p.add_argument(flag, dest=name)
    p.add_argument("--json", action="store_true")

    p = add_command(csub, common, "show", _show, "show an address's consent records and suppressions")
    p.add_argument("email")
    p.add_argument("--account", required=True)
    p.add_argument("--json", action="store_true")

    p = add_command(csub, common, "proof", _proof, "answer a complaint: the proof of consent for an address")
    p.add_argument("email")
    p.add_argument("--account", required=True)
    p.add_argument("--format", choices=("json", "text"), default="text")

    p = add_command(csub, common, "touch", _touch, "record an interaction that extends the consent's life")
    p.add_argument("email")
    p.add_argument("--account", required=True)
    p.add_argument("--kind", choices=INTERACTION_KINDS, default="click")
    p.add_argument("--at", help="ISO-8601 time of the interaction (default now)")

    p = add_command(csub, common, "revoke", _revoke, "revoke consent (at the account and its parent unless --scope)")
    p.add_argument("email")
    p.add_argument("--account", required=True)
    p.add_argument("--scope")
    p.add_argument("--topic", help="only this topic (default every topic)")
    p.add_argument("--via", default="admin")

    suppression = sub.add_parser("suppression", help="list, add and remove suppressions")
    ssub = suppression.add_subparsers(dest="suppression_command", metavar="ACTION", parser_class=type(suppression))
    ssub.required = True
    p = add_command(ssub, common, "list", _sup_list, "list suppressions")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p = add_command(ssub, common, "add", _sup_add, "suppress an address for an account (or its parent with --scope)")
    p.add_argument("email")
    p.add_argument("--account", required=True)
    p.add_argument("--scope")
    p.add_argument("--topic", default="*")
    p.add_argument("--reason", choices=sorted(REASONS), default="unsubscribed")
    p.add_argument("--note", default="")
    p = add_command(ssub, common, "remove", _sup_remove, "lift a suppression")
    p.add_argument("email")
    p.add_argument("--account", required=True)
    p.add_argument("--scope")
    p.add_argument("--reason", choices=sorted(REASONS))
    p.add_argument("--note", default="")


def _scope(services: Services, account_id: str, scope: str | None) -> str:
    scopes = account_scopes(services, account_id)
    if scope is None:
        return scopes[0]
    if scope not in scopes:
        raise UsageError(f"scope {scope!r} is neither account {account_id!r} nor its parent")
    return scope


async def _import(services: Services, args: argparse.Namespace) -> int:
    # --json lists every refusal: they wait in a temporary file, not in memory (a file may hold millions).
    with tempfile.TemporaryFile("w+", encoding="utf-8") if args.json else contextlib.nullcontext() as spool:
        report = await import_consents(
            services,
            args.file,
            args.account,
            dry_run=args.dry_run,
            strict=args.strict,
            report_path=args.report,
            keep_errors=0 if args.json else SHOWN_REFUSALS,
            refusals_to=spool,
        )
        if spool is not None:
            spool.seek(0)
            write_report_json(report, spool, sys.stdout)
    if not args.json:
        verb = "would import" if args.dry_run else "imported"
        if report.rolled_back:
            print(f"{args.file}: {verb} nothing: --strict and {report.refused} refused row(s)")
        else:
            print(f"{args.file}: {verb} {report.accepted}, unchanged {report.unchanged}, refused {report.refused}")
        for e in report.errors:
            print(f"  line {e.row}: [{e.rule}] {e.detail}")
        if report.refused > len(report.errors):
            print(f"  … and {report.refused - len(report.errors)} more" + (f" (see {args.report})" if args.report else ""))
    return EXIT_FINDING if args.strict and report.refused else EXIT_OK


async def _add(services: Services, args: argparse.Namespace) -> int:
    values = {name: getattr(args, name) for name in CONSENT_FIELDS if getattr(args, name, None) not in (None, False)}
    values["email"] = args.email
    try:
        result = await add_consent(services, values, args.account, actor="cli")
    except InvalidRow as exc:
        raise UsageError(exc.detail) from None
    except ConsentRefused as exc:
        print(f"refused: [{exc.rule}] {exc.detail}")
        return EXIT_FINDING
    if args.json:
        print_json({"consent": consent_as_dict(result.record), "changed": result.changed})
    else:
        r = result.record
        print(f"consent #{r.id} {r.email} scope={r.scope} topic={r.topic}: {'saved' if result.changed else 'unchanged'}")
    return EXIT_OK


async def _show(services: Services, args: argparse.Namespace) -> int:
    proof = await build_proof(services, args.email, args.account)
    if args.json:
        print_json({k: proof[k] for k in ("email", "account", "consents", "suppressions")})
        return EXIT_OK
    if not proof["consents"]:
        print(f"{proof['email']}: no consent at account {args.account} or its parent")
    for c in proof["consents"]:
        state = f"revoked {c['revoked_at']}" if c["revoked_at"] else "active"
        print(
            f"#{c['id']}\tscope={c['scope']}\ttopic={c['topic']}\t{c['basis']}/{c['source']}\t"
            f"collected={c['collected_at'] or '-'}\t{state}"
        )
    for s in proof["suppressions"]:
        print(f"suppressed\tscope={s['scope']}\ttopic={s['topic']}\t{s['reason']}\tvia={s['via']}\t{s['created_at']}")
    return EXIT_OK


async def _proof(services: Services, args: argparse.Namespace) -> int:
    proof = await build_proof(services, args.email, args.account)
    if args.format == "json":
        print_json(proof)
    else:
        print(render_proof_text(proof), end="")
    return EXIT_OK


async def _touch(services: Services, args: argparse.Namespace) -> int:
    email = address_argument(args.email)
    scopes = account_scopes(services, args.account)
    try:
        at = parse_time("--at", args.at, services.clock.now()) if args.at else services.clock.now()
    except InvalidRow as exc:
        raise UsageError(exc.detail) from None
    count = await services.store.consent.touch(scopes, email, args.kind, at or services.clock.now())
    if not count:
        raise NotFound(f"no active consent for {email} at account {args.account} or its parent")
    print(f"{email}: {args.kind} recorded on {count} consent record{'s' if count != 1 else ''}")
    return EXIT_OK


async def _revoke(services: Services, args: argparse.Namespace) -> int:
    email = address_argument(args.email)
    scopes = [_scope(services, args.account, args.scope)] if args.scope else account_scopes(services, args.account)
    now = services.clock.now()
    count = 0
    for scope in scopes:
        count += await services.store.consent.revoke(scope, email, args.topic, via=args.via, at=now)
    if not count:
        raise NotFound(f"no active consent for {email} at {' or '.join(scopes)}")
    await services.store.audit.add(
        AuditEntry("cli", "consent.revoke", args.account, detail={"email": email, "scopes": list(scopes), "topic": args.topic, "count": count}, at=now)
    )
    print(f"{email}: revoked {count} consent record{'s' if count != 1 else ''}")
    return EXIT_OK


async def _sup_list(services: Services, args: argparse.Namespace) -> int:
    if args.account:
        items = []
        for scope in account_scopes(services, args.account):
            items += await services.store.consent.list_suppressions(scope, args.limit)
        items = items[: args.limit]
    else:
        items = await services.store.consent.list_suppressions(None, args.limit)
    rows = [suppression_as_dict(s) for s in items]
    if args.json:
        print_json(rows)
    else:
        for s in rows:
            print(f"{s['email']}\tscope={s['scope']}\ttopic={s['topic']}\t{s['reason']}\tvia={s['via']}\t{s['created_at']}")
    return EXIT_OK


async def _sup_add(services: Services, args: argparse.Namespace) -> int:
    email = address_argument(args.email)
    scope = _scope(services, args.account, args.scope)
    now = services.clock.now()
    suppression = Suppression(email, scope, args.topic or "*", REASONS[args.reason], via="admin", created_at=now)
    added = await services.store.consent.add_suppression(suppression, note=args.note)
    if added:
        await services.store.audit.add(
            AuditEntry("cli", "suppression.add", args.account, args.note, {"email": email, "scope": scope, "topic": suppression.topic, "reason": suppression.reason}, now)
        )
    print(f"{email}: {'suppressed' if added else 'already suppressed'} at scope {scope} ({suppression.reason})")
    return EXIT_OK


async def _sup_remove(services: Services, args: argparse.Namespace) -> int:
    email = address_argument(args.email)
    scope = _scope(services, args.account, args.scope)
    reason = REASONS[args.reason] if args.reason else None
    count = await services.store.consent.remove_suppression(scope, email, reason)
    if not count:
        raise NotFound(f"no suppression for {email} at scope {scope}")
    await services.store.audit.add(
        AuditEntry("cli", "suppression.remove", args.account, args.note, {"email": email, "scope": scope, "reason": reason, "count": count}, services.clock.now())
    )
    print(f"{email}: lifted {count} suppression{'s' if count != 1 else ''} at scope {scope}")
    return EXIT_OK
