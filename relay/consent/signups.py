"""Hosted double opt-in (docs/SPEC.md §18): a signup request becomes a DKIM-signed confirmation mail in the
outbox; the recipient's confirmation becomes a consent that answers every CSA complaint question."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import ipaddress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from typing import Any, Awaitable, Callable, Mapping, Sequence

from policies.consent_rows import InvalidRow, parse_consent_row, parse_email
from policies.facts import ConsentRecord
from relay.config import AccountConfig, Config, StreamConfig
from relay.consent.imports import ConsentRefused, active_record_rules, check_record
from relay.engine.copies import BOUNCE_PREFIX
from relay.engine.signing import CopySigner
from relay.errors import NotFound
from relay.event_types import SIGNUP_CONFIRMED
from relay.log import get_logger, recipient_label
from relay.services import Services
from relay.store.records import DeliveryRecord, Event, OutboxItem, iso
from relay.store.signups import Signup
from relay.unsubscribe.tokens import TokenCodec
from relay.templating import render

LANGUAGES = ("nl", "en", "de")
RELAY_ID_PREFIX = "signup-"  # the relay ids of confirmation mails: the outbox hook knows its own
METHOD = "web_form"  # the CSA questionnaire's "method" of a hosted signup
MAX_STATEMENT = 2000
MAX_FREQUENCY = 200

# --- tokens: PUBLIC/c/TOKEN -------------------------------------------------------------------

_TOKEN_VERSION = 1
_TOKEN_MAC_BYTES = 16
_TOKEN_CONTEXT = b"consent-relay signup confirm v1\x00"  # a MAC here never verifies as an unsubscribe MAC


class ConfirmTokens:
    """Opaque, URL-safe: version, signup id and a truncated HMAC-SHA256. The first secret signs, all verify."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        self._secrets = tuple(secrets)

    def issue(self, signup_id: int) -> str:
        payload = bytes((_TOKEN_VERSION,)) + signup_id.to_bytes(8, "big")
        return base64.urlsafe_b64encode(payload + self._mac(self._secrets[0], payload)).rstrip(b"=").decode("ascii")

    def verify(self, token: str) -> int | None:
        if not isinstance(token, str) or len(token) != 34:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "==")
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 25 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None
        payload, mac = raw[:9], raw[9:]
        ok = False
        for secret in self._secrets:
            ok |= hmac.compare_digest(self._mac(secret, payload), mac)
        if not ok or payload[0] != _TOKEN_VERSION:
            return None
        return int.from_bytes(payload[1:], "big")

    @staticmethod
    def _mac(secret: bytes, payload: bytes) -> bytes:
        return hmac.new(secret, _TOKEN_CONTEXT + payload, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES]


# --- the request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignupRequest:
    email: str
    stream: str
    statement: str
    source_url: str
    ip: str
    frequency: str
    language: str


class SignupInvalid(ValueError):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


_FIELDS = ("email", "stream", "statement", "source_url", "ip", "frequency", "language")


def parse_signup(body: Mapping[str, Any], account: AccountConfig) -> SignupRequest:
    """Validate a POST /api/signups body for this account (SignupInvalid names the field)."""
    unknown = [k for k in body if k not in _FIELDS and k != "account"]
    if unknown:
        raise SignupInvalid(unknown[0], f"unknown field {unknown[0]!r}")
    values: dict[str, str] = {}
    for name in _FIELDS:
        value = body.get(name, "")
        if not isinstance(value, str):
            raise SignupInvalid(name, f"{name} must be a string")
        values[name] = value.strip()
    for required in ("email", "statement", "source_url", "ip"):
        if not values[required]:
            raise SignupInvalid(required, f"{required} is required")
    try:
        values["email"] = parse_email("email", values["email"])
    except InvalidRow as exc:
        raise SignupInvalid("email", exc.detail) from None
    stream_id = values["stream"] or account.default_stream or ""
    stream = account.stream(stream_id)
    if stream is None or stream.kind != "marketing":
        raise SignupInvalid("stream", f"{stream_id!r} is not a marketing stream of account {account.id!r}")
    values["stream"] = stream.id
    try:
        values["ip"] = ipaddress.ip_address(values["ip"]).compressed
    except ValueError:
        raise SignupInvalid("ip", f"not an IP address: {values['ip'][:60]!r}") from None
    language = (values["language"] or "nl").lower()[:2]
    if language not in LANGUAGES:
        raise SignupInvalid("language", f"language must be one of {', '.join(LANGUAGES)}")
    values["language"] = language
    if len(values["statement"]) > MAX_STATEMENT:
        raise SignupInvalid("statement", f"statement is longer than {MAX_STATEMENT} characters")
    if len(values["frequency"]) > MAX_FREQUENCY:
        raise SignupInvalid("frequency", f"frequency is longer than {MAX_FREQUENCY} characters")
    return SignupRequest(**values)


