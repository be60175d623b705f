"""Complaints (docs/SPEC.md §9): take a feedback report (ARF or JSON), map it to the delivered copy,
suppress the recipient at once, forward it to the account's abuse contact, and enforce the
deadline (account.complaint_unanswered) and the complaint rate (account.complaint_rate)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any, Callable, Mapping, NoReturn, Sequence

from policies.addresses import InvalidAddress, normalize_address
from policies.facts import Suppression
from policies.feedback_report import NON_COMPLAINT_TYPES, FeedbackReport, MalformedReport, parse_feedback_report
from policies.findings import Action, Finding
from policies.rules.complaints import (
    ComplaintRateFacts,
    OpenComplaint,
    UnansweredFacts,
    complaint_rate,
    complaint_unanswered,
)
from relay.accounts import change_account_state
from relay.config import AccountConfig, ComplaintSource
from relay.delivery.upstream import Upstream
from relay.errors import NotFound, UpstreamRejected, UpstreamUnavailable, UsageError
from relay.log import get_logger, recipient_label
from relay.outgoing import Sender
from relay.services import Services
from relay.store.complaints_base import INFORMATIONAL, OPEN, Complaint
from relay.store.records import DeliveryRecord, OutboxItem
from relay.unsubscribe.tokens import MAILTO_PREFIX, TokenClaims, TokenCodec

COMPLAINT_RULE = "suppression.complaint"
SOURCES = ("mail", "api", "cli")
JSON_FIELDS = ("account", "email", "message_id", "feedback_type", "arrived_at")
FORWARD_SENDER = "complaints"  # local part of the forwards' From at mailto_domain
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAILTO_TOKEN = re.compile(re.escape(MAILTO_PREFIX) + r"([A-Za-z2-7]{27,40})@", re.IGNORECASE)
_URL_TOKEN = re.compile(r"/u/([A-Za-z0-9_-]{16,})")
# Headers of the original left out of the forward: they carry per-recipient tokens or are noise.
_NOT_FORWARDED = ("list-unsubscribe", "list-unsubscribe-post", "dkim-signature", "arc-", "x-relay-stream")
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# CRLF, and no folding of a Subject that is long only because of an account id (RFC 5322 allows 998).
_FORWARD_POLICY = SMTP.clone(max_line_length=998)


class ComplaintRefused(UsageError):
    """A report that cannot become a complaint; it was kept as `reject_id` for inspection."""

    def __init__(self, reason: str, reject_id: int = 0) -> None:
        super().__init__(f"feedback report refused: {reason}" + (f" (kept as reject {reject_id})" if reject_id else ""))
        self.reason = reason
        self.reject_id = reject_id


class ComplaintNotOpen(UsageError):
    pass


@dataclass(frozen=True)
class Ingested:
    complaint: Complaint
    created: bool  # False: the same report was ingested before; nothing was done again
    account_paused: bool = False  # the complaint rate paused the account just now
    more: tuple[Complaint, ...] = ()  # the other recipients of a report naming several


@dataclass(frozen=True)
class _Located:
    account: AccountConfig
    email: str
    delivery: DeliveryRecord | None
    mapped_by: str


def mask_address(address: str) -> str:
    """j***@example.net: enough for the sender to recognise, not enough to re-add the address."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else "***"


def report_key(raw: bytes) -> str:
    """The same report by mail and by import is one complaint; line ends do not matter."""
    return "arf:" + hashlib.sha256(raw.replace(b"\r\n", b"\n").strip()).hexdigest()


