"""Admin API for complaints (docs/SPEC.md §9, §12, §16): POST a report (raw ARF or JSON), list, show, acknowledge, verify,
and the refused reports kept for inspection. Authentication is the admin app's middleware."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from relay.errors import NotFound, UsageError
from relay.feedback.complaints import ComplaintNotOpen, ComplaintRefused, ComplaintService, complaint_as_dict
from relay.http.api_keys import key_account, scoped_account
from relay.http.common import admin_label, json_body, json_error, json_response, services_of
from relay.store.complaints_base import Complaint

RAW_TYPES = ("message/rfc822", "multipart/report")
MAX_LIST = 10_000


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/complaints", post_complaint)
    app.router.add_get("/api/complaints", list_complaints)
    app.router.add_get("/api/complaints/rejected", list_rejected)
    app.router.add_get("/api/complaints/{id}", get_complaint)
    app.router.add_post("/api/complaints/{id}/ack", ack_complaint)
    app.router.add_post("/api/complaints/{id}/verify", verify_complaint)


def _service(request: web.Request) -> ComplaintService:
    return ComplaintService(services_of(request))


def _complaint_id(request: web.Request) -> int:
    text = request.match_info["id"]
    # ASCII digits only ("1²" is a str.isdigit() digit that int() refuses), and within a BIGINT
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        json_error(404, "not_found", f"no complaint {text}")
    return int(text)


async def _own_complaint(request: web.Request, complaint_id: int) -> Complaint:
    """The complaint, 404 when missing or (for an account key) another account's."""
    complaint = await services_of(request).store.complaints.get(complaint_id)
    own = key_account(request)
    if complaint is None or (own is not None and complaint.account != own):
        json_error(404, "not_found", f"no complaint {complaint_id}")
    return complaint


def _refused(exc: ComplaintRefused) -> web.HTTPException:
    body = json.dumps({"error": "malformed_report", "detail": exc.reason, "reject_id": exc.reject_id})
    return web.HTTPUnprocessableEntity(text=body, content_type="application/json")


async def post_complaint(request: web.Request) -> web.Response:
    service = _service(request)
    media = request.content_type.lower()
    actor = f"api:{admin_label(request)}"
    try:
        if media == "application/json":
            result = await service.ingest_json(await json_body(request), source="api", actor=actor)
        elif media in RAW_TYPES:
            raw = await request.read()
            if media == "multipart/report":
                # The body may be only the multipart body: its boundary and report-type are in our header.
                header = request.headers.get("Content-Type", "").encode("utf-8", "replace")
                raw = b"MIME-Version: 1.0\r\nContent-Type: " + header + b"\r\n\r\n" + raw
            result = await service.ingest_raw(raw, source="api", account=request.query.get("account"), actor=actor)
        else:
            json_error(
                415, "unsupported_media_type",
                "send a raw ARF report as message/rfc822 or multipart/report, or a JSON object as application/json",
            )
    except ComplaintRefused as exc:
        raise _refused(exc) from None
    complaint = result.complaint
    body: dict[str, Any] = {
        "id": complaint.id,
        "account": complaint.account,
        "email": complaint.email,
        "status": complaint.status,
    }
    if not result.created:
        body["duplicate"] = True
    if result.account_paused:
        body["account_paused"] = True
    if result.more:
        # A report naming several recipients is one complaint each (docs/SPEC.md §16).
        body["more"] = [{"id": c.id, "email": c.email, "status": c.status} for c in result.more]
    return json_response(body, status=201 if result.created else 200)


async def list_complaints(request: web.Request) -> web.Response:
    open_only = request.query.get("open", "").lower() in ("1", "true", "yes")
    try:
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        json_error(422, "invalid", "limit: expected an integer")
    if limit < 1:  # a negative LIMIT means "all" to SQLite and is an error to PostgreSQL
        json_error(422, "invalid", "limit: expected a positive integer")
    limit = min(limit, MAX_LIST)
    items = await services_of(request).store.complaints.list(
        open_only=open_only, account=scoped_account(request, request.query.get("account") or None), limit=limit
    )
    return json_response({"items": [complaint_as_dict(c) for c in items]})


async def get_complaint(request: web.Request) -> web.Response:
    complaint = await _own_complaint(request, _complaint_id(request))
    return json_response(complaint_as_dict(complaint))


async def ack_complaint(request: web.Request) -> web.Response:
    complaint_id = _complaint_id(request)
    await _own_complaint(request, complaint_id)
    body = await json_body(request) if request.can_read_body else {}
    note = body.get("note")
    if not isinstance(note, str) or not note.strip():
        json_error(422, "invalid", "note: say what was found and done about the complaint")
    try:
        complaint = await _service(request).acknowledge(complaint_id, note=note, actor=admin_label(request))
    except NotFound as exc:
        json_error(404, "not_found", str(exc))
    except ComplaintNotOpen as exc:
        json_error(409, "not_open", str(exc))
    except UsageError as exc:
        json_error(422, "invalid", str(exc))
    return json_response(complaint_as_dict(complaint))


async def verify_complaint(request: web.Request) -> web.Response:
    """docs/SPEC.md §16: an admin vouches for a report from no configured source (audited)."""
    complaint_id = _complaint_id(request)
    body = await json_body(request) if request.can_read_body else {}
    note = body.get("note", "")
    if not isinstance(note, str):
        json_error(422, "invalid", "note: expected a string")
    service = _service(request)
    try:
        complaint = await service.verify(complaint_id, note=note, actor=admin_label(request))
    except NotFound as exc:
        json_error(404, "not_found", str(exc))
    except ComplaintNotOpen as exc:
        json_error(409, "verified_already", str(exc))
    finally:
        await service.close()
    return json_response(complaint_as_dict(complaint))


async def list_rejected(request: web.Request) -> web.Response:
    rejects = await services_of(request).store.complaints.list_rejected(limit=1000)
    return json_response(
        {
            "items": [
                {"id": r.id, "source": r.source, "reason": r.reason, "received_at": r.received_at.isoformat(), "size": r.size}
                for r in rejects
            ]
        }
    )
