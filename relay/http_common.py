"""Shared HTTP pieces: the app key for Services, JSON errors ({"error", "detail"}), JSON bodies."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp import web

from relay.services import Services

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
ADMIN: web.RequestKey[str] = web.RequestKey("admin", str)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def admin_label(request: web.Request) -> str:
    """The label of the admin token that authenticated this request (for the audit log)."""
    return str(request.get(ADMIN, "admin"))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False, default=str), status=status, content_type="application/json"
    )


def json_error(status: int, code: str, detail: str) -> NoReturn:
    """Abort the request with {"error": code, "detail": detail}."""
    cls = web.HTTPException
    for candidate in (
        web.HTTPBadRequest,
        web.HTTPUnauthorized,
        web.HTTPForbidden,
        web.HTTPNotFound,
        web.HTTPMethodNotAllowed,
        web.HTTPConflict,
        web.HTTPRequestEntityTooLarge,
        web.HTTPUnsupportedMediaType,
        web.HTTPUnprocessableEntity,
        web.HTTPServiceUnavailable,
    ):
        if candidate.status_code == status:
            cls = candidate
            break
    body = json.dumps({"error": code, "detail": detail})
    if cls is web.HTTPException:
        raise web.HTTPInternalServerError(text=body, content_type="application/json")
    raise cls(text=body, content_type="application/json")


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        json_error(400, "invalid_json", "the request body is not valid JSON")
    if not isinstance(data, dict):
        json_error(422, "invalid_body", "expected a JSON object")
    return data
