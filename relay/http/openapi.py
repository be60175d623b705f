"""The admin listener's HTTP API as an OpenAPI 3.1 document, served at `/api/openapi.json`
(docs/SPEC.md §10). tests/relay/http/test_openapi.py holds it to the real handlers: every route
documented, every documented route served, every response valid against its schema, and
the whole API fuzzed from it (schemathesis)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from policies.facts import ConsentRecord
from relay.http import openapi_signups as signups_api
from relay.http.common import json_response

OPENAPI_PATH = "/api/openapi.json"

_NULLABLE_STR = {"type": ["string", "null"]}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_STR_LIST = {"type": "array", "items": {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, *, extra: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["required"] = list(properties) if required is None else required
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _consent_record() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, annotation in ConsentRecord.__annotations__.items():
        text = str(annotation)
        if "datetime" in text:
            props[name] = _TIME
        elif text == "bool":
            props[name] = {"type": "boolean"}
        else:
            props[name] = {"type": "string"}
    return _obj(props)


def _consent_input() -> dict[str, Any]:
    props: dict[str, Any] = {"account": {"type": "string", "description": "the account id"}}
    for name, annotation in ConsentRecord.__annotations__.items():
        if name in ("id", "scope", "revoked_at", "revoked_via", "created_at", "updated_at"):
            continue
        text = str(annotation)
        if "datetime" in text:
            props[name] = {"type": ["string", "null"], "description": "ISO-8601 time"}
        elif text == "bool":
            props[name] = {"type": ["boolean", "string"], "description": "true/false (or yes/no, 1/0)"}
        else:
            props[name] = {"type": "string"}
    schema = _obj(props, ["account", "email"], extra=True)
    schema["description"] = "The consent fields of docs/SPEC.md §5 (as a CSV row of `consent import` has them); unknown fields get 422."
    return schema


_QUARANTINE_SUMMARY: dict[str, Any] = {
    "id": {"type": "string"},
    "account": {"type": "string"},
    "stream": {"type": "string"},
    "mail_from": {"type": "string"},
    "rcpt_tos": _STR_LIST,
    "subject": {"type": "string"},
    "rules": _STR_LIST,
    "received_at": _TIME,
    "size": {"type": "integer"},
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "error": {"type": "string", "description": "a stable code: unauthorized, not_found, invalid, validation, refused, …"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "validation errors: the offending field"},
            "rule": {"type": "string", "description": "refused: the rule id that refused"},
            "reject_id": {"type": ["integer", "string", "null"], "description": "malformed_report: the kept report's id"},
        },
        ["error", "detail"],
    ),
    "Health": _obj({"status": {"const": "ok"}}),
    "Readiness": _obj(
        {"ready": {"type": "boolean"}},
        ["ready"],
        extra=True,
    )
    | {
        "additionalProperties": _obj({"ok": {"type": "boolean"}, "detail": {"type": "string"}}, ["ok"]),
        "description": "`ready`, and one object per dependency (store, upstream) with its `ok`",
    },
    "QuarantineSummary": _obj(_QUARANTINE_SUMMARY),
    "Finding": _obj(
        {
            "rule": {"type": "string"},
            "detail": {"type": "string"},
            "evidence": {"type": "string"},
            "action": {"type": "string"},
            "recipient": _NULLABLE_STR,
        }
    ),
    "QuarantineDetail": _obj(
        {
            **_QUARANTINE_SUMMARY,
            "status": {"type": "string", "description": "held | released | deleted"},
            "findings": {"type": "array", "items": _ref("Finding")},
        }
    ),
    "QuarantineList": _obj(
        {"items": {"type": "array", "items": _ref("QuarantineSummary")}, "next": _NULLABLE_STR}
    ),
    "Outcome": _obj(
        {
            "id": {"type": "string"},
            "status": {"type": "string", "description": "released | deleted | held | error"},
            "error": {"type": "string"},
            "detail": {"type": "string"},
            "delivered": _STR_LIST,
            "refused": {
                "type": "array",
                "items": _obj({"recipient": {"type": "string"}, "reason": {"type": "string"}}),
            },
            "queued": _STR_LIST,
        },
        ["id", "status"],
    ),
    "BulkOutcome": _obj(
        {"results": {"type": "array", "items": _ref("Outcome")}, "ok": {"type": "integer"}, "failed": {"type": "integer"}}
    ),
    "Note": _obj({"note": {"type": ["string", "null"], "maxLength": 2000}}, []),
    "BulkRequest": _obj(
        {
            "ids": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1000},
            "note": {"type": ["string", "null"], "maxLength": 2000},
        },
        ["ids"],
    ),
    "AuditEntry": _obj(
        {
            "id": {"type": ["integer", "string", "null"]},
            "at": _TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "note": {"type": "string"},
            "detail": {},
        }
    ),
    "AuditList": _obj({"items": {"type": "array", "items": _ref("AuditEntry")}}),
    "ConsentRecord": _consent_record(),
    "ConsentInput": _consent_input(),
    "ConsentResult": _obj({"consent": _ref("ConsentRecord"), "changed": {"type": "boolean"}}),
    "Suppression": _obj(
        {
            "email": {"type": "string"},
            "scope": {"type": "string"},
            "topic": {"type": "string"},
            "reason": {"type": "string", "enum": ["suppression.unsubscribed", "suppression.complaint"]},
            "via": {"type": "string"},
            "created_at": _TIME,
        }
    ),
    "Delivery": _obj(
        {
            "relay_id": {"type": "string"},
            "message_id": {"type": ["string", "null"]},
            "stream": {"type": ["string", "null"]},
            "delivered_at": _TIME,
            "consent_id": _NULLABLE_STR,
            "status": {"type": ["string", "null"]},
            "scope": {"type": ["string", "null"]},
            "topic": {"type": ["string", "null"]},
        }
    ),
    "ConsentView": _obj(
        {
            "email": {"type": "string"},
            "account": {"type": "string"},
            "consents": {"type": "array", "items": _ref("ConsentRecord")},
            "suppressions": {"type": "array", "items": _ref("Suppression")},
        }
    ),
    "Proof": _obj(
        {
            "email": {"type": "string"},
            "account": {"type": "string"},
            "consents": {"type": "array", "items": _ref("ConsentRecord")},
            "suppressions": {"type": "array", "items": _ref("Suppression")},
            "deliveries": {"type": "array", "items": _ref("Delivery")},
            "bounces": {"type": "array", "items": _ref("ProofBounce")},
            "signups": signups_api.PROOF_SIGNUPS,
        }
    ),
    "ProofBounce": _obj(
        {
            "id": {"type": "integer"},
            "kind": {"type": "string", "enum": ["hard", "soft", "unknown"]},
            "status": {"type": "string"},
            "diagnostic": {"type": "string"},
            "relay_id": {"type": "string"},
            "received_at": {"type": "string"},
        }
    ),
    "Bounce": _obj(
        {
            "id": {"type": "integer"},
            "account": {"type": "string", "description": "empty when the DSN names no delivery the relay knows"},
            "email": {"type": "string"},
            "kind": {"type": "string", "enum": ["hard", "soft", "unknown"]},
            "permanent": {"type": "boolean"},
            "status": {"type": "string"},
            "action": {"type": "string"},
            "diagnostic": {"type": "string"},
            "relay_id": {"type": "string"},
            "delivery_id": {"type": ["integer", "null"]},
            "source": {"type": "string"},
            "detail": {"type": "string"},
            "received_at": _TIME,
        }
    ),
    "Event": _obj(
        {
            "id": {"type": "string"},
            "type": {"type": "string", "description": "delivered, unsubscribed, complained, bounced, … (docs/events-and-webhooks.md)"},
            "at": _TIME,
            "account": {"type": "string"},
            "stream": {"type": "string"},
            "recipient": {"type": "string"},
            "relay_id": {"type": "string"},
            "message_id": {"type": "string"},
            "rule": {"type": "string"},
            "detail": {},
            "cursor": {"type": "string"},
        }
    ),
    "EventPage": _obj(
        {"events": {"type": "array", "items": _ref("Event")}, "next": {"type": "string", "description": "the `after` of the next page"}}
    ),
    "BounceList": _obj({"items": {"type": "array", "items": _ref("Bounce")}}),
    "Revoked": _obj({"email": {"type": "string"}, "account": {"type": "string"}, "revoked": {"type": "integer"}}),
    "InteractionInput": _obj(
        {
            "account": {"type": "string"},
            "email": {"type": "string"},
            "kind": {"type": "string", "description": "the kind of interaction (open, click, purchase, …)"},
            "at": {"type": ["string", "null"], "description": "ISO-8601 time; default now"},
        },
        ["account", "email", "kind"],
        extra=True,
    ),
    "Interaction": _obj(
        {
            "email": {"type": "string"},
            "account": {"type": "string"},
            "kind": {"type": "string"},
            "at": {"type": "string"},
            "updated": {"type": "integer"},
        }
    ),
    "SuppressionList": _obj({"items": {"type": "array", "items": _ref("Suppression")}}),
    "SuppressionInput": _obj(
        {
            "account": {"type": "string"},
            "email": {"type": "string"},
            "scope": {"type": "string"},
            "topic": {"type": "string"},
            "reason": {"type": "string", "enum": ["unsubscribed", "complaint", "suppression.unsubscribed", "suppression.complaint"]},
            "note": {"type": ["string", "null"]},
        },
        ["account", "email"],
    ),
    "SuppressionResult": _obj({"suppression": _ref("Suppression"), "created": {"type": "boolean"}}),
    "SuppressionRemoveInput": _obj(
        {
            "account": {"type": "string"},
            "email": {"type": "string"},
            "scope": {"type": "string"},
            "reason": {"type": "string"},
        },
        [],
        extra=True,
    ),
    "SuppressionRemoved": _obj(
        {"email": {"type": "string"}, "account": {"type": "string"}, "scope": {"type": "string"}, "removed": {"type": "integer"}}
    ),
    "ComplaintInput": _obj(
        {
            "account": {"type": "string"},
            "email": {"type": "string"},
            "message_id": {"type": "string"},
            "feedback_type": {"type": "string"},
            "arrived_at": {"type": "string"},
        },
        [],
        extra=True,
    ),
    "ComplaintCreated": _obj(
        {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "email": {"type": "string"},
            "status": {"type": "string"},
            "duplicate": {"type": "boolean"},
            "account_paused": {"type": "boolean"},
            "more": {
                "type": "array",
                "description": "a report naming several recipients: one complaint each for the others",
                "items": _obj({"id": {"type": "integer"}, "email": {"type": "string"}, "status": {"type": "string"}}),
            },
        },
        ["id", "account", "email", "status"],
    ),
    "Complaint": _obj(
        {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "email": {"type": "string"},
            "status": {"type": "string"},
            "feedback_type": {"type": ["string", "null"]},
            "source": {"type": ["string", "null"]},
            "received_at": _TIME,
            "arrived_at": _TIME,
            "deadline": _TIME,
            "message_id": {"type": ["string", "null"]},
            "relay_id": {"type": ["string", "null"]},
            "stream": {"type": ["string", "null"]},
            "mapped_by": {"type": ["string", "null"]},
            "reporter": {"type": ["string", "null"]},
            "forwarded_to": {"type": ["string", "null"]},
            "forwarded_at": _TIME,
            "forward_error": {"type": ["string", "null"]},
            "acknowledged_at": _TIME,
            "acknowledged_by": {"type": ["string", "null"]},
            "note": {"type": ["string", "null"]},
            "escalated_at": _TIME,
            "verified": {"type": "boolean", "description": "from a configured feedback loop, or vouched for by an admin"},
            "spam_trap": {"type": "boolean"},
        }
    ),
    "ComplaintList": _obj({"items": {"type": "array", "items": _ref("Complaint")}}),
    "RejectedReport": _obj(
        {
            "id": {"type": ["integer", "string"]},
            "source": {"type": "string"},
            "reason": {"type": "string"},
            "received_at": {"type": "string"},
            "size": {"type": "integer"},
        }
    ),
    "RejectedList": _obj({"items": {"type": "array", "items": _ref("RejectedReport")}}),
    "AckInput": _obj({"note": {"type": "string", "minLength": 1}}, ["note"]),
    "VerifyInput": _obj({"note": {"type": "string"}}, []),
    "OpenApi": {"type": "object", "description": "this document"},
}
SCHEMAS.update(signups_api.SCHEMAS)


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "the body is not valid JSON",
        403: "an account API key asked for another account or an admin-only operation",
        401: "no valid admin bearer token",
        404: "no such record (or account)",
        409: "the record is not in a state that allows this",
        413: "the body is too large",
        415: "a media type this operation does not take",
        422: "a parameter or field is invalid (named in `detail`/`field`)",
        503: "the store (or the upstream, for a release) is unavailable",
    }
    return {str(c): _json("Error", text[c]) for c in codes}


def _query(name: str, description: str, *, required: bool = False, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema or {"type": "string"}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema)}}}


_AUTH = [{"bearer": []}]
_COMMON = (401, 503)
_ACCOUNT = _query("account", "the account id", required=True)


# A request that is not valid HTTP (a Content-Length that is not a number, a header line without a
# colon) is answered 400 by the HTTP parser before any route or middleware sees it, as text/plain;
# every operation documents that answer (_document_malformed_http, once PATHS is complete).
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
_MALFORMED_HTTP = {"text/plain": {"schema": {"type": "string"}}}


def _document_malformed_http(paths: dict[str, Any]) -> None:
    for item in paths.values():
        for method, op in item.items():
            if method not in _METHODS:
                continue  # a path item's shared "parameters"
            responses = op["responses"]
            bad = responses.get("400")
            if bad is None:
                responses["400"] = {"description": "the request is not valid HTTP (the HTTP parser's answer)", "content": _MALFORMED_HTTP}
            else:
                responses["400"] = {**bad, "content": {**bad.get("content", {}), **_MALFORMED_HTTP}}


def _op(summary: str, responses: dict[str, Any], *, tag: str, auth: bool = True, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    op["security"] = _AUTH if auth else []
    op.update(extra)
    return op


PATHS: dict[str, Any] = {
    "/healthz": {
        "get": _op("The process is up", {"200": _json("Health", "up")}, tag="operations", auth=False, operationId="healthz")
    },
    "/readyz": {
        "get": _op(
            "Ready to accept mail: store and upstream reachable",
            {"200": _json("Readiness", "ready"), "503": _json("Readiness", "not ready: the part that is not ok says why")},
            tag="operations",
            auth=False,
            operationId="readyz",
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics (docs/metrics.md); behind the bearer token when `[http] metrics_require_token`",
            {
                "200": {"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors(401),
            },
            tag="operations",
            auth=False,
            operationId="metrics",
        )
    },
    OPENAPI_PATH: {
        "get": _op(
            "This document",
            {"200": _json("OpenApi", "the OpenAPI 3.1 document of this API")},
            tag="operations",
            auth=False,
            operationId="openapi",
        )
    },
    "/api/quarantine": {
        "get": _op(
            "List held messages, newest first",
            {"200": _json("QuarantineList", "one page; `next` is the cursor of the next page (null at the end)"), **_errors(422, *_COMMON)},
            tag="quarantine",
            operationId="listQuarantine",
            parameters=[
                _query("account", "only this account"),
                _query("rule", "only messages held by this rule id"),
                _query("since", "received at or after: ISO-8601 time or an age like 12h, 7d"),
                _query("before", "received before: ISO-8601 time or an age like 30d"),
                _query("limit", "page size (default 50)", schema={"type": "integer"}),
                _query("cursor", "the `next` of the previous page"),
            ],
        )
    },
    "/api/quarantine/release": {
        "post": _op(
            "Release several held messages (audited)",
            {"200": _json("BulkOutcome", "one outcome per id"), **_errors(400, 422, *_COMMON)},
            tag="quarantine",
            operationId="releaseQuarantineBulk",
            requestBody=_body("BulkRequest"),
        )
    },
    "/api/quarantine/delete": {
        "post": _op(
            "Delete several held messages (audited)",
            {"200": _json("BulkOutcome", "one outcome per id"), **_errors(400, 422, *_COMMON)},
            tag="quarantine",
            operationId="deleteQuarantineBulk",
            requestBody=_body("BulkRequest"),
        )
    },
    "/api/quarantine/{id}": {
        "parameters": [_path("id", "the quarantine id (QID)")],
        "get": _op(
            "One held message: envelope, findings with evidence",
            {"200": _json("QuarantineDetail", "the message"), **_errors(404, *_COMMON)},
            tag="quarantine",
            operationId="getQuarantine",
        ),
        "delete": _op(
            "Delete a held message (audited)",
            {"200": _json("Outcome", "deleted"), **_errors(400, 404, 409, 422, *_COMMON)},
            tag="quarantine",
            operationId="deleteQuarantine",
            parameters=[_query("note", "why (kept in the audit log)")],
            requestBody=_body("Note", required=False),
        ),
    },
    "/api/quarantine/{id}/raw": {
        "parameters": [_path("id", "the quarantine id (QID)")],
        "get": _op(
            "The held message's raw bytes",
            {
                "200": {"description": "the message", "content": {"message/rfc822": {"schema": {"type": "string"}}}},
                **_errors(404, *_COMMON),
            },
            tag="quarantine",
            operationId="getQuarantineRaw",
        ),
    },
    "/api/quarantine/{id}/release": {
        "parameters": [_path("id", "the quarantine id (QID)")],
        "post": _op(
            "Release a held message: deliver it as normal delivery would (audited)",
            {"200": _json("Outcome", "released (or still held)"), **_errors(400, 404, 409, 422, *_COMMON)},
            tag="quarantine",
            operationId="releaseQuarantine",
            requestBody=_body("Note", required=False),
        ),
    },
    "/api/audit": {
        "get": _op(
            "The audit log, newest first",
            {"200": _json("AuditList", "entries"), **_errors(422, *_COMMON)},
            tag="quarantine",
            operationId="listAudit",
            parameters=[
                _query("limit", "how many (default 100)", schema={"type": "integer"}),
                _query("target", "only entries about this target (a QID, an account)"),
            ],
        )
    },
    "/api/consent": {
        "post": _op(
            "Add or update one consent record",
            {
                "200": _json("ConsentResult", "unchanged"),
                "201": _json("ConsentResult", "added or changed"),
                **_errors(400, 404, 422, *_COMMON),
            },
            tag="consent",
            operationId="postConsent",
            requestBody=_body("ConsentInput"),
        )
    },
    "/api/consent/{email}": {
        "parameters": [_path("email", "the recipient address")],
        "get": _op(
            "Consents and suppressions of one address for an account (and its parent)",
            {"200": _json("ConsentView", "what the relay knows"), **_errors(404, 422, *_COMMON)},
            tag="consent",
            operationId="getConsent",
            parameters=[_ACCOUNT],
        ),
        "delete": _op(
            "Revoke the address's consent (audited)",
            {"200": _json("Revoked", "revoked"), **_errors(404, 422, *_COMMON)},
            tag="consent",
            operationId="deleteConsent",
            parameters=[
                _ACCOUNT,
                _query("scope", "only at this scope (the account or its parent)"),
                _query("topic", "only this topic"),
                _query("via", "how the revocation came in (default api:LABEL)"),
            ],
        ),
    },
    "/api/consent/{email}/proof": {
        "parameters": [_path("email", "the recipient address")],
        "get": _op(
            "The complaint-procedure proof: consents, suppressions, and the deliveries that relied on them",
            {"200": _json("Proof", "the proof"), **_errors(404, 422, *_COMMON)},
            tag="consent",
            operationId="getProof",
            parameters=[_ACCOUNT],
        ),
    },
    "/api/interactions": {
        "post": _op(
            "Record an interaction (keeps consent fresh)",
            {"200": _json("Interaction", "recorded"), **_errors(400, 404, 422, *_COMMON)},
            tag="consent",
            operationId="postInteraction",
            requestBody=_body("InteractionInput"),
        )
    },
    "/api/suppressions": {
        "get": _op(
            "List suppressions",
            {"200": _json("SuppressionList", "suppressions"), **_errors(404, 422, *_COMMON)},
            tag="consent",
            operationId="listSuppressions",
            parameters=[
                _query("account", "only this account's scopes"),
                _query("limit", "at most this many (1 to 10000, default 1000)", schema={"type": "integer"}),
            ],
        ),
        "post": _op(
            "Suppress an address for an account or its parent (audited)",
            {
                "200": _json("SuppressionResult", "already suppressed"),
                "201": _json("SuppressionResult", "suppressed"),
                **_errors(400, 404, 422, *_COMMON),
            },
            tag="consent",
            operationId="postSuppression",
            requestBody=_body("SuppressionInput"),
        ),
        "delete": _op(
            "Lift a suppression (audited); parameters in the query or a JSON body",
            {"200": _json("SuppressionRemoved", "removed"), **_errors(400, 404, 422, *_COMMON)},
            tag="consent",
            operationId="deleteSuppression",
            parameters=[
                _query("account", "the account id (or in the body)"),
                _query("email", "the address (or in the body)"),
                _query("scope", "the scope (default: the account)"),
                _query("reason", "only this reason: unsubscribed or complaint"),
            ],
            requestBody=_body("SuppressionRemoveInput", required=False),
        ),
    },
    "/api/complaints": {
        "post": _op(
            "Submit a complaint: a raw ARF report (message/rfc822, multipart/report) or JSON",
            {
                "200": _json("ComplaintCreated", "a duplicate of a known complaint"),
                "201": _json("ComplaintCreated", "recorded, the recipient suppressed, the account's abuse contact told"),
                **_errors(400, 415, 422, *_COMMON),
            },
            tag="complaints",
            operationId="postComplaint",
            parameters=[_query("account", "raw reports: the account, when the report does not show it")],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("ComplaintInput")},
                    "message/rfc822": {"schema": {"type": "string"}},
                    "multipart/report": {"schema": {"type": "string"}},
                },
            },
        ),
        "get": _op(
            "List complaints",
            {"200": _json("ComplaintList", "complaints"), **_errors(422, *_COMMON)},
            tag="complaints",
            operationId="listComplaints",
            parameters=[
                _query("open", "only open ones: true/1/yes"),
                _query("account", "only this account"),
                _query("limit", "at most this many", schema={"type": "integer"}),
            ],
        ),
    },
    "/api/complaints/{id}/verify": {
        "parameters": [_path("id", "the complaint id (an integer)")],
        "post": _op(
            "Vouch for a report from no configured source (docs/SPEC.md §16): it counts and its deadline starts (audited)",
            {"200": _json("Complaint", "verified"), **_errors(400, 404, 409, 422, *_COMMON)},
            tag="complaints",
            operationId="verifyComplaint",
            requestBody=_body("VerifyInput", required=False),
        ),
    },
    "/api/events": {
        "get": _op(
            "The account's event feed, oldest first after a cursor (docs/SPEC.md §17); an account API key sees only its account",
            {"200": _json("EventPage", "one page; ask again with `after` = `next`"), **_errors(403, 404, 422, *_COMMON)},
            tag="events",
            operationId="listEvents",
            parameters=[
                _query("account", "the account (required with an admin token)"),
                _query("after", "the `next` of the previous page (default: the start of the feed)"),
                _query("limit", "page size", schema={"type": "integer"}),
            ],
        )
    },
    "/api/bounces": {
        "get": _op(
            "Bounces (DSNs) recorded, newest first (docs/SPEC.md §15)",
            {"200": _json("BounceList", "bounces"), **_errors(422, *_COMMON)},
            tag="complaints",
            operationId="listBounces",
            parameters=[
                _query("account", "only this account"),
                _query("kind", "only this kind", schema={"type": "string", "enum": ["hard", "soft", "unknown"]}),
                _query("limit", "at most this many", schema={"type": "integer"}),
            ],
        )
    },
    "/api/complaints/rejected": {
        "get": _op(
            "Reports that could not be parsed or mapped, kept with the reason",
            {"200": _json("RejectedList", "rejected reports"), **_errors(*_COMMON)},
            tag="complaints",
            operationId="listRejectedComplaints",
        )
    },
    "/api/complaints/{id}": {
        "parameters": [_path("id", "the complaint id (an integer)")],
        "get": _op(
            "One complaint",
            {"200": _json("Complaint", "the complaint"), **_errors(404, *_COMMON)},
            tag="complaints",
            operationId="getComplaint",
        ),
    },
    "/api/complaints/{id}/ack": {
        "parameters": [_path("id", "the complaint id (an integer)")],
        "post": _op(
            "Acknowledge a complaint: what was found and done (stops the suspension deadline)",
            {"200": _json("Complaint", "acknowledged"), **_errors(400, 404, 409, 422, *_COMMON)},
            tag="complaints",
            operationId="ackComplaint",
            requestBody=_body("AckInput"),
        ),
    },
}
PATHS.update(signups_api.PATHS)
_document_malformed_http(PATHS)


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "consent-relay admin API",
            "version": _version(),
            "description": (
                "The admin listener (`[http] admin_listen`). Every `/api/…` operation needs "
                "`Authorization: Bearer TOKEN`: an admin token of `[http] admin_tokens`, or an account API key "
                "(`[[accounts]] api_keys`) for its own account's operations; errors are "
                '`{"error": CODE, "detail": TEXT}`. The web UI (`/ui/…`, HTML) is not part of this API.'
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in ("operations", "quarantine", "consent", "complaints", "events")],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an admin token"}},
        },
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("consent-relay")
    except PackageNotFoundError:
        return "0"


async def openapi_view(request: web.Request) -> web.Response:
    return json_response(build_document())


def add_routes(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, openapi_view)
