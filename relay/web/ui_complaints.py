"""The admin UI's complaints page (/ui/complaints): the complaints newest first, open ones only if
asked, the form that acknowledges one with a note and the one that verifies a report from no
configured source (docs/SPEC.md §16) (CSRF-protected, audited as the admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from relay.errors import NotFound, UsageError
from relay.feedback.complaints import ComplaintNotOpen, ComplaintService
from relay.http.common import form_body, services_of
from relay.store.complaints_base import ACKNOWLEDGED, OPEN, Complaint
from relay.web.ui_base import MAX_NOTE, Session, page, query, redirect, same_ui_path, signed_in

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
    waiting = sum(1 for c in items if c.status == OPEN)
    return page(
        request, session, "complaints.html", "Complaints", now=now,
        summary=f"{len(items)}{'+' if len(items) >= LIST_LIMIT else ''} shown, {waiting} open.",
        account_choices=[("", "All accounts")] + [(a, a) for a in known], account=account, open_only=open_only,
        back="/ui/complaints" + query(account=account, open="1" if open_only else ""),
        rows=[_row(c, now) for c in items], max_note=MAX_NOTE, OPEN=OPEN, ACKNOWLEDGED=ACKNOWLEDGED,
    )


def _row(c: Complaint, now: datetime) -> dict[str, Any]:
    overdue = c.status == OPEN and c.deadline is not None and c.deadline <= now
    return {
        "complaint": c,
        "status": "overdue" if overdue else c.status,
        "status_class": "suspended" if overdue else _STATUS_CLASS.get(c.status, ""),
        "forwarded": f"told {c.forwarded_to}" if c.forwarded_to else (c.forward_error or "not forwarded"),
    }


@signed_in
async def complaint_verify(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    back = same_ui_path(str(form.get("back", "")), "/ui/complaints")
    text = request.match_info["id"]
    if not text.isdigit():
        raise web.HTTPNotFound(text=f"no complaint {text}")
    service = ComplaintService(services_of(request))
    try:
        complaint = await service.verify(int(text), note=str(form.get("note", "")).strip()[:MAX_NOTE], actor=session.label)
    except (NotFound, ComplaintNotOpen, UsageError) as exc:
        session.flash.append(("error", str(exc)))
        raise redirect(back) from None
    finally:
        await service.close()
    session.flash.append(("ok", f"Complaint {complaint.id} ({complaint.account}) verified: it counts and its deadline runs."))
    raise redirect(back)


@signed_in
async def complaint_ack(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_body(request)
    back = same_ui_path(str(form.get("back", "")), "/ui/complaints")
    text = request.match_info["id"]
    note = str(form.get("note", "")).strip()[:MAX_NOTE]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise web.HTTPNotFound(text=f"no complaint {text}")
    if not note:
        session.flash.append(("error", f"Say what was found and done about complaint {text} before acknowledging it."))
        raise redirect(back)
    service = ComplaintService(services_of(request))
    try:
        complaint = await service.acknowledge(int(text), note=note, actor=session.label)
    except (NotFound, ComplaintNotOpen, UsageError) as exc:
        session.flash.append(("error", str(exc)))
        raise redirect(back) from None
    finally:
        await service.close()
    session.flash.append(("ok", f"Complaint {complaint.id} ({complaint.account}) acknowledged."))
    raise redirect(back)