def consent_of(signup: Signup, confirmed_at: datetime) -> Mapping[str, Any]:
    """The consent a confirmed signup records: every field the CSA complaint procedure asks."""
    return {
        "email": signup.email,
        "scope": signup.scope,
        "topic": signup.topic,
        "basis": "double_opt_in",
        "source": "signup_form",
        "collected_at": signup.requested_at.isoformat(),
        "source_url": signup.source_url,
        "source_ip": signup.signup_ip,
        "confirmed_at": confirmed_at.isoformat(),
        "statement_text": signup.statement,
        "prechecked": False,
        "frequency_disclosed": bool(signup.frequency),
        "informed_at_collection": True,
        "last_interaction_at": confirmed_at.isoformat(),
    }


# --- the confirmation mail ----------------------------------------------------------------------

_MAIL = {
    "nl": {
        "subject": "Bevestig je aanmelding bij {name}",
        "greeting": "Hallo,",
        "asked": "Op {source_url} is dit e-mailadres aangemeld voor e-mail van {name}:",
        "frequency": "Hoe vaak: {frequency}",
        "confirm": "Wil je deze e-mail ontvangen? Bevestig dan je aanmelding:",
        "button": "Aanmelding bevestigen",
        "expires": "De link is {hours} uur geldig.",
        "ignore": "Heb je je niet aangemeld? Dan hoef je niets te doen: zonder bevestiging sturen we je geen e-mail.",
        "sender": "Afzender: {legal_name}, {postal_address}, KvK {registration_number}",
    },
    "en": {
        "subject": "Please confirm your subscription to {name}",
        "greeting": "Hello,",
        "asked": "On {source_url} this address was signed up for e-mail from {name}:",
        "frequency": "How often: {frequency}",
        "confirm": "Do you want to receive these e-mails? Then please confirm:",
        "button": "Confirm subscription",
        "expires": "The link is valid for {hours} hours.",
        "ignore": "Did not sign up? Then there is nothing to do: without a confirmation we will not e-mail you.",
        "sender": "Sender: {legal_name}, {postal_address}, Chamber of Commerce (KvK) {registration_number}",
    },
    "de": {
        "subject": "Bitte bestätigen Sie Ihre Anmeldung bei {name}",
        "greeting": "Guten Tag,",
        "asked": "Auf {source_url} wurde diese Adresse für E-Mails von {name} angemeldet:",
        "frequency": "Wie oft: {frequency}",
        "confirm": "Möchten Sie diese E-Mails erhalten? Dann bestätigen Sie bitte Ihre Anmeldung:",
        "button": "Anmeldung bestätigen",
        "expires": "Der Link ist {hours} Stunden gültig.",
        "ignore": "Sie haben sich nicht angemeldet? Dann müssen Sie nichts tun: ohne Bestätigung senden wir Ihnen keine E-Mails.",
        "sender": "Absender: {legal_name}, {postal_address}, Handelsregister (KvK) {registration_number}",
    },
}


def confirmation_sender(account: AccountConfig, stream: StreamConfig) -> str:
    """The account's template `from`, else the stream's first envelope sender, else info@ its first domain."""
    if account.confirmation is not None and account.confirmation.sender:
        return account.confirmation.sender
    if stream.envelope_from:
        return stream.envelope_from[0]
    return f"info@{account.domains[0]}"


