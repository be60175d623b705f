"""The double opt-in's part of the admin API's OpenAPI document (docs/SPEC.md §18): POST /api/signups, and the
signup chain a proof carries. relay/http/openapi.py merges these into its `SCHEMAS` and `PATHS`."""

from __future__ import annotations

from typing import Any

_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _strings(*names: str) -> dict[str, Any]:
    return {name: {"type": "string"} for name in names}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


SCHEMAS: dict[str, Any] = {
    "SignupInput": {
        **_obj(
            {
                "account": {"type": "string", "description": "the account id (an admin token; an account key acts for its own)"},
                "email": {"type": "string", "description": "the address to confirm"},
                "stream": {"type": "string", "description": "a marketing stream; default: the account's default_stream"},
                "statement": {"type": "string", "maxLength": 2000, "description": "the consent text the form showed"},
                "source_url": {"type": "string", "description": "the http(s) URL of the form"},
                "ip": {"type": "string", "description": "the IP address the form was submitted from"},
                "frequency": {"type": "string", "maxLength": 200, "description": "how often the account will mail, as the form said"},
                "language": {"type": "string", "enum": ["nl", "en", "de"], "description": "of the mail and the page; default nl"},
            },
            ["email", "statement", "source_url", "ip"],
        ),
        "description": "A signup from the application's backend; the recipient confirms at PUBLIC/c/TOKEN.",
    },
    "SignupAccepted": _obj(
        {
            "status": {"type": "string", "enum": ["sent", "throttled", "suppressed"]},
            "id": {"type": "string", "description": "the signup (status sent)"},
            "relay_id": {"type": "string", "description": "the confirmation mail's relay id (status sent)"},
        },
        ["status"],
    ),
    "SignupChain": _obj(
        {
            **_strings("id", "stream", "scope", "topic"),
            "request": _obj(
                {
                    "requested_at": _TIME,
                    "method": {"type": "string", "enum": ["web_form"]},
                    **_strings("source_url", "ip", "statement", "frequency", "language", "requested_by"),
                }
            ),
            "mail": _obj(
                {
                    **_strings("relay_id", "message_id"),
                    "status": {"type": "string", "enum": ["queued", "delivered"]},
                    "delivered_at": _TIME,
                }
            ),
            "confirmation": {
                "oneOf": [
                    {"type": "null"},
                    _obj({"confirmed_at": _TIME, "ip": {"type": "string"}, "opt_in_type": {"type": "string", "enum": ["double"]}}),
                ]
            },
        }
    ),
}

# The Proof schema's extra property: `"signups": PROOF_SIGNUPS`.
PROOF_SIGNUPS: dict[str, Any] = {"type": "array", "items": _ref("SignupChain")}

PATHS: dict[str, Any] = {
    "/api/signups": {
        "post": {
            "summary": "Start a double opt-in: the relay mails the recipient a confirmation link (always 202 when valid)",
            "tags": ["consent"],
            "operationId": "postSignup",
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SignupInput")}}},
            "responses": {
                "202": {
                    "description": "sent (queued durably), throttled (one mail per resend_after_hours) or suppressed",
                    "content": {"application/json": {"schema": _ref("SignupAccepted")}},
                },
                "400": _error("the body is not valid JSON"),
                "401": _error("no valid bearer token"),
                "404": _error("no such account"),
                "409": _error("the account or stream is paused or suspended (account_paused, account_suspended)"),
                "422": _error("a field is invalid (named in `field`), or the consent would break a profile rule (`rule`)"),
                "429": {
                    "description": "too many signups from this client address; see Retry-After",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    "content": {"application/json": {"schema": _ref("Error")}},
                },
                "503": _error("the store is unavailable"),
            },
        }
    }
}