class ComplaintService:
    def __init__(self, services: Services, upstream: Upstream | None = None) -> None:
        self.services = services
        self.config = services.config
        self.store = services.store
        self.log = get_logger()
        self._upstream = upstream
        self._own_upstream: Upstream | None = None
        secrets = self.config.unsubscribe.secrets
        self.codec: TokenCodec | None = TokenCodec(secrets) if secrets else None
        # DKIM key lookups for [complaints] sources dkim_domains: dkimpy's DNS unless a test sets one.
        self.dns_txt: Callable[..., bytes | None] | None = None

    async def close(self) -> None:
        if self._own_upstream is not None:
            await self._own_upstream.close()
            self._own_upstream = None

    # --- ingest ---------------------------------------------------------------------------

    async def ingest_raw(
        self, raw: bytes, *, source: str, account: str | None = None, actor: str = "", client_ip: str = ""
    ) -> Ingested:
        """An ARF report as received by mail (from `client_ip`), API or file. Raises ComplaintRefused (kept)."""
        now = self.services.clock.now()
        try:
            report = parse_feedback_report(raw)
        except MalformedReport as exc:
            await self._refuse(source, exc.reason, raw)
        hint = await self._hint_account(account, source, raw)
        found = await self._locate_all(report, hint)
        if isinstance(found, str):
            await self._refuse(source, found, raw)
        counts = report.feedback_type not in NON_COMPLAINT_TYPES
        verified, feedback_loop = await self._verification(source, client_ip, raw)
        spam_trap = counts and (report.spam_trap or bool(feedback_loop and feedback_loop.spamtrap and report.feedback_type == "abuse"))
        key = report_key(raw)
        results = []
        for located in found:
            delivery = located.delivery
            complaint = Complaint(
                account=located.account.id,
                email=located.email,
                feedback_type=report.feedback_type,
                status=OPEN if counts else INFORMATIONAL,
                source=source,
                received_at=now,
                # One report naming several recipients is one complaint per recipient.
                report_key=key if len(found) == 1 else f"{key}:{located.email}",
                arrived_at=report.arrival_date,
                deadline=self._deadline(now) if counts and verified else None,
                message_id=(delivery.message_id if delivery else "") or report.original_message_id[:300],
                relay_id=delivery.relay_id if delivery else "",
                delivery_id=delivery.id if delivery else None,
                stream=delivery.stream if delivery else "",
                mapped_by=located.mapped_by,
                reporter=(report.user_agent or actor)[:200],
                verified=verified,
                spam_trap=spam_trap,
            )
            results.append(await self._record(complaint, raw, report.original_headers))
        first = results[0]
        return Ingested(
            first.complaint, first.created, any(r.account_paused for r in results), tuple(r.complaint for r in results[1:])
        )

    async def _locate_all(self, report: FeedbackReport, hint: AccountConfig | None) -> list[_Located] | str:
        """Every recipient the report names that the relay delivered to (docs/SPEC.md §16)."""
        if len(report.original_rcpt_to) <= 1:
            located = await self._locate_report(report, hint)
            return [located] if isinstance(located, _Located) else located
        found: list[_Located] = []
        problems: list[str] = []
        for email in report.original_rcpt_to:
            located = await self._locate_report(report, hint, email=email)
            if isinstance(located, _Located):
                if located.email not in {f.email for f in found}:
                    found.append(located)
            else:
                problems.append(located)
        return found or problems[0]

    async def _verification(self, source: str, client_ip: str, raw: bytes) -> tuple[bool, ComplaintSource | None]:
        """docs/SPEC.md §16: an admin's report (API, CLI) is verified; one by mail when its client is inside a
        configured source's networks, or it carries a valid DKIM signature of one of its dkim_domains."""
        cfg = self.config.complaints
        found = cfg.source_for_client(client_ip) if client_ip else None
        if found is None and any(s.dkim_domains for s in cfg.sources):
            found = cfg.source_for_dkim(await self.dkim_domains(raw))
        return (source != "mail" or found is not None), found

    async def dkim_domains(self, raw: bytes) -> list[str]:
        """The d= domains of the report's DKIM signatures that verify (DNS in a thread, bounded)."""
        import dkim

        def verified() -> list[str]:
            domains = []
            for index, header in enumerate(re.findall(rb"(?mi)^DKIM-Signature:", raw[:65536])[:3]):
                try:
                    checker = dkim.DKIM(raw)
                    ok = checker.verify(idx=index, dnsfunc=self.dns_txt) if self.dns_txt else checker.verify(idx=index)
                except Exception:  # dkimpy raises many kinds on hostile input: a failed check, no more
                    ok = False
                if ok and checker.domain:
                    domains.append(checker.domain.decode("ascii", "replace").lower())
            return domains

        try:
            return await asyncio.wait_for(asyncio.to_thread(verified), 10)
        except TimeoutError:
            return []

    async def ingest_json(self, data: Mapping[str, Any], *, source: str = "api", actor: str = "") -> Ingested:
        """{"account", "email", "message_id", "feedback_type", "arrived_at"} (docs/SPEC.md §12)."""
        raw = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
        problem, fields = self._json_fields(data)
        if problem:
            await self._refuse(source, problem, raw)
        now = self.services.clock.now()
        email, message_id, account_id = fields["email"], fields["message_id"], fields["account"]
        delivery = None
        if message_id:
            await self._flush_decisions()
            found = [
                d for d in await self.store.decisions.deliveries_by_message_id(message_id)
                if d.email == email and (not account_id or d.account == account_id)
            ]
            delivery = max(found, key=lambda d: d.delivered_at) if found else None
        account_id = account_id or (delivery.account if delivery else "")
        if not account_id:
            await self._refuse(source, "account: required when message_id does not name a delivered copy", raw)
        account = self.config.account(account_id)
        if account is None:
            await self._refuse(source, f"account: unknown account {account_id!r}", raw)
        feedback_type = fields["feedback_type"] or "abuse"
        counts = feedback_type not in NON_COMPLAINT_TYPES
        arrived = fields["arrived_at"]
        key_source = json.dumps([account.id, email, message_id, feedback_type, arrived.isoformat() if arrived else ""])
        complaint = Complaint(
            account=account.id,
            email=email,
            feedback_type=feedback_type,
            status=OPEN if counts else INFORMATIONAL,
            source=source,
            received_at=now,
            report_key="json:" + hashlib.sha256(key_source.encode("utf-8")).hexdigest(),
            arrived_at=arrived,
            deadline=self._deadline(now) if counts else None,
            message_id=message_id,
            relay_id=delivery.relay_id if delivery else "",
            delivery_id=delivery.id if delivery else None,
            stream=delivery.stream if delivery else "",
            mapped_by="message_id" if delivery else source,
            reporter=actor[:200],
        )
        return await self._record(complaint, raw, (("Message-ID", message_id),) if message_id else ())

    def _json_fields(self, data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if not isinstance(data, Mapping):
            return "expected a JSON object", {}
        unknown = sorted(set(data) - set(JSON_FIELDS))
        if unknown:
            return f"{unknown[0]}: unknown field (expected {', '.join(JSON_FIELDS)})", {}
        out: dict[str, Any] = {}
        for name in ("account", "message_id", "feedback_type", "arrived_at"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                return f"{name}: expected a string", {}
            out[name] = (value or "").strip()
        email = data.get("email")
        if not isinstance(email, str) or not email.strip():
            return "email: the complaining recipient's address is required", {}
        try:
            out["email"] = normalize_address(email)
        except InvalidAddress:
            return f"email: not an e-mail address: {email[:100]!r}", {}
        out["feedback_type"] = out["feedback_type"].lower()
        if out["feedback_type"] and not _TOKEN.fullmatch(out["feedback_type"]):
            return f"feedback_type: {out['feedback_type'][:60]!r} is not a feedback type", {}
        out["message_id"] = out["message_id"][:300]
        if out["arrived_at"]:
            try:
                arrived = datetime.fromisoformat(out["arrived_at"].replace("Z", "+00:00"))
            except ValueError:
                return f"arrived_at: not an ISO-8601 time: {out['arrived_at'][:60]!r}", {}
            out["arrived_at"] = arrived if arrived.tzinfo else arrived.replace(tzinfo=timezone.utc)
        else:
            out["arrived_at"] = None
        return "", out

    async def _hint_account(self, account_id: str | None, source: str, raw: bytes) -> AccountConfig | None:
        if not account_id:
            return None
        account = self.config.account(account_id)
        if account is None:
            await self._refuse(source, f"unknown account {account_id!r}", raw)
        return account

    def _deadline(self, now: datetime) -> datetime:
        return now + timedelta(hours=self.config.complaints.ack_deadline_hours)

    async def _refuse(self, source: str, reason: str, raw: bytes) -> NoReturn:
        reject_id = await self.store.complaints.keep_rejected(
            source=source, reason=reason, report=raw, at=self.services.clock.now()
        )
        self.log.warning("complaint_refused", source=source, reason=reason, reject_id=reject_id, size=len(raw))
        raise ComplaintRefused(reason, reject_id)

    # --- mapping a report to the delivered copy -------------------------------------------

    async def _flush_decisions(self) -> None:
        # Deliveries are written in batches; a copy that left moments ago may still be in memory.
        outgoing = self.services.outgoing
        if outgoing is not None:
            await outgoing.recorder.flush()

    async def _locate_report(
        self, report: FeedbackReport, hint: AccountConfig | None, *, email: str | None = None
    ) -> _Located | str:
        """Most exact first: the copy's own mailto token, its URL token, relay id, Message-ID,
        then Original-Rcpt-To with the account named or owning the sender domain."""
        await self._flush_decisions()
        exact = email is not None  # one of several named recipients: never another's copy
        list_headers = " ".join(report.original_header_all("List-Unsubscribe"))
        claims: TokenClaims | None = None
        if self.codec is not None:
            for token in _MAILTO_TOKEN.findall(list_headers):
                delivery_id = self.codec.verify_mailto(token.lower())
                delivery = await self.store.decisions.delivery(delivery_id) if delivery_id is not None else None
                if delivery is not None and (not exact or delivery.email == email):
                    return self._from_delivery(delivery, "mailto_token", hint)
            for token in _URL_TOKEN.findall(list_headers):
                claims = self.codec.verify(token)
                if claims is not None:
                    break
        if email is None:
            email = claims.recipient if claims else (report.original_rcpt_to[0] if report.original_rcpt_to else "")
        elif claims is not None and claims.recipient != email:
            claims = None  # the token names another of the report's recipients
        via = "unsubscribe_token" if claims else ""
        accounts = self._candidate_accounts(report, hint, claims)
        relay_id = report.original_header("X-Relay-Id").strip()
        if relay_id:
            found = self._pick(await self.store.complaints.deliveries_for_relay_id(relay_id), email, accounts, claims, exact)
            if found is not None:
                return self._from_delivery(found, via or "relay_id", hint)
        message_id = report.original_message_id
        if message_id:
            candidates: list[DeliveryRecord] = []
            for variant in dict.fromkeys((message_id, f"<{message_id.strip('<>')}>")):
                candidates += await self.store.decisions.deliveries_by_message_id(variant)
            found = self._pick(candidates, email, accounts, claims, exact)
            if found is not None:
                return self._from_delivery(found, via or "message_id", hint)
        if not email:
            return "cannot tell which recipient complained: no delivered copy matches and there is no Original-Rcpt-To"
        # Only the recipient is left: the copies the relay delivered to it say which account sent one.
        ids = [a.id for a in (accounts or self.config.accounts)]
        earlier = await self.store.decisions.deliveries_to(email, ids, limit=100) if ids else []
        if not earlier:
            return f"the report names no recipient that the relay delivered to ({mask_address(email)})"
        senders = sorted({d.account for d in earlier})
        if len(senders) > 1:
            return f"the reported message could be from accounts {', '.join(senders)}; name the account"
        account = self.config.account(senders[0])
        if account is None:
            return f"the reported copy was delivered for account {senders[0]!r}, which is not configured"
        return _Located(account, email, earlier[0], via or "original_rcpt_to")

    def _candidate_accounts(
        self, report: FeedbackReport, hint: AccountConfig | None, claims: TokenClaims | None
    ) -> list[AccountConfig]:
        if hint is not None:
            return [hint]
        if claims is not None:
            under = list(self.config.accounts_under(claims.scope))
            if under:
                return under
        domains = set()
        for value in (report.original_mail_from, *report.original_header_all("From")):
            found = re.search(r"[^\s<>\"]+@([^\s<>\"]+)", value)
            if found:
                domains.add(found.group(1).lower().rstrip(">."))
        return [a for a in self.config.accounts if domains & {d.lower() for d in a.domains}]

    @staticmethod
    def _pick(
        candidates: Sequence[DeliveryRecord],
        email: str,
        accounts: Sequence[AccountConfig],
        claims: TokenClaims | None,
        exact: bool = False,
    ) -> DeliveryRecord | None:
        ids = {a.id for a in accounts}
        mine = [d for d in candidates if not ids or d.account in ids]
        found = [d for d in mine if not email or d.email == email]
        if not found and claims is None and not exact:
            # Feedback loops often redact Original-Rcpt-To; a copy with one recipient still says who it was.
            found = mine
        if not found or len({d.email for d in found}) != 1:
            return None  # nothing, or a message to several recipients and no hint which one complained
        return max(found, key=lambda d: (d.delivered_at, d.id))

    def _from_delivery(self, delivery: DeliveryRecord, via: str, hint: AccountConfig | None) -> _Located | str:
        if hint is not None and hint.id != delivery.account:
            return f"the report names a copy delivered for account {delivery.account}, not {hint.id}"
        account = self.config.account(delivery.account)
        if account is None:
            return f"the reported copy was delivered for account {delivery.account!r}, which is not configured"
        return _Located(account, delivery.email, delivery, via)

    # --- what a complaint sets in motion --------------------------------------------------

    async def _record(self, complaint: Complaint, raw: bytes, original_headers: Sequence[tuple[str, str]]) -> Ingested:
        if complaint.counts:
            # Suppress first: a store failure after this point leaves a retry that changes nothing.
            await self.store.consent.add_suppression(
                Suppression(complaint.email, complaint.account, "*", COMPLAINT_RULE, "complaint", complaint.received_at),
                note=f"{complaint.feedback_type} report via {complaint.source}",
            )
        stored, created = await self.store.complaints.add(complaint, raw)
        if not created:
            self.log.info("complaint_duplicate", complaint=stored.id, account=stored.account, source=complaint.source)
            return Ingested(stored, False)
        self.log.info(
            "complaint_received", complaint=stored.id, account=stored.account, recipient=recipient_label(stored.email),
            feedback_type=stored.feedback_type, source=stored.source, mapped_by=stored.mapped_by,
            relay_id=stored.relay_id, status=stored.status,
            deadline=stored.deadline.isoformat() if stored.deadline else None,
        )
        if not stored.counts:
            return Ingested(stored, True)
        self.services.metrics.complaints.labels(stored.account).inc()
        if not stored.verified:
            # Suppressed (cheap and safe), but nothing a stranger could use against the account.
            self.log.warning("complaint_unverified", complaint=stored.id, account=stored.account,
                             hint="not from a configured [complaints] sources entry; an admin may verify it")
            return Ingested(stored, True)
        stored = await self.forward(stored, original_headers)
        paused = await self.check_rate(stored.account, spam_trap=stored.spam_trap)
        return Ingested(stored, True, paused)

    async def forward(self, complaint: Complaint, original_headers: Sequence[tuple[str, str]]) -> Complaint:
        """Tell the account's abuse contact, through the upstream (the outbox retries a failure)."""
        account = self.config.account(complaint.account)
        contact = account.abuse_contact if account else None
        if not contact:
            await self.store.complaints.set_forwarded(complaint.id, to="", at=None, error="no abuse_contact configured")
            self.log.warning("complaint_not_forwarded", complaint=complaint.id, account=complaint.account,
                             reason="no abuse_contact configured")
            return await self._reload(complaint)
        content = self.forward_message(complaint, contact, original_headers)
        if self.services.outgoing is not None:
            # Signed with the relay's own domain key (mailto_domain), when one is configured (docs/SPEC.md §16).
            (content,) = await self.services.outgoing.signer.sign([content])
        upstream = self._upstream_client()
        now = self.services.clock.now()
        error = ""
        sent_at: datetime | None = None
        try:
            # Null sender: an automatic notice must not draw bounces or auto-replies back (RFC 3834).
            await upstream.send("", [contact], content)
            sent_at = now
        except UpstreamUnavailable as exc:
            error = await self._queue_forward(complaint, contact, content, str(exc))
        except UpstreamRejected as exc:
            error = f"refused by the upstream: {exc.reply or exc}"
        await self.store.complaints.set_forwarded(complaint.id, to=contact, at=sent_at, error=error)
        log = self.log.info if sent_at else self.log.warning
        log("complaint_forwarded" if sent_at else "complaint_forward_failed", complaint=complaint.id,
            account=complaint.account, error=error or None)
        return await self._reload(complaint)

    async def _queue_forward(self, complaint: Complaint, contact: str, content: bytes, why: str) -> str:
        item = OutboxItem(f"complaint-{complaint.id}", complaint.account, "complaint", "", (contact,), content)
        await self.store.outbox.enqueue([item], now=self.services.clock.timestamp())
        if self.services.outgoing is not None:
            self.services.outgoing.wake_outbox()
        return f"queued for retry ({why})"

    def _upstream_client(self) -> Sender:
        if self._upstream is not None:
            return self._upstream
        outgoing = self.services.outgoing
        if outgoing is not None:
            return outgoing.upstream
        if self._own_upstream is None:
            self._own_upstream = Upstream(
                self.config.upstream, self.services.metrics, local_hostname=self.config.smtp.hostname
            )
        return self._own_upstream

    async def _reload(self, complaint: Complaint) -> Complaint:
        return await self.store.complaints.get(complaint.id) or complaint

    def forward_message(self, complaint: Complaint, contact: str, original_headers: Sequence[tuple[str, str]]) -> bytes:
        domain = self.config.unsubscribe.mailto_domain
        account = self.config.account(complaint.account)
        name = f" ({account.name})" if account and account.name else ""
        deadline = complaint.deadline.strftime("%Y-%m-%d %H:%M UTC") if complaint.deadline else "-"
        hours = f"{self.config.complaints.ack_deadline_hours:g}"
        masked = mask_address(complaint.email)
        lines = [
            f"A recipient complained about mail that account {complaint.account}{name} sent through this relay.",
            "",
            f"Complaint:      {complaint.id}",
            f"Account:        {complaint.account}",
            f"Feedback type:  {complaint.feedback_type}",
            f"Recipient:      {masked} (suppressed for this account from now on)",
            f"Received:       {complaint.received_at.strftime('%Y-%m-%d %H:%M UTC')}",
            f"Message-ID:     {_clean(complaint.message_id) or '-'}",
            f"Relay id:       {complaint.relay_id or '-'}",
            f"Stream:         {complaint.stream or '-'}",
            f"Respond before: {deadline}",
            "",
            f"Please find the cause and stop it, and answer within {hours} hours: the relay operator then",
            f"acknowledges the complaint (consent-relay complaint ack {complaint.id} --note ...).",
            "A complaint left unanswered past its deadline suspends the account (account.complaint_unanswered).",
            "",
            "Headers of the reported message (recipient masked, unsubscribe tokens left out):",
            "",
        ]
        shown = 0
        for header, value in original_headers:
            if header.lower().startswith(_NOT_FORWARDED) or shown >= 60:
                continue
            text = _clean(_mask_in(value, complaint.email, masked))[:500]
            lines.append(f"  {_clean(header)[:80]}: {text}")
            shown += 1
        if not shown:
            lines.append("  (the report carried no headers of the original message)")
        msg = EmailMessage()
        msg["From"] = f"consent-relay complaints <{FORWARD_SENDER}@{domain}>"
        msg["To"] = contact
        msg["Subject"] = f"Complaint {complaint.id} about mail from account {complaint.account}: respond before {deadline}"
        msg["Date"] = format_datetime(self.services.clock.now())
        msg["Message-ID"] = make_msgid("complaint", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Relay-Complaint"] = str(complaint.id)
        msg.set_content("\n".join(lines) + "\n", charset="utf-8")
        return msg.as_bytes(policy=_FORWARD_POLICY)

    # --- enforcement ----------------------------------------------------------------------

    async def check_rate(self, account_id: str, *, spam_trap: bool = False) -> bool:
        """account.complaint_rate right after a verified complaint; True when it paused the account now."""
        cfg = self.config.complaints
        now = self.services.clock.now()
        since = now - timedelta(hours=cfg.rate_window_hours)
        facts = ComplaintRateFacts(
            account=account_id,
            complaints=await self.store.complaints.count_since(account_id, since),
            delivered=await self.store.complaints.delivered_since(account_id, since),
            threshold=cfg.rate_threshold,
            min_complaints=cfg.rate_min_complaints,
            window_hours=cfg.rate_window_hours,
            spam_trap_hits=1 if spam_trap else 0,
        )
        finding = self.services.engine.account(complaint_rate, facts)
        if finding is None:
            return False
        return await self._enforce(finding, account_id, actor="complaint-rate")

    async def enforce_deadlines(self) -> list[str]:
        """account.complaint_unanswered for every overdue complaint; the accounts it suspended."""
        now = self.services.clock.now()
        by_account: dict[str, list[Complaint]] = {}
        for complaint in await self.store.complaints.overdue(now):
            by_account.setdefault(complaint.account, []).append(complaint)
        suspended = []
        for account_id, overdue in by_account.items():
            facts = UnansweredFacts(
                account_id,
                tuple(OpenComplaint(str(c.id), c.received_at, c.deadline) for c in overdue if c.deadline),
                now,
            )
            finding = self.services.engine.account(complaint_unanswered, facts)
            if finding is None:
                continue
            if self.config.account(account_id) is None:
                self.log.warning("complaint_overdue_unknown_account", account=account_id, complaints=[c.id for c in overdue])
            elif await self._enforce(finding, account_id, actor="complaint-deadline"):
                suspended.append(account_id)
            # Escalated once: after an admin resumes the account, the same complaint does not suspend it again.
            await self.store.complaints.mark_escalated([c.id for c in overdue], at=now)
        return suspended

    async def _enforce(self, finding: Finding, account_id: str, *, actor: str) -> bool:
        """Carry out the engine's decision on an account rule: its action came from the profile."""
        action = finding.action
        self.services.metrics.rule_hits.labels(finding.rule, action.value).inc()
        reason = f"{finding.rule}: {finding.detail}"
        if action in (Action.SUSPEND, Action.REJECT):
            target, stronger = "suspend", ("suspended",)
        elif action in (Action.PAUSE, Action.TEMPFAIL):
            target, stronger = "pause", ("paused", "suspended")
        else:
            # monitor (or an override to another action): logged and counted, the account is left alone
            self.log.info("rule_monitored", rule=finding.rule, account=account_id, detail=finding.detail)
            return False
        state = await self.store.accounts.get(account_id)
        if state.state in stronger:
            self.log.info("account_enforcement_skipped", rule=finding.rule, account=account_id, state=state.state)
            return False
        await change_account_state(self.services, account_id, target, reason=reason, actor=actor)
        self.log.warning("account_enforced", rule=finding.rule, account=account_id, action=target, detail=finding.detail,
                         evidence=finding.evidence, alert=True)
        return True

    # --- the admin's side -----------------------------------------------------------------

    async def acknowledge(self, complaint_id: int, *, note: str, actor: str) -> Complaint:
        if not note.strip():
            raise UsageError("a note is required: say what was found and done about the complaint")
        existing = await self.store.complaints.get(complaint_id)
        if existing is None:
            raise NotFound(f"no complaint {complaint_id}")
        if not await self.store.complaints.acknowledge(
            complaint_id, actor=actor, note=note.strip()[:2000], at=self.services.clock.now()
        ):
            raise ComplaintNotOpen(f"complaint {complaint_id} is {existing.status}, not open")
        self.log.info("complaint_acknowledged", complaint=complaint_id, account=existing.account, actor=actor)
        return await self._reload(existing)


    async def verify(self, complaint_id: int, *, note: str, actor: str) -> Complaint:
        """An admin vouches for an unverified report (audited): its deadline starts, it is forwarded
        and counts toward the complaint rate from now on."""
        existing = await self.store.complaints.get(complaint_id)
        if existing is None:
            raise NotFound(f"no complaint {complaint_id}")
        if existing.verified:
            raise ComplaintNotOpen(f"complaint {complaint_id} is verified already")
        now = self.services.clock.now()
        deadline = self._deadline(now) if existing.status == OPEN else None
        if not await self.store.complaints.verify(
            complaint_id, actor=actor, note=note.strip()[:2000], at=now, deadline=deadline
        ):
            raise ComplaintNotOpen(f"complaint {complaint_id} is verified already")
        self.log.info("complaint_verified", complaint=complaint_id, account=existing.account, actor=actor)
        complaint = await self._reload(existing)
        if complaint.counts:
            complaint = await self.forward(complaint, await self._original_headers(complaint))
            await self.check_rate(complaint.account, spam_trap=complaint.spam_trap)
        return await self._reload(complaint)

    async def _original_headers(self, complaint: Complaint) -> Sequence[tuple[str, str]]:
        raw = await self.store.complaints.report(complaint.id) or b""
        try:
            return parse_feedback_report(raw).original_headers
        except MalformedReport:
            return (("Message-ID", complaint.message_id),) if complaint.message_id else ()


def complaint_as_dict(complaint: Complaint) -> dict[str, Any]:
    """The JSON shape of one complaint (API and `complaint list --json`)."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": complaint.id,
        "account": complaint.account,
        "email": complaint.email,
        "status": complaint.status,
        "feedback_type": complaint.feedback_type,
        "source": complaint.source,
        "received_at": when(complaint.received_at),
        "arrived_at": when(complaint.arrived_at),
        "deadline": when(complaint.deadline),
        "message_id": complaint.message_id,
        "relay_id": complaint.relay_id,
        "stream": complaint.stream,
        "mapped_by": complaint.mapped_by,
        "reporter": complaint.reporter,
        "forwarded_to": complaint.forwarded_to,
        "forwarded_at": when(complaint.forwarded_at),
        "forward_error": complaint.forward_error,
        "acknowledged_at": when(complaint.acknowledged_at),
        "acknowledged_by": complaint.acknowledged_by,
        "note": complaint.ack_note,
        "escalated_at": when(complaint.escalated_at),
        "verified": complaint.verified,
        "spam_trap": complaint.spam_trap,
    }


def _mask_in(value: str, email: str, masked: str) -> str:
    return re.sub(re.escape(email), masked, value, flags=re.IGNORECASE) if email else value


def _clean(text: str) -> str:
    return _UNSAFE.sub(" ", text)


__all__ = [
    "ComplaintNotOpen",
    "ComplaintRefused",
    "ComplaintService",
    "Ingested",
    "complaint_as_dict",
    "mask_address",
    "report_key",
]
