"""Admin API for consent, interactions, proofs and suppressions (docs/SPEC.md §5, §10, §12).

Authentication is the admin app's middleware; these handlers only validate and act.
"""

from __future__ import annotations

import json
from functools import wraps
from typing import Any, Awaitable, Callable, NoReturn

from aiohttp import web

from policies.consent_rows import CONSENT_FIELDS, InvalidRow, parse_email, parse_time
from policies.facts import Suppression
from policies.rules.consent import COMPLAINT, INTERACTION_KINDS, UNSUBSCRIBED
from relay.consent.imports import ConsentRefused, account_scopes, add_consent
from relay.consent.proof import build_proof, consent_as_dict, suppression_as_dict
from relay.errors import NotFound, StoreUnavailable, UsageError
from relay.http.api_keys import key_account, own_scope_only, scoped_account
from relay.http.common import admin_label, json_body, json_error, json_response, services_of
from relay.services import Services
from relay.store.records import AuditEntry

REASONS = {"unsubscribed": UNSUBSCRIBED, "complaint": COMPLAINT, UNSUBSCRIBED: UNSUBSCRIBED, COMPLAINT: COMPLAINT}
MAX_LIST = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def invalid(field: str, detail: str) -> NoReturn:
    """422 naming the offending field."""
    body = json.dumps({"error": "validation", "detail": detail, "field": field})
    raise web.HTTPUnprocessableEntity(text=body, content_type="application/json")


def _guarded(handler: Handler) -> Handler:
    """Translate the relay's errors into the JSON error shape."""

    @wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidRow as exc:
            invalid(exc.column, exc.detail)
        except ConsentRefused as exc:
            body = json.dumps({"error": "refused", "rule": exc.rule, "detail": exc.detail})
            raise web.HTTPUnprocessableEntity(text=body, content_type="application/json") from None
        except NotFound as exc:
            json_error(404, "not_found", str(exc) or "not found")
        except StoreUnavailable as exc:
            json_error(503, "store_unavailable", str(exc))
        except UsageError as exc:
            json_error(422, "invalid", str(exc))

    return run


def _param(request: web.Request, body: dict[str, Any] | None, name: str, *, required: bool = False) -> str | None:
    value: Any = body.get(name) if body is not None and name in body else request.query.get(name)
    if value is None or value == "":
        if required:
            invalid(name, f"{name} is required")
        return None
    if not isinstance(value, str):
        invalid(name, f"{name} must be a string")
    return value


def _account(services: Services, request: web.Request, body: dict[str, Any] | None = None) -> tuple[str, tuple[str, ...]]:
    account_id = scoped_account(request, _param(request, body, "account", required=key_account(request) is None))
    assert account_id is not None
    return account_id, account_scopes(services, account_id)  # NotFound -> 404


def _scope_of(scopes: tuple[str, ...], scope: str | None) -> str:
    if scope is None:
        return scopes[0]
    if scope not in scopes:
        invalid("scope", f"scope {scope!r} is neither the account nor its parent")
    return scope


