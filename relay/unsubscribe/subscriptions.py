"""What an unsubscribe token stands for, in words a recipient understands (who writes, which topic,
at which scope), and the recipient's subscriptions at the level of the signup, for the public pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence
from urllib.parse import quote

from policies.facts import MARKETING, ConsentRecord, Suppression
from relay.config import AccountConfig, Config

EVERY_TOPIC = "*"


def mask_address(address: str) -> str:
    """`jan@example.net` -> `j**@example.net`: enough for the recipient to recognise, not to harvest;
    the stars never tell the length."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}**@{domain}"


@dataclass(frozen=True)
class Scope:
    """A consent scope in words: one account, or a parent organisation and the brands under it."""

    id: str
    name: str
    at_parent: bool
    brands: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reach:
    """What one (scope, topic) covers: the topic in words ('' = every marketing topic) at a scope."""

    scope: Scope
    topic: str
    title: str

    @property
    def every_topic(self) -> bool:
        return self.topic == EVERY_TOPIC

    @property
    def key(self) -> str:
        """The form value naming this entry (quoted parts: no scope or topic can fake another)."""
        return f"{quote(self.scope.id, safe='')}/{quote(self.topic, safe='')}"


@dataclass(frozen=True)
class Sender:
    """Who writes: the account a token's mail came from, when the token tells (it names the consent's
    scope and topic, and a parent's topic may be sent by one brand only), else the parent itself."""

    name: str
    account: AccountConfig | None
    legal_line: str = ""


@dataclass(frozen=True)
class Entry:
    """One line of the preferences page: a topic at a scope, still received or stopped since when."""

    reach: Reach
    stopped_at: datetime | None = None
    stopped: bool = False


class Describer:
    """Turns scopes and topics of the config into words; pure (no store, no clock)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def scope(self, scope_id: str) -> Scope:
        account = self.config.account(scope_id)
        if account is not None:
            return Scope(scope_id, account.display_name, at_parent=False)
        under = [a for a in self.config.accounts if a.parent == scope_id]
        if not under:  # a scope no account names any more (mail sent before a config change)
            return Scope(scope_id, scope_id, at_parent=False)
        name = next((a.parent_name for a in under if a.parent_name), scope_id)
        return Scope(scope_id, name, at_parent=True, brands=tuple(a.display_name for a in under))

    def accounts_of(self, scope_id: str) -> list[AccountConfig]:
        return [a for a in self.config.accounts if a.id == scope_id or a.parent == scope_id]

    def marketing_topics(self, scope_id: str) -> list[str]:
        topics: dict[str, None] = {}
        for account in self.accounts_of(scope_id):
            for stream in account.streams:
                if stream.kind == MARKETING:
                    topics.setdefault(stream.topic)
        return list(topics)

    def title(self, topic: str, prefer: AccountConfig | None = None) -> str:
        if topic == EVERY_TOPIC:
            return ""
        accounts = ([prefer] if prefer else []) + list(self.config.accounts)
        for account in accounts:
            for stream in account.streams:
                if stream.kind == MARKETING and stream.topic == topic:
                    return stream.display_title
        return topic

    def reach(self, scope_id: str, topic: str, prefer: AccountConfig | None = None) -> Reach:
        return Reach(self.scope(scope_id), topic, self.title(topic, prefer))

    def sender(self, scope_id: str, topic: str) -> Sender:
        account = self.config.account(scope_id)
        if account is None:
            sending = [
                a
                for a in self.accounts_of(scope_id)
                if any(s.kind == MARKETING and topic in (EVERY_TOPIC, s.topic) for s in a.streams)
            ]
            account = sending[0] if len(sending) == 1 else None
        if account is None:
            return Sender(self.scope(scope_id).name, None)
        legal = ", ".join(p for p in (account.legal_name, account.postal_address) if p)
        return Sender(account.display_name, account, legal)

    def scopes_in_view(self, scope_id: str, sender: Sender) -> list[str]:
        """The scopes whose consents the preferences page shows: the sending account's own and its
        parent's (the levels at which this recipient can have signed up), or the token's scope."""
        if sender.account is None:
            return [scope_id]
        scopes = [sender.account.id] + ([sender.account.parent] if sender.account.parent else [])
        return scopes if scope_id in scopes else scopes + [scope_id]

    def expand(self, scope_id: str, topic: str, prefer: AccountConfig | None) -> list[Reach]:
        """A '*' consent covers every marketing topic of its scope: one entry each, so each can stop."""
        if topic != EVERY_TOPIC:
            return [self.reach(scope_id, topic, prefer)]
        topics = self.marketing_topics(scope_id)
        return [self.reach(scope_id, t, prefer) for t in topics] or [self.reach(scope_id, EVERY_TOPIC, prefer)]

    def parent_of(self, scope_id: str) -> str | None:
        account = self.config.account(scope_id)
        return account.parent if account is not None else None

    def entries(
        self,
        scope_id: str,
        topic: str,
        sender: Sender,
        consents: Sequence[ConsentRecord],
        suppressions: Sequence[Suppression],
    ) -> list[Entry]:
        """Every topic the recipient holds (or held) consent for in view, and the token's own."""
        # The mail's own topic first, then the account's signups before the parent's, by title.
        reaches: dict[tuple[str, str], Reach] = {}
        held = [r for record in consents for r in self.expand(record.scope, record.topic, sender.account)]
        held.sort(key=lambda r: (r.scope.at_parent, r.scope.name, r.every_topic, r.title.casefold()))
        for reach in self.expand(scope_id, topic, sender.account) + held:
            reaches.setdefault((reach.scope.id, reach.topic), reach)
        entries = []
        for (scope, entry_topic), reach in reaches.items():
            chain = {scope, self.parent_of(scope)}
            blocking = [
                s for s in suppressions
                if s.scope in chain and s.topic in (entry_topic, EVERY_TOPIC)
            ]
            covering = [c for c in consents if c.scope == scope and c.topic in (entry_topic, EVERY_TOPIC)]
            active_consent = any(c.revoked_at is None for c in covering)
            if blocking:
                when = min((s.created_at for s in blocking if s.created_at), default=None)
                entries.append(Entry(reach, when, stopped=True))
            elif covering and not active_consent:
                when = max((c.revoked_at for c in covering if c.revoked_at), default=None)
                entries.append(Entry(reach, when, stopped=True))
            else:
                entries.append(Entry(reach))
        return entries
