"""Who may use the admin listener: admin tokens checked against their scrypt hashes, and the guard
that locks out a client address after too many wrong credentials (bearer tokens and UI sign-ins)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from aiohttp import web

from relay.errors import StoreUnavailable
from relay.http.common import json_error
from relay.http.lockout import FailedAttempts, client_key
from relay.log import get_logger
from relay.passwords import verify_password
from relay.services import Services
from relay.store.records import AuditEntry


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
    has too many (relay.http.lockout), the lock-out audited and counted."""

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
