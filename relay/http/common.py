"""Shared HTTP pieces: the app key for Services, JSON errors ({"error", "detail"}), and the one place
where request bodies are parsed (forms and JSON): a body the client got wrong is a 400, never a 500."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp import web
from multidict import MultiDictProxy

from relay.engine.pipeline import Pipeline
from relay.services import Services

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
ADMIN: web.RequestKey[str] = web.RequestKey("admin", str)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


# The running relay's pipeline, which a quarantine release delivers through (relay.quarantine.release).
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline", Pipeline)


def pipeline_of(request: web.Request) -> Pipeline | None:
    """None for an admin app that is not part of a relay process (tests of the API alone)."""
    return request.app.get(PIPELINE)


def admin_label(request: web.Request) -> str:
    """The label of the admin token that authenticated this request (for the audit log)."""
    return str(request.get(ADMIN, "admin"))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False, default=str), status=status, content_type="application/json"
    )


def json_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> NoReturn:
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
        web.HTTPTooManyRequests,
        web.HTTPServiceUnavailable,
    ):
        if candidate.status_code == status:
            cls = candidate
            break
    body = json.dumps({"error": code, "detail": detail})
    if cls is web.HTTPException:
        raise web.HTTPInternalServerError(text=body, content_type="application/json", headers=headers)
    raise cls(text=body, content_type="application/json", headers=headers)


async def form_body(request: web.Request) -> MultiDictProxy[Any]:
    """The form fields of a urlencoded or multipart body (empty for other types).

    aiohttp parses the client's bytes here and reports what it cannot parse with whatever it has
    at hand (ValueError, UnicodeDecodeError, LookupError for an unknown charset, RuntimeError for
    an unknown transfer encoding, AssertionError, zlib.error…): all of them are the client's
    mistake, so all of them become one 400. HTTP errors it raises itself (413) pass as they are.
    """
    try:
        return await request.post()
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring: only parsing runs inside
        json_error(400, "invalid_body", f"the form body cannot be parsed: {_reason(exc)}")


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - bad JSON, bad UTF-8, unknown charset: the client's
        json_error(400, "invalid_json", f"the request body is not valid JSON: {_reason(exc)}")
    if not isinstance(data, dict):
        json_error(422, "invalid_body", "expected a JSON object")
    return data


def _reason(exc: Exception) -> str:
    # The library's message, cut short: enough to fix the request, never a traceback.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
