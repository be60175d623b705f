"""Bounces (docs/SPEC.md §15): a DSN at bounce+ID@ names its delivery; what it says about that recipient
decides: a dead mailbox (or hard_limit other permanent failures in the window) suppresses the
address for the account's scope (suppression.bounced), a delay is only counted, and a DSN nobody
can read is kept for review. Each is recorded, counted, and forwarded to bounce_forward."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any

from policies.dsn import FAILED, HARD, SOFT, MalformedDsn, parse_dsn
from policies.facts import Suppression
from relay.errors import UpstreamRejected, UpstreamUnavailable
from relay.log import get_logger, recipient_label
from relay.metrics import NO_VALUE
from relay.services import Services
from relay.store.bounces import Bounce
from relay.store.records import DeliveryRecord, OutboxItem

BOUNCED_RULE = "suppression.bounced"
FORWARD_SENDER = "bounces"  # local part of the forwards' From at mailto_domain
_FORWARD_POLICY = SMTP.clone(max_line_length=998)


class BounceService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.store = services.store
        self.log = get_logger()

    async def ingest(self, raw: bytes, *, delivery_id: int | None, source: str = "verp") -> Bounce:
        """Never raises for what the DSN says: an unreadable one is kept as kind unknown."""
        now = self.services.clock.now()
        delivery = await self._delivery(delivery_id) if delivery_id is not None else None
        try:
            report = parse_dsn(raw)
            problem = ""
        except MalformedDsn as exc:
            report, problem = None, exc.reason
        status = report.for_recipient(delivery.email) if report is not None and delivery is not None else None
        verdict = status.kind if status is not None else ""
        account = delivery.account if delivery else ""
        email = delivery.email if delivery else ""
        kind, detail = "unknown", problem
        if delivery is None:
            detail = "names no delivery the relay knows"
        elif report is not None and status is None:
            detail = "says nothing about the recipient of this delivery"
        elif verdict == HARD:
            kind = "hard"
        elif verdict == FAILED:
            window = now - timedelta(days=self.config.bounces.window_days)
            earlier = await self.store.bounces.permanent_since(account, email, window)
            limit = max(1, self.config.bounces.hard_limit)
            kind = "hard" if earlier + 1 >= limit else "soft"
            detail = f"permanent failure {earlier + 1} of {limit} within {self.config.bounces.window_days:g} days"
        elif verdict == SOFT:
            kind = "soft"
        elif status is not None:
            detail = f"action {status.action or '-'}: nothing failed"
        if kind == "hard":
            await self.store.consent.add_suppression(
                Suppression(email, account, "*", BOUNCED_RULE, "bounce", now),
                note=f"hard bounce {status.status if status else ''} {status.diagnostic[:200] if status else ''}".strip(),
            )
        bounce = await self.store.bounces.add(
            Bounce(
                account=account, email=email, kind=kind, received_at=now,
                permanent=verdict in (HARD, FAILED), status=status.status if status else "",
                action=status.action if status else "", diagnostic=status.diagnostic if status else "",
                delivery_id=delivery.id if delivery else delivery_id, relay_id=delivery.relay_id if delivery else "",
                source=source, detail=detail[:500],
            ),
            raw,
        )
        self.services.metrics.bounces.labels(account or NO_VALUE, kind).inc()
        log = self.log.warning if kind == "unknown" else self.log.info
        log("bounce_received", bounce=bounce.id, account=account, recipient=recipient_label(email) if email else None,
            kind=kind, status=bounce.status or None, relay_id=bounce.relay_id or None, detail=detail or None,
            suppressed=kind == "hard")
        await self._forward(bounce, raw, delivery)
        return bounce

    async def _delivery(self, delivery_id: int) -> DeliveryRecord | None:
        decisions = self.store.decisions
        found = await decisions.delivery(delivery_id)
        outgoing = self.services.outgoing
        if found is None and outgoing is not None:
            await outgoing.recorder.flush()  # the copy may have left moments ago
            found = await decisions.delivery(delivery_id)
        return found

    async def _forward(self, bounce: Bounce, raw: bytes, delivery: DeliveryRecord | None) -> None:
        account = self.config.account(bounce.account) if bounce.account else None
        target = account.bounce_forward if account else None
        outgoing = self.services.outgoing
        if not target or outgoing is None:
            return
        content = self.forward_message(bounce, raw, target)
        # DKIM-signed for mailto_domain when a key is configured
        (content,) = await outgoing.signer.sign([content])
        try:
            # Null sender: a notice about a bounce must never bounce back itself (RFC 3834).
            await outgoing.upstream.send("", [target], content)
        except UpstreamUnavailable as exc:
            item = OutboxItem(f"bounce-{bounce.id}", bounce.account, "bounce", "", (target,), content)
            await self.store.outbox.enqueue([item], now=self.services.clock.timestamp())
            outgoing.wake_outbox()
            self.log.warning("bounce_forward_queued", bounce=bounce.id, error=str(exc))
        except UpstreamRejected as exc:
            self.log.warning("bounce_forward_refused", bounce=bounce.id, error=exc.reply or str(exc))

    def forward_message(self, bounce: Bounce, raw: bytes, target: str) -> bytes:
        domain = self.config.unsubscribe.mailto_domain
        msg = EmailMessage()
        msg["From"] = f"consent-relay bounces <{FORWARD_SENDER}@{domain}>"
        msg["To"] = target
        msg["Subject"] = f"Bounce {bounce.id} ({bounce.kind}) about mail from account {bounce.account}"
        msg["Date"] = format_datetime(self.services.clock.now())
        msg["Message-ID"] = make_msgid("bounce", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Relay-Bounce"] = str(bounce.id)
        action = "suppressed for this account from now on (suppression.bounced)" if bounce.kind == "hard" else "counted"
        msg.set_content(
            f"A delivery status notification arrived for mail that account {bounce.account} sent through this relay.\n\n"
            f"Recipient:  {bounce.email}\nKind:       {bounce.kind} ({action})\n"
            f"Status:     {bounce.status or '-'}\nDiagnostic: {bounce.diagnostic or '-'}\n"
            f"Relay id:   {bounce.relay_id or '-'}\n\nThe notification is attached as received.\n",
            charset="utf-8",
        )
        msg.add_attachment(raw, maintype="message", subtype="rfc822") if _is_message(raw) else msg.add_attachment(
            raw, maintype="application", subtype="octet-stream", filename="dsn.eml"
        )
        return msg.as_bytes(policy=_FORWARD_POLICY)


def _is_message(raw: bytes) -> bool:
    return b"\n" in raw[:65536] and b":" in raw.split(b"\n", 1)[0]


def bounce_as_dict(bounce: Bounce) -> dict[str, Any]:
    """The JSON shape of one bounce (GET /api/bounces and `bounce list --json`)."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": bounce.id,
        "account": bounce.account,
        "email": bounce.email,
        "kind": bounce.kind,
        "permanent": bounce.permanent,
        "status": bounce.status,
        "action": bounce.action,
        "diagnostic": bounce.diagnostic,
        "relay_id": bounce.relay_id,
        "delivery_id": bounce.delivery_id,
        "source": bounce.source,
        "detail": bounce.detail,
        "received_at": when(bounce.received_at),
    }


__all__ = ["BOUNCED_RULE", "BounceService", "bounce_as_dict"]