@_guarded
async def post_consent(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await json_body(request)
    account_id, _ = _account(services, request, body)
    unknown = [k for k in body if k not in CONSENT_FIELDS and k != "account"]
    if unknown:
        invalid(unknown[0], f"unknown field {unknown[0]!r}")
    values = {k: v for k, v in body.items() if k != "account"}
    own_scope_only(request, values.get("scope") if isinstance(values.get("scope"), str) else None)
    result = await add_consent(services, values, account_id, actor=admin_label(request))
    return json_response(
        {"consent": consent_as_dict(result.record), "changed": result.changed}, status=201 if result.changed else 200
    )


@_guarded
async def get_consent(request: web.Request) -> web.Response:
    services = services_of(request)
    account_id, _ = _account(services, request)
    email = parse_email("email", request.match_info["email"])
    proof = await build_proof(services, email, account_id)
    return json_response({k: proof[k] for k in ("email", "account", "consents", "suppressions")})


@_guarded
async def delete_consent(request: web.Request) -> web.Response:
    services = services_of(request)
    account_id, scopes = _account(services, request)
    email = parse_email("email", request.match_info["email"])
    scope = _param(request, None, "scope")
    topic = _param(request, None, "topic")
    via = _param(request, None, "via") or f"api:{admin_label(request)}"
    own_scope_only(request, scope)
    targets = [_scope_of(scopes, scope)] if scope else list(scopes[:1] if key_account(request) else scopes)
    now = services.clock.now()
    count = 0
    for target in targets:
        count += await services.store.consent.revoke(target, email, topic, via=via, at=now)
    if not count:
        raise NotFound(f"no active consent for {email} at {' or '.join(targets)}")
    await services.store.audit.add(
        AuditEntry(
            admin_label(request),
            "consent.revoke",
            account_id,
            detail={"email": email, "scopes": targets, "topic": topic, "count": count},
            at=now,
        )
    )
    return json_response({"email": email, "account": account_id, "revoked": count})


@_guarded
async def get_proof(request: web.Request) -> web.Response:
    services = services_of(request)
    account_id, _ = _account(services, request)
    email = parse_email("email", request.match_info["email"])
    return json_response(await build_proof(services, email, account_id))


@_guarded
async def post_interaction(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await json_body(request)
    account_id, scopes = _account(services, request, body)
    email = parse_email("email", body.get("email"))
    kind = body.get("kind")
    if kind not in INTERACTION_KINDS:
        invalid("kind", f"kind must be one of {', '.join(INTERACTION_KINDS)}")
    now = services.clock.now()
    at = parse_time("at", body.get("at"), now) or now
    count = await services.store.consent.touch(scopes, email, kind, at)
    if not count:
        raise NotFound(f"no active consent for {email} at account {account_id} or its parent")
    return json_response({"email": email, "account": account_id, "kind": kind, "at": at.isoformat(), "updated": count})


@_guarded
async def list_suppressions(request: web.Request) -> web.Response:
    services = services_of(request)
    limit_text = request.query.get("limit", "1000")
    if not (limit_text.isascii() and limit_text.isdigit()) or not 0 < int(limit_text) <= MAX_LIST:  # "²" is a digit to isdigit
        invalid("limit", f"limit must be an integer from 1 to {MAX_LIST}")
    limit = int(limit_text)
    if request.query.get("account") or key_account(request):
        _, scopes = _account(services, request)
        items: list[Suppression] = []
        for scope in scopes:
            items += await services.store.consent.list_suppressions(scope, limit)
        items = items[:limit]
    else:
        items = await services.store.consent.list_suppressions(None, limit)
    return json_response({"items": [suppression_as_dict(s) for s in items]})


@_guarded
async def post_suppression(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await json_body(request)
    account_id, scopes = _account(services, request, body)
    allowed = {"account", "email", "scope", "topic", "reason", "note"}
    unknown = [k for k in body if k not in allowed]
    if unknown:
        invalid(unknown[0], f"unknown field {unknown[0]!r}")
    email = parse_email("email", body.get("email"))
    scope = _scope_of(scopes, _param(request, body, "scope"))
    own_scope_only(request, scope)
    topic = _param(request, body, "topic") or "*"
    if any(c.isspace() for c in topic):
        invalid("topic", "a topic is one word without spaces")
    reason_text = _param(request, body, "reason") or "unsubscribed"
    if reason_text not in REASONS:
        invalid("reason", "reason must be unsubscribed or complaint")
    note = body.get("note") or ""
    if not isinstance(note, str):
        invalid("note", "note must be a string")
    now = services.clock.now()
    suppression = Suppression(email, scope, topic, REASONS[reason_text], via="admin", created_at=now)
    created = await services.store.consent.add_suppression(suppression, note=note)
    if created:
        await services.store.audit.add(
            AuditEntry(
                admin_label(request),
                "suppression.add",
                account_id,
                note,
                {"email": email, "scope": scope, "topic": topic, "reason": suppression.reason},
                now,
            )
        )
    return json_response({"suppression": suppression_as_dict(suppression), "created": created}, status=201 if created else 200)


@_guarded
async def delete_suppression(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await json_body(request) if request.can_read_body else None
    account_id, scopes = _account(services, request, body)
    email = parse_email("email", _param(request, body, "email", required=True))
    scope = _scope_of(scopes, _param(request, body, "scope"))
    own_scope_only(request, scope)
    reason_text = _param(request, body, "reason")
    if reason_text is not None and reason_text not in REASONS:
        invalid("reason", "reason must be unsubscribed or complaint")
    reason = REASONS[reason_text] if reason_text else None
    count = await services.store.consent.remove_suppression(scope, email, reason)
    if not count:
        raise NotFound(f"no suppression for {email} at scope {scope}")
    await services.store.audit.add(
        AuditEntry(
            admin_label(request),
            "suppression.remove",
            account_id,
            "",
            {"email": email, "scope": scope, "reason": reason, "count": count},
            services.clock.now(),
        )
    )
    return json_response({"email": email, "account": account_id, "scope": scope, "removed": count})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/consent", post_consent)
    app.router.add_get("/api/consent/{email}/proof", get_proof)
    app.router.add_get("/api/consent/{email}", get_consent)
    app.router.add_delete("/api/consent/{email}", delete_consent)
    app.router.add_post("/api/interactions", post_interaction)
    app.router.add_get("/api/suppressions", list_suppressions)
    app.router.add_post("/api/suppressions", post_suppression)
    app.router.add_delete("/api/suppressions", delete_suppression)
