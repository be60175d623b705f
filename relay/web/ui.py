"""The admin web UI at /ui/: sign in with an admin token, review the quarantine, read the audit log,
change account states, look up a proof of consent. Server-rendered HTML; works without JavaScript.

Sessions live in this process's memory (a random id in an HttpOnly, SameSite=Strict cookie scoped to
/ui); every POST form carries the session's CSRF token. Quarantined HTML is only ever shown from its own
endpoint inside <iframe sandbox>, under a CSP that allows no script and no remote content.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import wraps
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from policies.message import parse_message
from policies.mime import split_head
from relay import quarantine_service as qs
from relay.accounts import change_account_state
from relay.errors import NotFound, RelayError, UsageError
from relay.http_admin import CHECKER, GUARD
from relay.webhooks import disabled_notes
from relay.http_common import form_body, services_of
from relay.services import Services
from relay.store.records import AuditEntry, QuarantineItem
from relay.web.render import Safe, escape, join, render, tag
from relay.web.safe_html import make_inert
from relay.web.ui_signups import signup_chain_html

SESSION_COOKIE = "relay_session"
LOGIN_COOKIE = "relay_login"
SESSION_IDLE_SECONDS = 2 * 3600
SESSION_MAX_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
PAGE_SIZE = 50
MAX_NOTE = 2000

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- sessions -------------------------------------------------------------------------------------


@dataclass
class Session:
    id: str
    label: str
    csrf: str
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)


class Sessions:
    """Server-side sessions of this process: the cookie carries only a random id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_id: dict[str, Session] = {}
        self._clock = clock

    def create(self, label: str) -> Session:
        now = self._clock()
        if len(self._by_id) >= MAX_SESSIONS:
            oldest = min(self._by_id.values(), key=lambda s: s.seen)
            self._by_id.pop(oldest.id, None)
        session = Session(secrets.token_urlsafe(32), label, secrets.token_urlsafe(32), now, now)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > SESSION_IDLE_SECONDS or now - session.created > SESSION_MAX_SECONDS:
            self._by_id.pop(session_id, None)
            return None
        session.seen = now
        return session

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)


SESSIONS: web.AppKey[Sessions] = web.AppKey("ui_sessions", Sessions)


def _session(request: web.Request) -> Session | None:
    return request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE))


def _secure_headers(response: web.StreamResponse, csp: str = PAGE_CSP) -> None:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    if "frame-ancestors 'none'" in csp:
        response.headers["X-Frame-Options"] = "DENY"


def _same_ui_path(target: str | None, default: str = "/ui/quarantine") -> str:
    """Redirects only to our own pages: a path under /ui/, never //host or a scheme."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def signed_in(handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]) -> Handler:
    """Pages need a session; POSTs also need the session's CSRF token."""

    @wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        session = _session(request)
        if session is None:
            if request.method != "GET":
                raise web.HTTPForbidden(text="Your session has ended; sign in again.")
            query = urlencode({"next": request.path_qs})
            raise web.HTTPSeeOther(f"/ui/login?{query}")
        if request.method == "POST":
            form = await form_body(request)
            sent = str(form.get("csrf", ""))
            if not sent or not hmac.compare_digest(sent, session.csrf):
                raise web.HTTPForbidden(text="The form's security token is missing or stale; reload the page and try again.")
        try:
            response = await handler(request, session)
        except (UsageError, NotFound) as exc:
            session.flash.append(("error", str(exc)))
            raise web.HTTPSeeOther("/ui/quarantine") from None
        if "Content-Security-Policy" not in response.headers:
            _secure_headers(response)
        return response

    return run


def _page(request: web.Request, session: Session | None, title: str, body: Safe, *, status: int = 200) -> web.Response:
    path = request.path
    links = [("/ui/quarantine", "Quarantine"), ("/ui/complaints", "Complaints"), ("/ui/audit", "Audit log"), ("/ui/accounts", "Accounts"), ("/ui/consent", "Consent lookup")]
    nav = join(
        tag("a", label, href=href, class_="active" if path.startswith(href) else None) for href, label in links
    ) if session else Safe("")
    who = Safe("")
    flash = Safe("")
    if session is not None:
        who = Safe(
            f"<span>Signed in as <b>{escape(session.label)}</b></span>"
            f'<form method="post" action="/ui/logout"><input type="hidden" name="csrf" value="{escape(session.csrf)}">'
            '<button type="submit">Sign out</button></form>'
        )
        flash = join(tag("div", text, class_=f"flash {kind}", role="status") for kind, text in session.flash)
        session.flash.clear()
    html = render("layout.html", title=title, nav=nav, who=who, flash=flash, body=body)
    response = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    _secure_headers(response)
    return response