def confirmation_mail(
    account: AccountConfig, stream: StreamConfig, signup: Signup, url: str, *, ttl_hours: float, hostname: str
) -> tuple[str, bytes]:
    """(envelope sender, message) of one confirmation mail, not yet signed."""
    sender = confirmation_sender(account, stream)
    t = {k: v.format(
        name=account.name or account.id, source_url=signup.source_url, frequency=signup.frequency,
        hours=f"{ttl_hours:g}", legal_name=account.legal_name, postal_address=account.postal_address,
        registration_number=account.registration_number,
    ) for k, v in _MAIL[signup.language].items()}
    own = account.confirmation
    subject = own.subject if own is not None and own.subject else t["subject"]
    if own is not None and own.text:
        text = own.text.replace("{{confirm_url}}", url)
        page = own.html.replace("{{confirm_url}}", html.escape(url)) if own.html else ""
    else:
        lines = [t["greeting"], "", t["asked"], f"  \u201c{signup.statement}\u201d"]
        if signup.frequency:
            lines.append(t["frequency"])
        lines += ["", t["confirm"], "", url, "", t["expires"], t["ignore"], "", "-- ", t["sender"]]
        text = "\n".join(lines) + "\n"
        page = render(
            "confirm_mail.html", lang=signup.language, subject=subject, greeting=t["greeting"], asked=t["asked"],
            statement=signup.statement, frequency=t["frequency"] if signup.frequency else "",
            confirm=t["confirm"], url=url, button=t["button"], expires=t["expires"], ignore=t["ignore"], sender=t["sender"],
        )
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr((account.name or account.id, sender))
    msg["To"] = signup.email
    msg["Subject"] = subject
    msg["Date"] = format_datetime(signup.requested_at)
    msg["Message-ID"] = f"<{signup.relay_id}@{hostname}>"
    msg["X-Relay-Id"] = signup.relay_id
    msg.set_content(text, charset="utf-8", cte="quoted-printable")
    if page:
        msg.add_alternative(page, subtype="html", charset="utf-8", cte="quoted-printable")
    msg["Content-Language"] = signup.language  # after the parts: making them moves Content-* headers down
    return sender, msg.as_bytes()


# --- the service ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignupOutcome:
    """What POST /api/signups answers (always 202: the address owner decides, not the caller)."""

    status: str  # sent | throttled | suppressed
    signup_id: int | None = None
    relay_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.signup_id is not None:
            out["id"] = str(self.signup_id)
            out["relay_id"] = self.relay_id
        return out


