"""What a marketing copy carries of one-click unsubscribe (docs/SPEC.md §6): its /u/TOKEN URL, its list
headers (List-Unsubscribe with the unsubscribe+TOKEN@ address, List-Unsubscribe-Post, List-Id) and the
token of its VERP bounce address. relay.engine.copies asks for them through its CopyLinks protocol."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from policies.facts import MessageFacts
from policies.findings import ReliedConsent
from relay.config import Config
from relay.unsubscribe.tokens import MAILTO_PREFIX, TokenCodec


@dataclass(frozen=True)
class Subscription:
    """Where a recipient's consent for this copy lives: what an unsubscribe withdraws."""

    scope: str
    topic: str


def subscription_for(facts: MessageFacts, relied: ReliedConsent | None) -> Subscription:
    """The consent the engine relied on for the copy (Verdict.relied_on), else the account's own
    scope and the stream's topic (no consent covered: a consent rule off or in monitor mode)."""
    if relied is not None:
        return Subscription(relied.scope, relied.topic)
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


@functools.lru_cache(maxsize=1024)  # a stream's topic and its account: the same for every copy
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
        self, facts: MessageFacts, rcpt: str, relied: ReliedConsent | None, delivery_id: int, issued: int
    ) -> tuple[str, list[tuple[str, str]]]:
        assert facts.stream is not None
        sub = subscription_for(facts, relied)
        url = f"{self.base_url}/u/{self.codec.issue(sub.scope, sub.topic, rcpt, issued)}"
        return url, list_headers(self.config, facts.stream.topic, facts.account.id, url, self.codec.issue_mailto(delivery_id))

    def bounce_token(self, delivery_id: int) -> str:
        return self.codec.issue_bounce(delivery_id)
