"""`consent-relay explain MESSAGE.eml --account ID …`: the whole policy offline, every rule's verdict, and the
clamd scan when `[malware] clamd` is configured (or a clear line that it could not run)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from email.utils import getaddresses
from typing import Any

from policies.addresses import InvalidAddress, normalize_address
from policies.facts import ClientFacts, ConsentRecord, MessageFacts, RecipientFacts, ShellFacts
from policies.findings import Action, Stage
from policies.message import parse_message
from policies.registry import ALL_RULES
from relay.cli.common import EXIT_FINDING, EXIT_OK, add_command, print_json
from relay.engine.pipeline import STREAM_HEADER
from relay.errors import ScannerUnavailable, UsageError
from relay.services import Services

_BLOCKING = (Action.REJECT, Action.QUARANTINE, Action.TEMPFAIL)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "explain", _explain, "run every rule on a message offline (a template linter)")
    p.add_argument("message", help="an .eml file")
    p.add_argument("--account", required=True)
    p.add_argument("--to", nargs="+", default=None, metavar="ADDR", help="recipients (default: the To/Cc headers)")
    p.add_argument("--stream", help="stream id (default: X-Relay-Stream or the account's default_stream)")
    p.add_argument("--from", dest="mail_from", help="envelope sender (default: the From address)")
    p.add_argument("--assume-consent", action="store_true", help="assume a documented, fresh opt-in for every recipient")
    p.add_argument("--json", action="store_true")


def _assumed_consent(email: str, scope: str, facts: MessageFacts) -> ConsentRecord:
    now = facts.now
    return ConsentRecord(
        email=email, scope=scope, topic="*", basis="double_opt_in", source="signup_form",
        collected_at=now - timedelta(days=1), confirmed_at=now - timedelta(days=1),
        source_url="https://example.invalid/signup", source_ip="192.0.2.1",
        statement_text="(assumed by explain --assume-consent)", frequency_disclosed=True, id="assumed",
    )


async def _explain(services: Services, args: argparse.Namespace) -> int:
    try:
        with open(args.message, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.message}: {exc.strerror or exc}") from exc
    account = services.config.account(args.account)
    if account is None:
        raise UsageError(f"unknown account {args.account!r}")
    message = parse_message(raw)
    requested = args.stream or message.header(STREAM_HEADER).strip() or None
    stream_cfg = account.stream(requested) if requested else account.stream(account.default_stream or "")
    recipients = _recipients(args.to, message)
    mail_from = args.mail_from or (message.from_addresses[0] if message.from_addresses else "")
    try:
        mail_from = normalize_address(mail_from) if mail_from else ""
    except InvalidAddress as exc:
        raise UsageError(str(exc)) from exc
    state = await services.store.accounts.get(account.id)
    scan = await _clamd_scan(services, raw)
    shell = ShellFacts()
    if scan is not None and scan["scanned"]:
        shell = ShellFacts(clamd_result=scan["found"])  # what relay.engine.malware_scan.MalwareScan hands the rule
    facts = MessageFacts(
        account=account.facts(state.state, state.reason, state.paused_streams),
        mail_from=mail_from,
        now=services.clock.now(),
        params=services.engine.profile.params,
        stream=stream_cfg.facts if stream_cfg else None,
        stream_requested=requested if stream_cfg is None else None,
        message=message,
        shell=shell,
    )
    if args.assume_consent:
        rfacts = [RecipientFacts(r, (_assumed_consent(r, account.id, facts),)) for r in recipients]
    elif stream_cfg is not None and stream_cfg.kind == "marketing":
        scopes = account.facts().scopes
        consents = await services.store.consent.find_consents(scopes, recipients)
        suppressions = await services.store.consent.find_suppressions(scopes, recipients)
        rfacts = [RecipientFacts(r, tuple(consents.get(r, ())), tuple(suppressions.get(r, ()))) for r in recipients]
    else:
        rfacts = [RecipientFacts(r) for r in recipients]
    rows = _verdicts(services, facts, rfacts)
    blocking = any(row["verdict"] == "hit" and row["action"] in [a.value for a in _BLOCKING] for row in rows)
    if scan is not None and scan["would_tempfail"]:
        blocking = True  # the relay would answer 451 and keep nothing: a template cannot be called clean
    if args.json:
        print_json(
            {
                "account": account.id,
                "stream": stream_cfg.id if stream_cfg else requested,
                "profile": services.engine.profile.name,
                "recipients": recipients,
                "would_block": blocking,
                "clamd": scan,
                "rules": rows,
            }
        )
    else:
        for row in rows:
            who = f" <{row['recipient']}>" if row.get("recipient") else ""
            mark = {"hit": "HIT ", "pass": "ok  ", "off": "off ", "not applicable": "n/a "}[row["verdict"]]
            line = f"{mark} {row['rule']:<36} {row['action']:<10}{who}"
            if row["verdict"] == "hit":
                line += f"  {row['detail']}"
                if row["evidence"]:
                    line += f" (evidence: {row['evidence']})"
            print(line)
        if scan is not None:
            print(_clamd_line(scan))
        print("=> would " + ("be refused or held" if blocking else "pass"))
    return EXIT_FINDING if blocking else EXIT_OK


async def _clamd_scan(services: Services, raw: bytes) -> dict[str, Any] | None:
    """The relay's `[malware] clamd` scan of the whole message, or None when none is configured."""
    malware = services.config.malware
    if not malware.clamd:
        return None
    from relay.engine.clamd import Clamd

    scan: dict[str, Any] = {
        "address": malware.clamd, "scanned": False, "found": "", "error": "",
        "on_unavailable": malware.clamd_unavailable, "would_tempfail": False,
    }
    try:
        scan["found"] = await Clamd(malware.clamd, malware.clamd_timeout).scan(raw)
        scan["scanned"] = True
    except ScannerUnavailable as exc:
        scan["error"] = str(exc)
        scan["would_tempfail"] = malware.clamd_unavailable == "tempfail"
    return scan


