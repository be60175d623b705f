"""The admin web UI at /ui/: sign in with an admin token, review the quarantine, read the audit log,
change account states, look up a proof of consent. Server-rendered HTML from autoescaping Jinja2
templates (relay/web/templates); works without JavaScript. Sessions, the CSRF guard and the layout are
in relay/web/ui_base.py; the complaints page in ui_complaints.py.

Sessions live in this process's memory (a random id in an HttpOnly, SameSite=Strict cookie scoped to
/ui); every POST form carries the session's CSRF token. Quarantined HTML is only ever shown from its own
endpoint inside <iframe sandbox>, under a CSP that allows no script and no remote content.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import web

from policies.message import parse_message
from policies.mime import split_head
from relay.accounts import change_account_state
from relay.errors import RelayError, UsageError
from relay.events.webhooks import disabled_notes
from relay.http.admin_auth import CHECKER, GUARD
from relay.http.common import form_body, pipeline_of, services_of
from relay.quarantine import service as qs
from relay.services import Services
from relay.store.records import AuditEntry, QuarantineItem
from relay.web import ui_complaints
from relay.web.safe_html import make_inert
from relay.templating import render
from relay.web.ui_base import (
    LOGIN_COOKIE,
    MAX_NOTE,
    PAGE_CSP,
    SESSION_COOKIE,
    SESSIONS,
    Session,
    Sessions,
    current_session,
    page,
    query,
    redirect,
    same_ui_path,
    secure_headers,
    signed_in,
)

__all__ = ["MESSAGE_CSP", "PAGE_CSP", "SESSION_COOKIE", "SESSIONS", "Session", "Sessions", "add_routes"]

PAGE_SIZE = 50
# The quarantined HTML itself: no script, no remote anything, inline styles and data: images only.
MESSAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"

AGES: dict[str, tuple[str, timedelta | None, timedelta | None]] = {
    # key: (label, since = now - a, before = now - b)
    "": ("Any age", None, None),
    "1h": ("Last hour", timedelta(hours=1), None),
    "24h": ("Last 24 hours", timedelta(hours=24), None),
    "7d": ("Last 7 days", timedelta(days=7), None),
    "older7d": ("Older than 7 days", None, timedelta(days=7)),
}


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


# --- sign in / out ----------------------------------------------------------------------------------


async def login_form(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = page(
        request, None, "login.html", "Sign in", status=status,
        csrf=nonce, next=same_ui_path(request.query.get("next")), error=error,
    )
    # Login CSRF: the form's token must match this cookie (double submit), as no session exists yet.
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/ui", secure=request.secure)
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if current_session(request) is not None:
        raise redirect(same_ui_path(request.query.get("next")))
    return await login_form(request)


async def _locked_out(request: web.Request) -> web.Response | None:
    wait = request.app[GUARD].retry_after(request)
    if wait is None:
        return None
    minutes = max(1, -(-wait // 60))
    response = await login_form(
        request, error=f"Too many failed sign-ins from your address. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
        status=429,
    )
    response.headers["Retry-After"] = str(wait)
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    if (locked := await _locked_out(request)) is not None:
        return locked
    form = await form_body(request)
    sent, cookie = str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not cookie or not hmac.compare_digest(sent, cookie):
        return await login_form(request, error="The sign-in form expired; please try again.", status=403)
    token = str(form.get("token", "")).strip()
    label = await request.app[CHECKER].label_for(token) if token else None
    if label is None:
        await request.app[GUARD].failed(request, "login")
        if (locked := await _locked_out(request)) is not None:
            return locked
        return await login_form(request, error="That token is not a valid admin token.", status=401)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        request.app[SESSIONS].end(old)
    session = request.app[SESSIONS].create(label)
    response = web.HTTPSeeOther(same_ui_path(str(form.get("next", ""))))
    response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="Strict", path="/ui", secure=request.secure)
    response.del_cookie(LOGIN_COOKIE, path="/ui")
    raise response


@signed_in
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    request.app[SESSIONS].end(session.id)
    response = web.HTTPSeeOther("/ui/login")
    response.del_cookie(SESSION_COOKIE, path="/ui")
    raise response


async def root(request: web.Request) -> web.StreamResponse:
    raise redirect("/ui/quarantine")


# --- quarantine list --------------------------------------------------------------------------------


def _age_window(age: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    _, since, before = AGES.get(age, AGES[""])
    return (now - since if since else None, now - before if before else None)


@signed_in
async def quarantine_list(request: web.Request, session: Session) -> web.Response:
    services = services_of(request)
    now = services.clock.now()
    account = request.query.get("account", "")
    rule = request.query.get("rule", "")
    age = request.query.get("age", "") if request.query.get("age", "") in AGES else ""
    cursor = request.query.get("cursor", "")
    since, before = _age_window(age, now)
    items, next_cursor = await qs.list_items(
        services, account=account, rule=rule, since=since, before=before, cursor=cursor, limit=PAGE_SIZE
    )
    counts = await qs.counts(services, since=since, before=before)
    rules = sorted(set(counts.by_rule) | ({rule} if rule else set()))
    held = f"{counts.total} held" + ("" if not age else f" ({AGES[age][0].lower()})")

    def chips(key: str, by_value: dict[str, int], chosen: str) -> list[dict[str, Any]]:
        return [
            {"value": value, "n": n, "on": value == chosen,
             "href": "/ui/quarantine" + query(**{"account": account, "rule": rule, "age": age, key: "" if value == chosen else value})}
            for value, n in sorted(by_value.items(), key=lambda x: -x[1])
        ]

    return page(
        request, session, "quarantine_list.html", "Quarantine", now=now, size=_size,
        summary=held, items=items, account=account, rule=rule, age=age, back=request.path_qs,
        account_choices=[("", "All accounts")] + [(a.id, a.id) for a in services.config.accounts],
        rule_choices=[("", "All rules")] + [(r, r) for r in rules],
        age_choices=[(k, v[0]) for k, v in AGES.items()],
        rule_counts=chips("rule", counts.by_rule, rule), account_counts=chips("account", counts.by_account, account),
        first_page="/ui/quarantine" + query(account=account, rule=rule, age=age) if cursor else "",
        next_page="/ui/quarantine" + query(account=account, rule=rule, age=age, cursor=next_cursor) if next_cursor else "",
    )


@signed_in
async def quarantine_bulk(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    ids = [str(v) for v in form.getall("ids", [])]
    action = str(form.get("action", ""))
    note = str(form.get("note", ""))[:MAX_NOTE]
    back = same_ui_path(str(form.get("back", "")))
    if not ids:
        session.flash.append(("error", "Select at least one message first."))
        raise redirect(back)
    services = services_of(request)
    if action == "release":
        outcomes = await qs.release_many(services, ids, actor=session.label, note=note, through=pipeline_of(request))
    elif action == "delete":
        outcomes = await qs.delete_many(services, ids, actor=session.label, note=note)
    else:
        raise web.HTTPBadRequest(text="unknown action")
    _flash_outcomes(session, outcomes)
    raise redirect(back)


def _flash_outcomes(session: Session, outcomes: list[qs.Outcome]) -> None:
    done = [o for o in outcomes if o.ok]
    for o in outcomes:
        if not o.ok:
            session.flash.append(("error", f"{o.id}: {o.detail}"))
    released = [o for o in done if o.status == "released"]
    deleted = [o for o in done if o.status == "deleted"]
    if released:
        delivered = sum(len(o.delivered) + len(o.queued) for o in released)
        refused = [f"{r} [{why}]" for o in released for r, why in o.refused]
        text = f"Released {len(released)} message{'s' if len(released) != 1 else ''}: delivered to {delivered} recipient{'s' if delivered != 1 else ''}"
        if refused:
            text += "; refused: " + ", ".join(refused)
        session.flash.append(("ok", text + "."))
    if deleted:
        session.flash.append(("ok", f"Deleted {len(deleted)} message{'s' if len(deleted) != 1 else ''}."))


# --- one message ----------------------------------------------------------------------------------


@signed_in
async def quarantine_message(request: web.Request, session: Session) -> web.StreamResponse:
    services = services_of(request)
    item = await _held(services, request.match_info["id"], session)
    message = parse_message(item.content)
    inert = make_inert("\n".join(message.html_parts)) if message.html_parts else None
    inert_note = ""
    if inert is not None:
        removed = []
        if inert.blocked:
            removed.append(f"{inert.blocked} remote reference{'s' if inert.blocked != 1 else ''}")
        if inert.scripts:
            removed.append(f"{inert.scripts} script{'s' if inert.scripts != 1 else ''}")
        inert_note = f"Not loaded: {' and '.join(removed)}." if removed else "Shown sandboxed: no scripts, no remote content."
    return page(
        request, session, "message.html", item.subject or item.id, now=services.clock.now(), size=_size,
        item=item, findings=[qs.finding_view(f) for f in item.findings],
        text=message.text.strip() or "(no visible text)", inert=inert, inert_note=inert_note,
        attachments=message.attachments,
        headers=item.content[: split_head(item.content)[0]].rstrip(b"\r\n").decode("utf-8", "replace"),
    )


async def _held(services: Services, item_id: str, session: Session) -> QuarantineItem:
    item = await services.store.quarantine.get(item_id, with_content=True)
    if item is None:
        session.flash.append(("error", f"{item_id} is not held any more (released, deleted or purged)."))
        raise redirect("/ui/quarantine")
    return item


@signed_in
async def quarantine_html(request: web.Request, session: Session) -> web.StreamResponse:
    services = services_of(request)
    item = await _held(services, request.match_info["id"], session)
    message = parse_message(item.content)
    inert = make_inert("\n".join(message.html_parts)) if message.html_parts else None
    response = web.Response(text=render("message_html.html", inert=inert), content_type="text/html", charset="utf-8")
    secure_headers(response, MESSAGE_CSP)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@signed_in
async def quarantine_raw(request: web.Request, session: Session) -> web.StreamResponse:
    item = await _held(services_of(request), request.match_info["id"], session)
    return web.Response(
        body=item.content,
        content_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{item.id}.eml"'},
    )


@signed_in
async def quarantine_act(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    item_id = request.match_info["id"]
    action = str(form.get("action", ""))
    note = str(form.get("note", ""))[:MAX_NOTE]
    services = services_of(request)
    if action == "release":
        outcome = await qs.release_one(services, item_id, actor=session.label, note=note, through=pipeline_of(request))
    elif action == "delete":
        outcome = await qs.delete_one(services, item_id, actor=session.label, note=note)
    else:
        raise web.HTTPBadRequest(text="unknown action")
    _flash_outcomes(session, [outcome])
    raise redirect("/ui/quarantine" if outcome.ok else f"/ui/quarantine/{item_id}")


# --- audit ------------------------------------------------------------------------------------------


@signed_in
async def audit_page(request: web.Request, session: Session) -> web.Response:
    services = services_of(request)
    target = request.query.get("target", "").strip()
    entries = await qs.audit_entries(services, limit=200, target=target or None)
    return page(
        request, session, "audit.html", "Audit log", now=services.clock.now(), target=target, entries=entries,
        details=_audit_details,
    )


def _audit_details(entry: AuditEntry) -> str:
    detail = entry.detail or {}
    bits = []
    if "delivered" in detail:
        bits.append(f"delivered to {len(detail['delivered'])}")  # type: ignore[arg-type]
    refused = detail.get("refused") or []
    if refused:
        bits.append("refused: " + ", ".join(f"{r[0]} [{r[1]}]" for r in refused))  # type: ignore[index, union-attr]
    for key, value in detail.items():
        if key not in ("delivered", "refused"):
            bits.append(f"{key}: {value}")
    return "; ".join(bits)


# --- accounts ---------------------------------------------------------------------------------------


@signed_in
async def accounts_page(request: web.Request, session: Session) -> web.Response:
    services = services_of(request)
    hook_states = await services.store.webhooks.states()
    rows = [
        {"account": account, "state": await services.store.accounts.get(account.id),
         "webhook_notes": disabled_notes(hook_states, account)}
        for account in services.config.accounts
    ]
    return page(request, session, "accounts.html", "Accounts", now=services.clock.now(), rows=rows)


@signed_in
async def account_change(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    account_id = request.match_info["id"]
    action = str(form.get("action", ""))
    reason = str(form.get("reason", "")).strip()[:500]
    if action not in ("pause", "suspend", "resume"):
        raise web.HTTPBadRequest(text="unknown action")
    if not reason:  # every state change is audited with its why, as on the CLI
        session.flash.append(("error", f"Give a reason to {action} {account_id}."))
        raise redirect("/ui/accounts")
    try:
        state = await change_account_state(services_of(request), account_id, action, reason=reason, actor=session.label)
    except UsageError as exc:
        session.flash.append(("error", str(exc)))
        raise redirect("/ui/accounts")
    session.flash.append(("ok", f"{account_id} is now {state.state}."))
    raise redirect("/ui/accounts")


# --- consent lookup ---------------------------------------------------------------------------------

_CONSENT_ROWS = (
    ("collected_at", "Collected at"),
    ("source", "How it was collected"),
    ("source_url", "URL where it was collected"),
    ("source_ip", "IP address of the owner"),
    ("basis", "Opt-in type"),
    ("confirmed_at", "Confirmed (double opt-in) at"),
    ("statement_text", "Consent statement shown"),
    ("prechecked", "Box pre-ticked"),
    ("frequency_disclosed", "Sending frequency disclosed"),
    ("co_registration_partners", "Co-registration partners"),
    ("customer_relationship", "Customer relationship"),
    ("last_purchase_at", "Last purchase"),
    ("last_interaction_at", "Last interaction"),
    ("revoked_at", "Revoked at"),
    ("revoked_via", "Revoked via"),
)


def _yes_no(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "—" if value in (None, "") else str(value)


@signed_in
async def consent_page(request: web.Request, session: Session) -> web.Response:
    services = services_of(request)
    email = request.query.get("email", "").strip()
    accounts = [a.id for a in services.config.accounts]
    account = request.query.get("account", "") or (accounts[0] if accounts else "")
    found: dict[str, Any] = {"unavailable": False, "error": "", "proof": None, "proof_text": ""}
    if email:
        try:
            from relay.consent.proof import build_proof, render_proof_text
        except ImportError:  # the proof module ships with the consent feature
            found["unavailable"] = True
        else:
            try:
                proof = await build_proof(services, email, account)
            except RelayError as exc:
                found["error"] = str(exc)
            else:
                found.update(proof=proof, proof_text=render_proof_text(proof))
    return page(
        request, session, "consent.html", "Consent lookup", email=email, account=account,
        account_choices=[(a, a) for a in accounts], consent_rows=_CONSENT_ROWS, yes_no=_yes_no, **found,
    )


# --- static and routes ------------------------------------------------------------------------------


def add_routes(app: web.Application) -> None:
    app[SESSIONS] = Sessions()
    static = resources.files("relay.web").joinpath("static")
    app.router.add_get("/ui", root)
    app.router.add_get("/ui/", root)
    app.router.add_get("/ui/login", login_page)
    app.router.add_post("/ui/login", login_submit)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/quarantine", quarantine_list)
    app.router.add_post("/ui/quarantine/bulk", quarantine_bulk)
    app.router.add_get("/ui/quarantine/{id}", quarantine_message)
    app.router.add_get("/ui/quarantine/{id}/html", quarantine_html)
    app.router.add_get("/ui/quarantine/{id}/raw", quarantine_raw)
    app.router.add_post("/ui/quarantine/{id}/act", quarantine_act)
    app.router.add_get("/ui/audit", audit_page)
    app.router.add_get("/ui/accounts", accounts_page)
    app.router.add_post("/ui/accounts/{id}", account_change)
    app.router.add_get("/ui/consent", consent_page)
    ui_complaints.add_routes(app)
    app.router.add_static("/ui/static", str(static), append_version=False)