class AccountBlocked(Exception):
    """The account or stream is paused or suspended."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(f"account {state}" + (f": {reason}" if reason else ""))
        self.state = state


class RateLimited(Exception):
    """Too many signups from one client address."""


def signup_confirmed_event(signup: Signup, at: datetime) -> Event:
    """The `signup_confirmed` event (docs/SPEC.md §17), written with the confirmation: the feed and webhooks carry it."""
    return Event(
        SIGNUP_CONFIRMED, signup.account, at, signup.stream, signup.email, signup.relay_id, signup.message_id, "",
        {"signup": str(signup.id), "scope": signup.scope, "topic": signup.topic, "source_url": signup.source_url},
    )


def emit_signup_confirmed(services: Services, signup: Signup) -> None:
    """The log line of a confirmation; its event was written with it (signup_confirmed_event)."""
    get_logger().info(
        "signup_confirmed", account=signup.account, stream=signup.stream, recipient=recipient_label(signup.email),
        relay_id=signup.relay_id, signup_id=signup.id,
    )


class SignupService:
    def __init__(
        self,
        services: Services,
        tokens: ConfirmTokens,
        signer: CopySigner,
        *,
        new_relay_id: Callable[[], str],
        wake_outbox: Callable[[], None],
        delivery_ids: Callable[[], Awaitable[int]],
        bounce_codec: TokenCodec | None = None,
    ) -> None:
        self.services = services
        self.config: Config = services.config
        self.tokens = tokens
        self.signer = signer
        self.new_relay_id = new_relay_id
        self.wake_outbox = wake_outbox
        self.delivery_ids = delivery_ids
        self.bounce_codec = bounce_codec
        self.base_url = self.config.http.public_base_url.rstrip("/")
        self.log = get_logger()

    def confirm_url(self, signup_id: int) -> str:
        return f"{self.base_url}/c/{self.tokens.issue(signup_id)}"

    async def request(self, account_id: str, req: SignupRequest, *, actor: str) -> SignupOutcome:
        """Validate, rate-limit, check suppressions, and queue one confirmation mail (durably)."""
        account = self.config.account(account_id)
        if account is None:
            raise NotFound(f"unknown account {account_id!r}")
        stream = account.stream(req.stream)
        assert stream is not None
        store, now = self.services.store, self.services.clock.now()
        scopes = account.facts().scopes
        state = await store.accounts.get(account.id)
        if state.state != "active" or stream.id in state.paused_streams:
            # As at SMTP: a paused or suspended account (or stream) sends nothing, confirmation mails included.
            raise AccountBlocked(state.state if state.state != "active" else "paused", state.reason)
        # The consent this signup would record must pass the profile's record rules now, not after the mail.
        draft = Signup(
            0, account.id, req.email, stream.id, scopes[0], stream.topic, req.statement, req.source_url, req.ip,
            req.frequency, req.language, now, "",
        )
        self.check_consent(draft, now)
        # The shared bucket refills `rate_per_minute` per 60 units of `now`: counted in minutes, per hour.
        per_hour = self.config.signups.client_rate_per_hour
        if not await store.rates.take(f"signup:{account.id}:{req.ip}", rate_per_minute=per_hour, now=now.timestamp() / 60):
            self._count(account.id, "rate_limited")
            raise RateLimited(req.ip)
        suppressions = (await store.consent.find_suppressions(scopes, [req.email])).get(req.email, [])
        if any(s.topic in ("*", stream.topic) for s in suppressions):
            self.log.info("signup_suppressed", account=account.id, recipient=recipient_label(req.email))
            self._count(account.id, "suppressed")
            return SignupOutcome("suppressed")
        signup_id = await store.decisions.reserve_ids("signups", 1)
        relay_id = RELAY_ID_PREFIX + self.new_relay_id()
        signup = Signup(
            signup_id, account.id, req.email, stream.id, scopes[0], stream.topic, req.statement, req.source_url,
            req.ip, req.frequency, req.language, now, relay_id, requested_by=actor,
            message_id=f"<{relay_id}@{self.config.smtp.hostname}>",
        )
        sender, raw = confirmation_mail(
            account, stream, signup, self.confirm_url(signup_id),
            ttl_hours=self.config.signups.confirm_ttl_hours, hostname=self.config.smtp.hostname,
        )
        signed = (await self.signer.sign([raw]))[0]
        envelope, delivery_id = sender, None
        if self.bounce_codec is not None and self.config.bounces.verp:
            # VERP as for marketing copies (docs/SPEC.md §15): a hard bounce of the confirmation mail suppresses
            # the address, so a mistyped or dead one is not asked again.
            delivery_id = await self.delivery_ids()
            domain = self.config.unsubscribe.mailto_domain
            envelope = f"{BOUNCE_PREFIX}{self.bounce_codec.issue_bounce(delivery_id)}@{domain}"
        mail = OutboxItem(relay_id, account.id, stream.id, envelope, (req.email,), signed)
        cutoff = now - timedelta(hours=self.config.signups.resend_after_hours)
        if not await store.signups.create(signup, mail, resend_cutoff=cutoff, now=self.services.clock.timestamp()):
            self.log.info("signup_throttled", account=account.id, recipient=recipient_label(req.email))
            self._count(account.id, "throttled")
            return SignupOutcome("throttled")
        if delivery_id is not None:
            # The copy as a delivery (queued until the outbox hands it over): bounces and complaints map to it.
            await store.decisions.record([], [DeliveryRecord(
                delivery_id, relay_id, account.id, stream.id, req.email, "queued", now, signup.message_id,
                scopes[0], stream.topic,
            )])
        self.wake_outbox()
        self._count(account.id, "sent")
        self.log.info("signup_requested", account=account.id, stream=stream.id, relay_id=relay_id,
                      recipient=recipient_label(req.email), signup_id=signup_id)
        return SignupOutcome("sent", signup_id, relay_id)

    def _count(self, account: str, outcome: str) -> None:
        self.services.metrics.signups.labels(account, outcome).inc()

    def check_consent(self, signup: Signup, confirmed_at: datetime) -> ConsentRecord:
        """The consent record of this signup, refused (ConsentRefused) as an imported row would be."""
        try:
            record = parse_consent_row(consent_of(signup, confirmed_at), scopes=(signup.scope,), now=confirmed_at)
        except InvalidRow as exc:
            field = {"source_ip": "ip", "statement_text": "statement"}.get(exc.column, exc.column)
            raise SignupInvalid(field, exc.detail) from None
        profile = self.services.engine.profile
        refusal = check_record(record, profile.params, active_record_rules(profile))
        if refusal is not None:
            raise ConsentRefused(*refusal)
        return record

    async def pending(self, token: str) -> Signup | None:
        """The signup a token names while it may be confirmed (or was): None when forged or expired."""
        signup_id = self.tokens.verify(token)
        if signup_id is None:
            return None
        signup = await self.services.store.signups.get(signup_id)
        if signup is None:
            return None
        if signup.confirmed_at is None:
            ttl = timedelta(hours=self.config.signups.confirm_ttl_hours)
            if self.services.clock.now() >= signup.requested_at + ttl:
                return None
        return signup

    async def confirm(self, token: str, ip: str) -> Signup | None:
        """Record the consent once; a replay answers the first confirmation and records nothing."""
        signup = await self.pending(token)
        if signup is None or signup.confirmed_at is not None:
            return signup
        now = self.services.clock.now()
        store = self.services.store
        record = self.check_consent(signup, now)  # the profile may have changed since the request
        if not await store.signups.confirm(signup.id, now, ip, [signup_confirmed_event(signup, now)]):
            return await store.signups.get(signup.id)  # a concurrent POST won
        await store.consent.upsert_consents([record], now=now)
        confirmed = await store.signups.get(signup.id)
        assert confirmed is not None
        self.log.info("signup_confirmed_recorded", account=signup.account, signup_id=signup.id)
        self._count(signup.account, "confirmed")
        emit_signup_confirmed(self.services, confirmed)
        return confirmed

    async def outbox_delivered(self, item: OutboxItem) -> None:
        if not item.relay_id.startswith(RELAY_ID_PREFIX):
            return
        store, now = self.services.store, self.services.clock.now()
        await store.signups.mail_delivered(item.relay_id, now)
        copies = await store.decisions.deliveries_to(item.rcpt_tos[0], [item.account], limit=20)
        queued = [replace(d, status="delivered", delivered_at=now) for d in copies if d.relay_id == item.relay_id and d.status == "queued"]
        if queued:
            await store.decisions.record([], queued)


def signup_as_dict(signup: Signup) -> dict[str, Any]:
    """One link of the proof chain: the request, its confirmation mail, the confirmation."""
    return {
        "id": str(signup.id),
        "stream": signup.stream,
        "scope": signup.scope,
        "topic": signup.topic,
        "request": {
            "requested_at": iso(signup.requested_at),
            "method": METHOD,
            "source_url": signup.source_url,
            "ip": signup.signup_ip,
            "statement": signup.statement,
            "frequency": signup.frequency,
            "language": signup.language,
            "requested_by": signup.requested_by,
        },
        "mail": {
            "relay_id": signup.relay_id,
            "message_id": signup.message_id,
            "status": signup.mail_status,
            "delivered_at": iso(signup.mail_at),
        },
        "confirmation": (
            {"confirmed_at": iso(signup.confirmed_at), "ip": signup.confirm_ip, "opt_in_type": "double"}
            if signup.confirmed_at is not None
            else None
        ),
    }


__all__ = [
    "AccountBlocked", "ConfirmTokens", "RateLimited", "SignupInvalid", "SignupOutcome", "SignupRequest", "SignupService",
    "confirmation_mail", "emit_signup_confirmed", "parse_signup", "signup_as_dict",
]
