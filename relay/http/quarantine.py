"""Admin API for the quarantine and the audit log (docs/SPEC.md §8, §10, §12).

Authentication is the admin app's middleware (request[ADMIN] names the token); handlers validate and act.
"""

from __future__ import annotations

from datetime import datetime
from functools import wraps
from typing import Any, Awaitable, Callable

from aiohttp import web

from relay.errors import NotFound, StoreUnavailable, UsageError
from relay.http.api_keys import check_owner, scoped_account
from relay.http.common import admin_label, json_body, json_error, json_response, pipeline_of, services_of
from relay.quarantine import service as qs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BULK = 1000
MAX_NOTE = 2000
_STATUS = {"not_found": 404, "conflict": 409, "upstream_unavailable": 503, "invalid": 422}


def _guarded(handler: Handler) -> Handler:
    @wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound as exc:
            json_error(404, "not_found", str(exc) or "not found")
        except StoreUnavailable as exc:
            json_error(503, "store_unavailable", str(exc))
        except UsageError as exc:
            json_error(422, "invalid", str(exc))

    return run


def _moment(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        return qs.parse_moment(value, services_of(request).clock.now())
    except UsageError as exc:
        json_error(422, "invalid", f"{name}: {exc}")


def _int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        json_error(422, "invalid", f"{name} must be an integer")


def _note(body: dict[str, Any]) -> str:
    note = body.get("note", "")
    if note is None:
        return ""
    if not isinstance(note, str):
        json_error(422, "invalid", "note must be a string")
    if len(note) > MAX_NOTE:
        json_error(422, "invalid", f"note is longer than {MAX_NOTE} characters")
    return note


async def _optional_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    return await json_body(request)


def _single(outcome: qs.Outcome) -> web.Response:
    if not outcome.ok:
        json_error(_STATUS.get(outcome.error, 409), outcome.error, outcome.detail)
    return json_response(outcome.as_dict())


@_guarded
async def list_quarantine(request: web.Request) -> web.Response:
    services = services_of(request)
    items, next_cursor = await qs.list_items(
        services,
        account=scoped_account(request, request.query.get("account")),
        rule=request.query.get("rule"),
        since=_moment(request, "since"),
        before=_moment(request, "before"),
        cursor=request.query.get("cursor"),
        limit=_int(request, "limit", 50),
    )
    return json_response({"items": [qs.item_summary(i) for i in items], "next": next_cursor})


async def _own_item(request: web.Request, *, with_content: bool = False) -> qs.QuarantineItem:
    item = await qs.get_item(services_of(request), request.match_info["id"], with_content=with_content)
    check_owner(request, item.account, NotFound(f"no held quarantine item {item.id!r}"))
    return item


@_guarded
async def get_quarantine(request: web.Request) -> web.Response:
    item = await _own_item(request)
    return json_response(qs.item_detail(item))


@_guarded
async def get_raw(request: web.Request) -> web.Response:
    item = await _own_item(request, with_content=True)
    return web.Response(
        body=item.content,
        content_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{item.id}.eml"', "X-Content-Type-Options": "nosniff"},
    )


@_guarded
async def release(request: web.Request) -> web.Response:
    body = await _optional_body(request)
    outcome = await qs.release_one(
        services_of(request), request.match_info["id"], actor=admin_label(request), note=_note(body),
        through=pipeline_of(request),
    )
    return _single(outcome)


@_guarded
async def delete(request: web.Request) -> web.Response:
    body = await _optional_body(request)
    note = _note(body) or request.query.get("note", "")
    outcome = await qs.delete_one(services_of(request), request.match_info["id"], actor=admin_label(request), note=note)
    return _single(outcome)


async def _bulk_ids(request: web.Request) -> tuple[list[str], str]:
    body = await json_body(request)
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        json_error(422, "invalid", "ids must be a non-empty list of quarantine ids")
    if len(ids) > MAX_BULK:
        json_error(422, "invalid", f"at most {MAX_BULK} ids at once")
    return ids, _note(body)


def _bulk_response(outcomes: list[qs.Outcome]) -> web.Response:
    ok = sum(1 for o in outcomes if o.ok)
    return json_response({"results": [o.as_dict() for o in outcomes], "ok": ok, "failed": len(outcomes) - ok})


@_guarded
async def bulk_release(request: web.Request) -> web.Response:
    ids, note = await _bulk_ids(request)
    outcomes = await qs.release_many(
        services_of(request), ids, actor=admin_label(request), note=note, through=pipeline_of(request)
    )
    return _bulk_response(outcomes)


@_guarded
async def bulk_delete(request: web.Request) -> web.Response:
    ids, note = await _bulk_ids(request)
    return _bulk_response(await qs.delete_many(services_of(request), ids, actor=admin_label(request), note=note))


@_guarded
async def list_audit(request: web.Request) -> web.Response:
    entries = await qs.audit_entries(
        services_of(request), limit=_int(request, "limit", 100), target=request.query.get("target")
    )
    return json_response({"items": [qs.audit_view(e) for e in entries]})


def add_routes(app: web.Application) -> None:
    # The bulk paths first: "release"/"delete" must not be read as an id.
    app.router.add_post("/api/quarantine/release", bulk_release)
    app.router.add_post("/api/quarantine/delete", bulk_delete)
    app.router.add_get("/api/quarantine", list_quarantine)
    app.router.add_get("/api/quarantine/{id}", get_quarantine)
    app.router.add_get("/api/quarantine/{id}/raw", get_raw)
    app.router.add_post("/api/quarantine/{id}/release", release)
    app.router.add_delete("/api/quarantine/{id}", delete)
    app.router.add_get("/api/audit", list_audit)
