"""The admin HTTP listener: /metrics, /healthz, /readyz, and the bearer-protected /api/… of features."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import os
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from relay.api_keys import ACCOUNT_KEYS, KEY, AccountKeys, check_route
from relay.errors import StoreUnavailable
from relay.http_common import ADMIN, PIPELINE, SERVICES, json_error, json_response
from relay.http_lockout import FailedAttempts, client_key
from relay.log import get_logger
from relay.passwords import verify_password
from relay.pipeline import Pipeline
from relay.services import Services
from relay.store.records import AuditEntry

# Feature modules exposing add_routes(app); missing ones are features not built yet.
ROUTE_MODULES = (
    "relay.http_consent", "relay.http_quarantine", "relay.http_complaints", "relay.http_events", "relay.web.ui", "relay.openapi"
)
# The API's description is public: it names no secret, and a client reads it before it has a token.
OPEN_PATHS = frozenset({"/api/openapi.json"})

Readiness = Callable[[], Awaitable[dict[str, Any]]]
READINESS: web.AppKey[Readiness] = web.AppKey("readiness", object)  # type: ignore[arg-type]


class TokenChecker:
    """Admin tokens are stored as scrypt hashes; verified tokens are remembered for the process.

    The memory holds SHA-256 digests of tokens that verified, and a lookup compares the candidate's
    digest with every one of them in constant time: how long a wrong token takes tells nothing
    about a right one (the scrypt check that follows costs the same for every wrong token)."""

    def __init__(self, services: Services) -> None:
        self.tokens = services.config.http.admin_tokens
        self._known: list[tuple[bytes, str]] = []

    async def label_for(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, label in self._known:
            if hmac.compare_digest(known, digest):
                found = label
        if found is not None:
            return found
        for entry in self.tokens:
            if await asyncio.to_thread(verify_password, token, entry.hash):
                if len(self._known) < len(self.tokens):  # one token verifies against one hash
                    self._known.append((digest, entry.label))
                return entry.label
        return None


class AuthGuard:
    """Failed bearer tokens and UI sign-ins per client address: 429 with Retry-After once an address
    has too many (relay.http_lockout), the lock-out audited and counted."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.attempts = FailedAttempts(services.clock.monotonic)

    def retry_after(self, request: web.Request) -> int | None:
        return self.attempts.retry_after(client_key(request.remote))

    def refuse_if_locked(self, request: web.Request) -> None:
        wait = self.retry_after(request)
        if wait is not None:
            json_error(
                429, "too_many_failures",
                f"too many wrong credentials from this address; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    async def failed(self, request: web.Request, kind: str) -> None:
        """Count one wrong credential of `kind` (bearer | login) from the request's address."""
        key = client_key(request.remote)
        metrics = self.services.metrics
        metrics.http_auth_failures.labels(kind).inc()
        failures = self.attempts.failed(key)
        if not failures:
            return
        metrics.http_auth_lockouts.labels(kind).inc()
        detail = {"kind": kind, "failures": failures, "lockout_seconds": self.attempts.lockout, "path": request.path}
        get_logger().warning("http_auth_lockout", client=key, **detail)
        try:
            await self.services.store.audit.add(
                AuditEntry("relay", "auth.lockout", key, note=f"{failures} wrong {kind} credentials", detail=detail,
                           at=self.services.clock.now())
            )
        except StoreUnavailable as exc:
            get_logger().warning("http_auth_lockout_not_audited", client=key, error=str(exc))


CHECKER: web.AppKey[TokenChecker] = web.AppKey("token_checker", TokenChecker)
GUARD: web.AppKey[AuthGuard] = web.AppKey("auth_guard", AuthGuard)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@web.middleware
async def api_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    path = request.path
    needs_token = (path.startswith("/api/") and path not in OPEN_PATHS) or (
        path == "/metrics" and request.app[SERVICES].config.http.metrics_require_token
    )
    if needs_token:
        guard = request.app[GUARD]
        guard.refuse_if_locked(request)
        token = bearer(request)
        label = await request.app[CHECKER].label_for(token) if token else None
        key = await request.app[ACCOUNT_KEYS].key_for(token) if token and label is None else None
        if key is not None:
            check_route(request, key)
            request[KEY], label = key, key.actor
        if label is None:
            if token:
                await guard.failed(request, "bearer")
                guard.refuse_if_locked(request)  # this failure was the one too many
            json_error(401, "unauthorized", "a valid admin bearer token or account API key is required")
        request[ADMIN] = label
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        json_error(503, "store_unavailable", str(exc))


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or not request.path.startswith("/api/"):
            raise
        code = exc.reason.lower().replace(" ", "_")
        return json_response({"error": code, "detail": exc.text or exc.reason}, status=exc.status)


async def metrics_view(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    registry = services.metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # [smtp] workers > 1: every worker writes its values to this directory; add them up here.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    status = await request.app[READINESS]()
    ready = all(part.get("ok") for part in status.values())
    return json_response({"ready": ready, **status}, status=200 if ready else 503)


def build_admin_app(services: Services, readiness: Readiness, pipeline: Pipeline | None = None) -> web.Application:
    """`pipeline`: the relay's, which quarantine releases deliver through (none: they answer 503)."""
    app = web.Application(middlewares=[json_errors, api_auth], client_max_size=64 * 1024 * 1024)
    app[SERVICES] = services
    if pipeline is not None:
        app[PIPELINE] = pipeline
    app[READINESS] = readiness
    app[CHECKER] = TokenChecker(services)
    app[GUARD] = AuthGuard(services)
    app[ACCOUNT_KEYS] = AccountKeys(services.config)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for name in ROUTE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.add_routes(app)
    return app
