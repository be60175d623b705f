"""Small builders for message-stage tests: a compliant account, stream, message and facts."""

from __future__ import annotations

import tomllib
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Mapping

from policies.engine import Engine
from policies.facts import AccountFacts, MessageFacts, StreamFacts
from policies.findings import Verdict
from policies.message import parse_message
from policies.profiles import load_profile
from policies.registry import ALL_RULES

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
CORPUS = Path(__file__).resolve().parent.parent / "corpus"

SHOP = AccountFacts(
    id="shop",
    name="Shop",
    domains=frozenset({"shop.example"}),
    legal_name="Shop B.V.",
    postal_address="Keizersgracht 1, 1015 AA Amsterdam",
    registration_number="12345678",
)
NEWSLETTER = StreamFacts("newsletter", "marketing", "newsletter")
ORDERS = StreamFacts("orders", "transactional", "orders")

FOOTER_TEXT = "Shop B.V. | Keizersgracht 1, 1015 AA Amsterdam | KvK 12345678"
FOOTER_HTML = (
    '<p style="font-size:11px;color:#777">Shop B.V.<br>Keizersgracht 1<br>1015 AA Amsterdam<br>'
    "KvK 12345678</p>"
    '<p><a href="{{unsubscribe_url}}">Afmelden</a></p>'
)


def mail(
    *,
    subject: str = "Nieuw binnen: de zomercollectie",
    sender: str = "Shop <news@shop.example>",
    text: str | None = "Beste klant,\n\nDe zomercollectie is binnen.\n\n"
    + FOOTER_TEXT
    + "\nAfmelden: {{unsubscribe_url}}\n",
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
) -> bytes:
    """A well-formed message; defaults satisfy every identity, opt-out and content rule."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "anna@example.nl"
    msg["Subject"] = subject
    msg["Date"] = "Sun, 15 Mar 2026 12:00:00 +0100"
    msg["Message-ID"] = "<1@shop.example>"
    for name, value in (headers or {}).items():
        msg[name] = value
    if text is not None:
        msg.set_content(text)
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def facts(
    raw: bytes | None = None,
    *,
    account: AccountFacts = SHOP,
    stream: StreamFacts | None = NEWSLETTER,
    params: Mapping[str, Any] | None = None,
    profile: str = "strict",
    mail_from: str = "news@shop.example",
) -> MessageFacts:
    merged = dict(load_profile(profile).params)
    merged.update(params or {})
    return MessageFacts(
        account=account,
        mail_from=mail_from,
        now=NOW,
        params=merged,
        stream=stream,
        message=parse_message(mail() if raw is None else raw),
    )


def evaluate(message_facts: MessageFacts, profile: str = "strict") -> Verdict:
    """Every session and message rule through the one engine, as the relay does at end of DATA."""
    return Engine(ALL_RULES, load_profile(profile)).message(message_facts, ())


def corpus_accounts() -> dict[str, AccountFacts]:
    data = tomllib.loads((CORPUS / "accounts.toml").read_text("utf-8"))
    accounts = {}
    for entry in data["accounts"]:
        accounts[entry["id"]] = AccountFacts(
            id=entry["id"],
            name=entry.get("name", ""),
            domains=frozenset(entry.get("domains", ())),
            legal_name=entry.get("legal_name", ""),
            postal_address=entry.get("postal_address", ""),
            registration_number=entry.get("registration_number", ""),
            allow_adult=entry.get("allow_adult", False),
        )
    return accounts


def corpus_facts(path: Path, accounts: Mapping[str, AccountFacts] | None = None) -> MessageFacts:
    """Facts for a corpus file: the account is the one owning the From domain, the stream marketing."""
    raw = path.read_bytes()
    message = parse_message(raw)
    accounts = accounts or corpus_accounts()
    domain = message.from_addresses[0].rpartition("@")[2].lower() if message.from_addresses else ""
    account = next(a for a in accounts.values() if domain in a.domains)
    return MessageFacts(
        account=account,
        mail_from=message.from_addresses[0],
        now=NOW,
        params=load_profile("strict").params,
        stream=NEWSLETTER,
        message=message,
    )