def _clamd_line(scan: dict[str, Any]) -> str:
    where = f"clamd at {scan['address']}"
    if scan["scanned"]:
        return f"{where}: " + (f"FOUND {scan['found']} (content.malware)" if scan["found"] else "scanned, clean")
    consequence = (
        "the relay would answer 451 (clamd_unavailable = tempfail)"
        if scan["would_tempfail"]
        else "the relay would deliver unscanned (clamd_unavailable = pass)"
    )
    return f"{where}: NOT scanned ({scan['error']}); {consequence}"


def _recipients(given: list[str] | None, message: Any) -> list[str]:
    if given:
        values = given
    else:
        headers = [str(v) for name in ("To", "Cc") for v in (message.headers.get_all(name) or [])]
        values = [addr for _, addr in getaddresses(headers) if addr]
    out = []
    for value in values:
        try:
            out.append(normalize_address(value))
        except InvalidAddress as exc:
            raise UsageError(str(exc)) from exc
    if not out:
        raise UsageError("no recipients: pass --to ADDR or put a To header in the message")
    return out


def _verdicts(services: Services, facts: MessageFacts, rfacts: list[RecipientFacts]) -> list[dict[str, Any]]:
    profile = services.engine.profile
    rows: list[dict[str, Any]] = []
    marketing = facts.stream is not None and facts.stream.is_marketing
    for rule in ALL_RULES:
        if rule.stage is Stage.ACCOUNT:
            continue
        action = profile.action(rule.id)
        targets: list[RecipientFacts | None] = list(rfacts) if rule.stage is Stage.RECIPIENT else [None]
        for rcpt in targets:
            row: dict[str, Any] = {
                "rule": rule.id, "action": action.value, "recipient": rcpt.address if rcpt else None,
                "clauses": list(rule.clauses), "verdict": "pass", "detail": "", "evidence": "",
            }
            if action is Action.OFF:
                row["verdict"] = "off"
            elif rule.marketing_only and not marketing:
                row["verdict"] = "not applicable"
            else:
                if rule.stage is Stage.CLIENT:  # the client of an account: permitted to relay
                    hit = rule.check(ClientFacts(ip="", account=facts.account.id))
                else:
                    hit = rule.check(facts, rcpt) if rcpt is not None else rule.check(facts)
                if hit is not None:
                    row.update(verdict="hit", detail=hit.detail, evidence=hit.evidence)
            rows.append(row)
    return rows
