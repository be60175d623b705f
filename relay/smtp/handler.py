"""The aiosmtpd handler: turns session and envelope into facts, asks the engine, renders one reply.
Everything after the decision (quarantine, copies, upstream) is in relay.engine.pipeline."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from typing import Any

from aiosmtpd.smtp import AuthResult, Envelope, Session

from policies.addresses import InvalidAddress, normalize_address
from policies.facts import ClientFacts
from policies.findings import Outcome
from relay import replies
from relay.config import AccountConfig
from relay.engine.pipeline import Pipeline
from relay.engine.transaction import Transaction
from relay.errors import StoreUnavailable
from relay.log import get_logger, recipient_label
from relay.passwords import verify_password
from relay.smtp.server import AuthLockout, RelaySMTP, peer_ip

_AUTH_CACHE_SECONDS = 300.0
_TRUSTING_CACHE_SIZE = 4096  # client addresses whose account is known; a full cache starts again
_UNKNOWN = object()


class RelayHandler:
    def __init__(self, pipeline: Pipeline, lockout: AuthLockout) -> None:
        self.pipeline = pipeline
        self.services = pipeline.services
        self.config = pipeline.services.config
        self.lockout = lockout
        self.log = get_logger()
        self._auth_cache: dict[bytes, float] = {}
        self._auth_key = os.urandom(32)
        self._trusting: dict[str, AccountConfig | None] = {}
        self._trusting_config = self.config

    # --- EHLO ---------------------------------------------------------------------------

    async def handle_EHLO(self, server: RelaySMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        last = responses.pop()
        responses += [*replies.EHLO_EXTENSIONS, last]
        return responses

    # --- AUTH (async so scrypt runs off the event loop) --------------------------------

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if await self._locked(server):
            return AuthResult(success=False, handled=True)
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push(replies.BAD_BASE64)
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push(replies.BAD_AUTH_VALUE)
            return AuthResult(success=False, handled=True)
        return await self._check_credentials(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if await self._locked(server):
            return AuthResult(success=False, handled=True)
        if len(args) == 1:
            login = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push(replies.BAD_BASE64)
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check_credentials(server, login, password)

    async def _locked(self, server: RelaySMTP) -> bool:
        if self.lockout.locked(peer_ip(server.session.peer)):
            server.close_with(replies.AUTH_LOCKED)
            return True
        return False

    async def _check_credentials(self, server: RelaySMTP, login: bytes, password: bytes) -> AuthResult:
        ip = peer_ip(server.session.peer)
        account = self.config.account(login.decode("utf-8", "replace"))
        ok = False
        if account is not None and account.password_hash:
            ok = await self._verify(account, password)
        if ok:
            self.lockout.succeeded(ip)
            self.log.info("auth_ok", account=account.id if account else "", client=ip)
            return AuthResult(success=True, auth_data=account.id if account else None, message=replies.AUTH_OK)
        self.services.metrics.auth_failures.inc()
        self.log.warning("auth_failed", client=ip, login_known=account is not None)
        if self.lockout.failed(ip):
            server.close_with(replies.AUTH_LOCKED)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)

    async def _verify(self, account: AccountConfig, password: bytes) -> bool:
        assert account.password_hash is not None
        key = hmac.new(self._auth_key, account.id.encode() + b"\0" + password + b"\0" + account.password_hash.encode(), hashlib.sha256).digest()
        now = time.monotonic()
        if self._auth_cache.get(key, 0.0) > now:
            return True
        secret = password.decode("utf-8", "surrogateescape")
        ok = await asyncio.to_thread(verify_password, secret, account.password_hash)
        if ok:
            if len(self._auth_cache) > 10000:
                self._auth_cache.clear()
            self._auth_cache[key] = now + _AUTH_CACHE_SECONDS
        return ok

    # --- MAIL FROM ----------------------------------------------------------------------

    def _account_of(self, session: Session) -> AccountConfig | None:
        if session.authenticated and isinstance(session.auth_data, str):
            return self.config.account(session.auth_data)
        return self._account_trusting(peer_ip(session.peer))

    def _account_trusting(self, ip: str) -> AccountConfig | None:
        """config.account_trusting (an address parsed and matched against every account's networks)
        once per client address: the config does not change under a running handler."""
        config = self.config
        known = self._trusting.get(ip, _UNKNOWN)
        if known is _UNKNOWN or self._trusting_config is not config:
            if self._trusting_config is not config or len(self._trusting) >= _TRUSTING_CACHE_SIZE:
                self._trusting.clear()
                self._trusting_config = config
            known = self._trusting[ip] = config.account_trusting(ip)
        return known  # type: ignore[return-value]

    async def handle_MAIL(self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]) -> str:
        if address and address != "<>":
            try:
                sender = normalize_address(address)
            except InvalidAddress:
                return replies.BAD_SENDER
        else:
            sender = ""
        txn = Transaction(relay_id=self.pipeline.new_relay_id(), client_ip=peer_ip(session.peer), mail_from=sender)
        txn.account = self._account_of(session)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.txn = txn  # type: ignore[attr-defined]
        # The account's rules run at the first recipient that is not one of the relay's own addresses
        # (docs/SPEC.md §15): an unsubscribe or a feedback report is taken from anyone, whatever its sender.
        return replies.OK_MAIL

    # --- RCPT TO ------------------------------------------------------------------------

    async def handle_RCPT(self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        txn: Transaction | None = getattr(envelope, "txn", None)
        if txn is None:
            return replies.NEED_MAIL
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        try:
            rcpt = normalize_address(address)
        except InvalidAddress:
            return replies.BAD_ADDRESS
        own = self.pipeline.own_address(rcpt)
        if own is not None:
            # The relay's own addresses (unsubscribe, feedback reports) take mail from anyone.
            txn.own_recipients.append((rcpt, own))
            envelope.rcpt_tos.append(address)
            return replies.OK_RCPT
        client = ClientFacts(ip=txn.client_ip, account=txn.account.id if txn.account else None)
        permission = self.services.engine.client(client, rcpt)
        if permission.outcome is not Outcome.DELIVER:
            assert permission.deciding is not None
            finding = permission.deciding
            self.pipeline.count_rule(finding)
            self.pipeline.record_rcpt_refusal(txn, finding)
            self.log.info("relay_denied", relay_id=txn.relay_id, client=txn.client_ip, recipient=recipient_label(rcpt))
            return replies.policy_reply(finding)
        assert txn.account is not None
        if not txn.session_checked:
            try:
                session_verdict = await self.pipeline.at_mail(txn)
            except StoreUnavailable as exc:
                self.log.error("store_unavailable", stage="mail", relay_id=txn.relay_id, error=str(exc))
                return replies.STORE_UNAVAILABLE
            txn.session_checked = True
            if session_verdict.outcome is not Outcome.DELIVER:
                assert session_verdict.deciding is not None
                self.pipeline.record_refusal(txn, session_verdict, stage="mail")
                txn.session_refusal = session_verdict.deciding
        if txn.session_refusal is not None:
            return replies.policy_reply(txn.session_refusal)
        try:
            verdict = await self.pipeline.at_rcpt(txn, rcpt)
        except StoreUnavailable as exc:
            self.log.error("store_unavailable", stage="rcpt", relay_id=txn.relay_id, error=str(exc))
            return replies.STORE_UNAVAILABLE
        if verdict is not None and rcpt in verdict.refused:
            finding = verdict.refused[rcpt]
            txn.rcpt_refusals.append(finding)
            self.pipeline.record_rcpt_refusal(txn, finding)
            return replies.policy_reply(finding)
        if verdict is not None and verdict.outcome is Outcome.TEMPFAIL and verdict.deciding is not None:
            return replies.policy_reply(verdict.deciding)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        txn.recipients.append(rcpt)
        return replies.OK_RCPT

    # --- DATA ---------------------------------------------------------------------------

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        txn: Transaction | None = getattr(envelope, "txn", None)
        if txn is None or not (txn.recipients or txn.own_recipients):
            return replies.NEED_RCPT
        content = envelope.original_content or b""
        server.busy = True
        try:
            return await self.pipeline.at_data(txn, content)
        finally:
            server.busy = False

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        return replies.OK

    async def handle_exception(self, error: Exception) -> str:
        self.log.error("smtp_exception", error_type=type(error).__name__, error=str(error)[:500])
        return replies.INTERNAL_ERROR
