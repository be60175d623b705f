"""The admin UI's complaints page (/ui/complaints): the complaints newest first, open ones only if
asked, the form that acknowledges one with a note and the one that verifies a report from no
configured source (docs/SPEC.md §16) (CSRF-protected, audited as the admin)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from relay.complaints import ComplaintNotOpen, ComplaintService
from relay.errors import NotFound, UsageError
from relay.http_common import form_body, services_of
from relay.store.complaints_base import ACKNOWLEDGED, OPEN, Complaint
from relay.web.render import Safe, escape, join, render, tag
from relay.web.ui import MAX_NOTE, Session, _options, _page, _query, _redirect, _same_ui_path, _when, signed_in

LIST_LIMIT = 500
# Colours of the existing state badges: waiting (amber), answered (green), overdue (red).
_STATUS_CLASS = {OPEN: "paused", ACKNOWLEDGED: "active"}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/complaints", complaints_page)
    app.router.add_post("/ui/complaints/{id}/ack", complaint_ack)
    app.router.add_post("/ui/complaints/{id}/verify", complaint_verify)


@signed_in
async def complaints_page(request: web.Request, session: Session) -> web.Response:
    services = services_of(request)
    now = services.clock.now()
    open_only = request.query.get("open", "") == "1"
    known = [a.id for a in services.config.accounts]
    account = request.query.get("account", "")
    account = account if account in known else ""
    items = await services.store.complaints.list(open_only=open_only, account=account or None, limit=LIST_LIMIT)
    back = "/ui/complaints" + _query(account=account, open="1" if open_only else "")
    rows = join(_row(c, now, session, back) for c in items) or Safe(
        f'<tr><td colspan="8" class="empty">{"No open complaints." if open_only else "No complaints."}</td></tr>'
    )
    waiting = sum(1 for c in items if c.status == OPEN)
    summary = f"{len(items)}{'+' if len(items) >= LIST_LIMIT else ''} shown, {waiting} open."
    body = render(
        "complaints.html",
        summary=summary,
        account_options=_options([("", "All accounts")] + [(a, a) for a in known], account),
        open_checked=Safe(" checked") if open_only else Safe(""),
        rows=rows,
    )
    return _page(request, session, "Complaints", body)


def _row(c: Complaint, now: datetime, session: Session, back: str) -> Safe:
    overdue = c.status == OPEN and c.deadline is not None and c.deadline <= now
    status = tag("span", "overdue" if overdue else c.status, class_=f"state {'suspended' if overdue else _STATUS_CLASS.get(c.status, '')}".strip())
    if c.status == OPEN and c.deadline is not None:
        status = join([status, Safe("<br>"), tag("small", f"respond before {c.deadline:%Y-%m-%d %H:%M} UTC", class_="muted")])
    if not c.verified:
        # docs/SPEC.md §16: from no configured feedback loop: suppressed, but nothing counts until an admin vouches.
        status = join([status, Safe("<br>"), tag("span", "unverified", class_="state unverified")])
    if c.status == OPEN and not c.verified:
        answer = Safe(
            f'<form method="post" action="/ui/complaints/{c.id}/verify" class="verify">'
            f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
            f'<input type="hidden" name="back" value="{escape(back)}">'
            f'<input name="note" maxlength="{MAX_NOTE}" placeholder="why it is genuine" '
            f'aria-label="why complaint {c.id} is genuine">'
            '<button class="btn small" type="submit">Verify</button></form>'
        )
    elif c.status == OPEN:
        answer = Safe(
            f'<form method="post" action="/ui/complaints/{c.id}/ack" class="ack">'
            f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
            f'<input type="hidden" name="back" value="{escape(back)}">'
            f'<input name="note" maxlength="{MAX_NOTE}" required placeholder="what was found and done" '
            f'aria-label="note for complaint {c.id}">'
            '<button class="btn small primary" type="submit">Acknowledge</button></form>'
        )
    elif c.status == ACKNOWLEDGED:
        answer = join([tag("span", c.ack_note, class_="note"), Safe("<br>"),
                       tag("small", f"by {c.acknowledged_by}", class_="muted"), _when(c.acknowledged_at, now)])
    else:
        answer = tag("span", "nothing to answer", class_="muted")
    forwarded = f"told {c.forwarded_to}" if c.forwarded_to else (c.forward_error or "not forwarded")
    cells = [
        tag("td", str(c.id), class_="num"),
        tag("td", _when(c.received_at, now), class_="when"),
        tag("td", Safe(f"{escape(c.account)}<br><small class=\"muted\">{escape(c.stream or '—')}</small>")),
        tag("td", Safe(f"{tag('code', c.email)}<br><small class=\"muted\">{escape(forwarded)}</small>")),
        tag("td", c.feedback_type),
        tag("td", Safe(f"{escape(c.mapped_by or '—')}<br><small class=\"muted\">{escape(c.source)}</small>")),
        tag("td", status),
        tag("td", answer),
    ]
    return tag("tr", join(cells), data_complaint=str(c.id))


@signed_in
async def complaint_verify(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    back = _same_ui_path(str(form.get("back", "")), "/ui/complaints")
    text = request.match_info["id"]
    if not text.isdigit():
        raise web.HTTPNotFound(text=f"no complaint {text}")
    service = ComplaintService(services_of(request))
    try:
        complaint = await service.verify(int(text), note=str(form.get("note", "")).strip()[:MAX_NOTE], actor=session.label)
    except (NotFound, ComplaintNotOpen, UsageError) as exc:
        session.flash.append(("error", str(exc)))
        raise _redirect(back) from None
    finally:
        await service.close()
    session.flash.append(("ok", f"Complaint {complaint.id} ({complaint.account}) verified: it counts and its deadline runs."))
    raise _redirect(back)


@signed_in
async def complaint_ack(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    back = _same_ui_path(str(form.get("back", "")), "/ui/complaints")
    text = request.match_info["id"]
    note = str(form.get("note", "")).strip()[:MAX_NOTE]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise web.HTTPNotFound(text=f"no complaint {text}")
    if not note:
        session.flash.append(("error", f"Say what was found and done about complaint {text} before acknowledging it."))
        raise _redirect(back)
    service = ComplaintService(services_of(request))
    try:
        complaint = await service.acknowledge(int(text), note=note, actor=session.label)
    except (NotFound, ComplaintNotOpen, UsageError) as exc:
        session.flash.append(("error", str(exc)))
        raise _redirect(back) from None
    finally:
        await service.close()
    session.flash.append(("ok", f"Complaint {complaint.id} ({complaint.account}) acknowledged."))
    raise _redirect(back)
