"""What a marketing copy carries of one-click unsubscribe (docs/SPEC.md §6): its /u/TOKEN URL, its list
headers (List-Unsubscribe with the unsubscribe+TOKEN@ address, List-Unsubscribe-Post, List-Id) and the
token of its VERP bounce address. relay.engine.copies asks for them through its CopyLinks protocol."""

from __future__ import annotations

from dataclasses import dataclass

from policies.facts import MessageFacts, RecipientFacts
from policies.rules.consent import covering_consent
from relay.config import Config
from relay.unsubscribe.tokens import MAILTO_PREFIX, TokenCodec


@dataclass(frozen=True)
class Subscription:
    """Where a recipient's consent for this copy lives: what an unsubscribe withdraws."""

    scope: str
    topic: str


def subscription_for(facts: MessageFacts, rcpt: RecipientFacts) -> Subscription:
    record = covering_consent(facts, rcpt)
    if record is not None:
        return Subscription(record.scope, record.topic)
    assert facts.stream is not None
    return Subscription(facts.account.id, facts.stream.topic)


def list_headers(config: Config, topic: str, account: str, url: str, mailto_token: str) -> list[tuple[str, str]]:
    """The list headers of one marketing copy; List-Id names the stream's topic (one per subscription)."""
    domain = config.unsubscribe.mailto_domain
    headers = [
        ("List-Unsubscribe", f"<{url}>, <mailto:{MAILTO_PREFIX}{mailto_token}@{domain}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("List-Id", f"<{_label(topic)}.{_label(account)}.{domain}>"),
    ]
    if config.unsubscribe.csa_complaints:
        headers.append(("X-CSA-Complaints", config.unsubscribe.csa_complaints))
    return headers


def _label(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in text.lower()).strip("-")
    return cleaned or "all"


class CopyLinks:
    """relay.engine.copies.CopyLinks, made with the relay's token codec."""

    def __init__(self, config: Config, codec: TokenCodec) -> None:
        self.config = config
        self.codec = codec
        self.base_url = config.http.public_base_url.rstrip("/")

    def unsubscribe(
        self, facts: MessageFacts, rcpt: RecipientFacts, delivery_id: int, issued: int
    ) -> tuple[str, list[tuple[str, str]]]:
        assert facts.stream is not None
        sub = subscription_for(facts, rcpt)
        url = f"{self.base_url}/u/{self.codec.issue(sub.scope, sub.topic, rcpt.address, issued)}"
        return url, list_headers(self.config, facts.stream.topic, facts.account.id, url, self.codec.issue_mailto(delivery_id))

    def bounce_token(self, delivery_id: int) -> str:
        return self.codec.issue_bounce(delivery_id)