def _redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


# --- formatting -----------------------------------------------------------------------------------


def _when(moment: datetime | None, now: datetime) -> Safe:
    if moment is None:
        return Safe("")
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        ago = "just now"
    elif seconds < 3600:
        ago = f"{seconds // 60} min ago"
    elif seconds < 86400:
        ago = f"{seconds // 3600} h ago"
    else:
        ago = f"{seconds // 86400} d ago"
    stamp = moment.strftime("%Y-%m-%d %H:%M UTC")
    return Safe(f'{escape(ago)}<small>{escape(stamp)}</small>')


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


def _badge(rule: str) -> Safe:
    return tag("span", rule, class_=f"badge {rule.partition('.')[0]}")


def _options(choices: list[tuple[str, str]], selected: str) -> Safe:
    return join(tag("option", label, value=value, selected=value == selected) for value, label in choices)


def _query(**params: str) -> str:
    clean = {k: v for k, v in params.items() if v}
    return "?" + urlencode(clean) if clean else ""


# --- sign in / out ----------------------------------------------------------------------------------


async def login_form(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    body = render(
        "login.html",
        csrf=nonce,
        next=_same_ui_path(request.query.get("next")),
        error=tag("div", error, class_="flash error", role="alert") if error else Safe(""),
    )
    response = _page(request, None, "Sign in", body, status=status)
    # Login CSRF: the form's token must match this cookie (double submit), as no session exists yet.
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/ui", secure=request.secure)
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if _session(request) is not None:
        raise _redirect(_same_ui_path(request.query.get("next")))
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
    response = web.HTTPSeeOther(_same_ui_path(str(form.get("next", ""))))
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
    raise _redirect("/ui/quarantine")


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

    accounts = [("", "All accounts")] + [(a.id, a.id) for a in services.config.accounts]
    rules = sorted(set(counts.by_rule) | ({rule} if rule else set()))
    held = f"{counts.total}{'' if counts.complete else '+'} held" + ("" if not age else f" ({AGES[age][0].lower()})")

    def chip(key: str, value: str, n: int, on: bool) -> Safe:
        params = {"account": account, "rule": rule, "age": age, key: "" if on else value}
        link = tag("a", Safe(f"{escape(value)} <b>{n}</b>"), href="/ui/quarantine" + _query(**params), class_="on" if on else None)
        return tag("li", link)

    rule_counts = join(chip("rule", r, n, r == rule) for r, n in sorted(counts.by_rule.items(), key=lambda x: -x[1]))
    account_counts = join(chip("account", a, n, a == account) for a, n in sorted(counts.by_account.items(), key=lambda x: -x[1]))
    rows = join(_list_row(item, now) for item in items) or Safe(
        '<tr><td colspan="8" class="empty">Nothing is held here. Mail the policy quarantines will show up in this list.</td></tr>'
    )
    pager_links = []
    if cursor:
        pager_links.append(tag("a", "← First page", href="/ui/quarantine" + _query(account=account, rule=rule, age=age), class_="btn small"))
    if next_cursor:
        pager_links.append(
            tag("a", "Next page →", href="/ui/quarantine" + _query(account=account, rule=rule, age=age, cursor=next_cursor), class_="btn small")
        )
    pager = tag("div", join(pager_links), class_="pager") if pager_links else Safe("")
    body = render(
        "quarantine_list.html",
        summary=held,
        account_options=_options(accounts, account),
        rule_options=_options([("", "All rules")] + [(r, r) for r in rules], rule),
        age_options=_options([(k, v[0]) for k, v in AGES.items()], age),
        rule_counts=rule_counts or Safe('<li class="muted">none</li>'),
        account_counts=account_counts or Safe('<li class="muted">none</li>'),
        csrf=session.csrf,
        back=request.path_qs,
        rows=rows,
        pager=pager,
    )
    return _page(request, session, "Quarantine", body)


def _list_row(item: QuarantineItem, now: datetime) -> Safe:
    box = Safe(f'<input type="checkbox" name="ids" value="{escape(item.id)}" aria-label="select {escape(item.id)}">')
    rcpts = len(item.rcpt_tos)
    cells = [
        tag("td", box, class_="check"),
        tag("td", _when(item.received_at, now), class_="when"),
        tag("td", Safe(f"{escape(item.account)}<br><small class=\"muted\">{escape(item.stream)}</small>")),
        tag("td", item.mail_from),
        tag("td", tag("a", item.subject or "(no subject)", href=f"/ui/quarantine/{item.id}"), class_="subject"),
        tag("td", join(_badge(r) for r in item.rules)),
        tag("td", str(rcpts), class_="num"),
        tag("td", _size(item.size), class_="num"),
    ]
    return tag("tr", join(cells), data_id=item.id)


@signed_in
async def quarantine_bulk(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    ids = [str(v) for v in form.getall("ids", [])]
    action = str(form.get("action", ""))
    note = str(form.get("note", ""))[:MAX_NOTE]
    back = _same_ui_path(str(form.get("back", "")))
    if not ids:
        session.flash.append(("error", "Select at least one message first."))
        raise _redirect(back)
    services = services_of(request)
    if action == "release":
        outcomes = await qs.release_many(services, ids, actor=session.label, note=note)
    elif action == "delete":
        outcomes = await qs.delete_many(services, ids, actor=session.label, note=note)
    else:
        raise web.HTTPBadRequest(text="unknown action")
    _flash_outcomes(session, outcomes)
    raise _redirect(back)


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
    now = services.clock.now()
    findings = join(_finding(f) for f in item.findings) or Safe('<li class="muted">No findings recorded.</li>')
    html_section = Safe("")
    if message.html_parts:
        inert = make_inert("\n".join(message.html_parts))
        removed = []
        if inert.blocked:
            removed.append(f"{inert.blocked} remote reference{'s' if inert.blocked != 1 else ''}")
        if inert.scripts:
            removed.append(f"{inert.scripts} script{'s' if inert.scripts != 1 else ''}")
        note = f"Not loaded: {' and '.join(removed)}." if removed else "Shown sandboxed: no scripts, no remote content."
        html_section = Safe(
            f'<section class="card"><h2>HTML, as sent</h2><p class="muted small">{escape(note)} Links are shown but cannot be followed.</p>'
            f'<iframe class="html" sandbox="" referrerpolicy="no-referrer" title="HTML body of {escape(item.id)}" '
            f'src="/ui/quarantine/{escape(item.id)}/html"></iframe></section>'
        )
    if message.attachments:
        head = "<tr><th>Name</th><th>Type</th><th class=\"num\">Size</th><th>Content</th></tr>"
        rows = join(
            tag(
                "tr",
                join([
                    tag("td", a.filename or "(unnamed)"),
                    tag("td", tag("code", a.content_type)),
                    tag("td", _size(a.size), class_="num"),
                    tag("td", (("⚠ " if a.dangerous else "") + a.kind) + (f" in {a.found_in}" if a.found_in else "")),
                ]),
            )
            for a in message.attachments
        )
        attachments = Safe(f'<table class="list"><thead>{head}</thead><tbody>{rows}</tbody></table>')
    else:
        attachments = Safe('<p class="muted">No attachments.</p>')
    head_bytes = item.content[: split_head(item.content)[0]].rstrip(b"\r\n")
    body = render(
        "message.html",
        id=item.id,
        subject=item.subject or "(no subject)",
        rule_badges=join(_badge(r) for r in item.rules),
        received=Safe(f"{escape(item.received_at.strftime('%Y-%m-%d %H:%M:%S UTC'))} <span class=\"muted\">({_when(item.received_at, now).partition('<small>')[0]})</span>"),
        account=item.account,
        stream=item.stream,
        mail_from=item.mail_from,
        recipients=join((tag("code", r) for r in item.rcpt_tos), ", "),
        size=_size(item.size),
        csrf=session.csrf,
        findings=findings,
        text=message.text.strip() or "(no visible text)",
        html_section=html_section,
        attachments=attachments,
        headers=head_bytes.decode("utf-8", "replace"),
    )
    return _page(request, session, item.subject or item.id, body)


def _finding(finding: dict[str, Any]) -> Safe:
    view = qs.finding_view(finding)
    head = [_badge(view["rule"]), tag("span", view["action"], class_="action")]
    if view["recipient"]:
        head.append(tag("span", Safe(f"recipient {tag('code', view['recipient'])}"), class_="muted small"))
    parts = [tag("div", join(head), class_="head"), tag("p", view["detail"])]
    if view["evidence"]:
        parts.append(tag("span", view["evidence"], class_="evidence", title="evidence"))
    return tag("li", join(parts), class_=view["action"] or None)


async def _held(services: Services, item_id: str, session: Session) -> QuarantineItem:
    item = await services.store.quarantine.get(item_id, with_content=True)
    if item is None:
        session.flash.append(("error", f"{item_id} is not held any more (released, deleted or purged)."))
        raise _redirect("/ui/quarantine")
    return item


@signed_in
async def quarantine_html(request: web.Request, session: Session) -> web.StreamResponse:
    services = services_of(request)
    item = await _held(services, request.match_info["id"], session)
    message = parse_message(item.content)
    inert = make_inert("\n".join(message.html_parts) or "<p>(no HTML part)</p>")
    document = '<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">' + inert.html
    response = web.Response(text=document, content_type="text/html", charset="utf-8")
    _secure_headers(response, MESSAGE_CSP)
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
        outcome = await qs.release_one(services, item_id, actor=session.label, note=note)
    elif action == "delete":
        outcome = await qs.delete_one(services, item_id, actor=session.label, note=note)
    else:
        raise web.HTTPBadRequest(text="unknown action")
    _flash_outcomes(session, [outcome])
    raise _redirect("/ui/quarantine" if outcome.ok else f"/ui/quarantine/{item_id}")


# --- audit ------------------------------------------------------------------------------------------


@signed_in
async def audit_page(request: web.Request, session: Session) -> web.Response:
    services = services_of(request)
    target = request.query.get("target", "").strip()
    entries = await qs.audit_entries(services, limit=200, target=target or None)
    now = services.clock.now()
    rows = join(_audit_row(e, now) for e in entries) or Safe('<tr><td colspan="6" class="empty">No entries.</td></tr>')
    return _page(request, session, "Audit log", render("audit.html", target=target, rows=rows))


def _audit_row(entry: AuditEntry, now: datetime) -> Safe:
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
    target = tag("a", entry.target, href="/ui/audit" + _query(target=entry.target))
    return tag(
        "tr",
        join([
            tag("td", _when(entry.at, now), class_="when"),
            tag("td", tag("b", entry.actor)),
            tag("td", tag("code", entry.action)),
            tag("td", target),
            tag("td", entry.note, class_="note"),
            tag("td", "; ".join(bits), class_="detail"),
        ]),
    )


# --- accounts ---------------------------------------------------------------------------------------


@signed_in
async def accounts_page(request: web.Request, session: Session) -> web.Response:
    services = services_of(request)
    now = services.clock.now()
    rows = []
    hook_states = await services.store.webhooks.states()
    for account in services.config.accounts:
        state = await services.store.accounts.get(account.id)
        paused = f" (paused streams: {', '.join(sorted(state.paused_streams))})" if state.paused_streams else ""
        notes = disabled_notes(hook_states, account)
        form = Safe(
            f'<form method="post" action="/ui/accounts/{escape(account.id)}">'
            f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
            f'<input name="reason" placeholder="reason" maxlength="500" aria-label="reason for {escape(account.id)}">'
            '<button class="btn small" name="action" value="pause">Pause</button>'
            '<button class="btn small danger" name="action" value="suspend">Suspend</button>'
            '<button class="btn small primary" name="action" value="resume">Resume</button>'
            "</form>"
        )
        rows.append(
            tag(
                "tr",
                join([
                    tag("td", Safe(f"<b>{escape(account.id)}</b><br><small class=\"muted\">{escape(account.name)}</small>")),
                    tag("td", Safe(f"{tag('span', state.state, class_=f'state {state.state}')}{escape(paused)}"
                                   + "".join(f"<br>{tag('small', n, class_='webhook disabled')}" for n in notes))),
                    tag("td", state.reason),
                    tag("td", _when(state.updated_at, now) if state.updated_at else "—", class_="when"),
                    tag("td", form),
                ]),
                data_account=account.id,
            )
        )
    body = render("accounts.html", rows=join(rows) or Safe('<tr><td colspan="5" class="empty">No accounts configured.</td></tr>'))
    return _page(request, session, "Accounts", body)


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
        raise _redirect("/ui/accounts")
    try:
        state = await change_account_state(services_of(request), account_id, action, reason=reason, actor=session.label)
    except UsageError as exc:
        session.flash.append(("error", str(exc)))
        raise _redirect("/ui/accounts")
    session.flash.append(("ok", f"{account_id} is now {state.state}."))
    raise _redirect("/ui/accounts")


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
    result = Safe("")
    if email:
        try:
            from relay.proof import build_proof, render_proof_text
        except ImportError:  # the proof module ships with the consent feature
            result = Safe('<section class="card"><p class="muted">Proof lookup is not available in this build.</p></section>')
        else:
            try:
                proof = await build_proof(services, email, account)
            except RelayError as exc:
                result = tag("div", str(exc), class_="flash error", role="alert")
            else:
                result = _proof_html(proof, render_proof_text(proof))
    body = render(
        "consent.html",
        email=email,
        account_options=_options([(a, a) for a in accounts], account),
        result=result,
    )
    return _page(request, session, "Consent lookup", body)


def _proof_html(proof: dict[str, Any], text: str) -> Safe:
    cards = []
    if not proof["consents"]:
        cards.append(tag("p", "No consent is recorded for this address at this account or its parent organisation.", class_="muted"))
    for c in proof["consents"]:
        status = tag("span", "revoked" if c.get("revoked_at") else "active", class_=f"state {'suspended' if c.get('revoked_at') else 'active'}")
        topic = "every marketing topic" if c.get("topic") == "*" else f"topic {c.get('topic')}"
        head = tag("div", join([tag("b", f"Consent #{c.get('id')}"), status, tag("span", f"scope {c.get('scope')}, {topic}", class_="muted")]), class_="consent-head")
        rows = join(
            tag("tr", join([tag("th", label), tag("td", _yes_no(c.get(key)))])) for key, label in _CONSENT_ROWS if key in c
        )
        cards.append(Safe(f'<div class="card">{head}<table class="kv">{rows}</table></div>'))
    sup_rows = join(
        tag("tr", join([tag("td", s.get("reason")), tag("td", s.get("scope")), tag("td", s.get("topic")), tag("td", s.get("via") or "—"), tag("td", s.get("created_at") or "—")]))
        for s in proof["suppressions"]
    ) or Safe('<tr><td colspan="5" class="empty">None.</td></tr>')
    del_rows = join(
        tag("tr", join([tag("td", d.get("delivered_at")), tag("td", d.get("stream")), tag("td", tag("code", d.get("message_id") or "—")), tag("td", tag("code", d.get("relay_id"))), tag("td", d.get("consent_id") or "none")]))
        for d in proof["deliveries"]
    ) or Safe('<tr><td colspan="5" class="empty">None.</td></tr>')
    return Safe(
        f'<section class="card"><h2>Consents of {escape(proof["email"])} at {escape(proof["account"])}</h2>{join(cards)}</section>'
        '<section class="card flush"><table class="list"><thead><tr><th>Suppression</th><th>Scope</th><th>Topic</th><th>Via</th><th>Since</th></tr></thead>'
        f"<tbody>{sup_rows}</tbody></table></section>"
        '<section class="card flush"><table class="list"><thead><tr><th>Delivered at</th><th>Stream</th><th>Message-ID</th><th>Relay id</th><th>Under consent</th></tr></thead>'
        f"<tbody>{del_rows}</tbody></table></section>"
        f"{signup_chain_html(proof.get('signups', []))}"
        f'<section class="card"><details><summary><h2>As text, for a complaints desk</h2></summary><pre class="proof">{escape(text)}</pre></details></section>'
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
    from relay.web import ui_complaints  # its own module; it imports this one's helpers

    ui_complaints.add_routes(app)
    app.router.add_static("/ui/static", str(static), append_version=False)
