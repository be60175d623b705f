"""Account API keys (docs/SPEC.md §17): a bearer that acts for one account only.

An admin token keeps every right. An account key may use only the routes of ACCOUNT_ROUTES
(anything else: 403) and only for its own account (another account's data: 404, answered
exactly as for an account or item that does not exist, so a key cannot probe for them).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from relay.config import Config
from relay.errors import NotFound
from relay.http.common import json_error
from relay.passwords import verify_password

# (method, canonical route) an account key may call; each handler narrows it to the key's account.
ACCOUNT_ROUTES = frozenset(
    {
        ("POST", "/api/consent"),
        ("GET", "/api/consent/{email}"),
        ("DELETE", "/api/consent/{email}"),
        ("GET", "/api/consent/{email}/proof"),
        ("GET", "/api/suppressions"),
        ("POST", "/api/suppressions"),
        ("DELETE", "/api/suppressions"),
        ("GET", "/api/events"),
        ("POST", "/api/signups"),
        ("GET", "/api/bounces"),
        ("GET", "/api/quarantine"),
        ("GET", "/api/quarantine/{id}"),
        ("GET", "/api/quarantine/{id}/raw"),
        ("GET", "/api/complaints"),
        ("GET", "/api/complaints/{id}"),
        ("POST", "/api/complaints/{id}/ack"),
    }
)


@dataclass(frozen=True)
class AccountKey:
    account: str
    label: str

    @property
    def actor(self) -> str:
        """How the audit log names what this key did."""
        return f"key:{self.account}/{self.label}"


KEY: web.RequestKey[AccountKey] = web.RequestKey("account_key", AccountKey)


class AccountKeys:
    """The `[[accounts]] api_keys` of the config (scrypt hashes); verified keys are remembered."""

    def __init__(self, config: Config) -> None:
        self._entries = [(account.id, key) for account in config.accounts for key in account.api_keys]
        # SHA-256 digests of keys that verified, compared in constant time (as relay.http.admin's
        # TokenChecker does): a dict lookup on the key itself would time the comparison.
        self._known: list[tuple[bytes, AccountKey]] = []

    async def key_for(self, token: str) -> AccountKey | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, key in self._known:
            if hmac.compare_digest(known, digest):
                found = key
        if found is not None:
            return found
        for account, entry in self._entries:
            if await asyncio.to_thread(verify_password, token, entry.hash):
                found = AccountKey(account, entry.label)
                if len(self._known) < len(self._entries):  # one key verifies against one hash
                    self._known.append((digest, found))
                return found
        return None


ACCOUNT_KEYS: web.AppKey[AccountKeys] = web.AppKey("account_keys", AccountKeys)


def check_route(request: web.Request, key: AccountKey) -> None:
    """403 unless an account key may call this route at all (unknown paths keep their 404/405)."""
    resource = request.match_info.route.resource
    if resource is None:
        return
    if (request.method, resource.canonical) not in ACCOUNT_ROUTES:
        json_error(403, "forbidden", f"the API key {key.label!r} of account {key.account!r} may not do this")


def key_account(request: web.Request) -> str | None:
    """The account an account key acts for; None for an admin token (every account)."""
    key = request.get(KEY)
    return key.account if key is not None else None


def unknown_account(account_id: str) -> NotFound:
    """The 404 for an account a key may not see: the same words as for an account that does not exist."""
    return NotFound(f"unknown account {account_id!r}")


def scoped_account(request: web.Request, requested: str | None) -> str | None:
    """The account filter of a request: an account key defaults to and is held to its own account;
    another account answers 404 as one that does not exist."""
    own = key_account(request)
    if own is None:
        return requested
    if requested and requested != own:
        json_error(404, "not_found", str(unknown_account(requested)))
    return own


def check_owner(request: web.Request, owner: str | None, missing: NotFound) -> None:
    """An item of another account answers as an item that does not exist."""
    own = key_account(request)
    if own is not None and owner != own:
        raise missing


def own_scope_only(request: web.Request, scope: str | None) -> None:
    """An account key writes at its own scope: a parent scope reaches its sibling accounts too."""
    own = key_account(request)
    if own is not None and scope is not None and scope != own:
        json_error(403, "forbidden", f"an API key of account {own!r} writes at scope {own!r} only, not {scope!r}")
