"""Build what goes upstream: per-recipient marketing copies (list headers, unsubscribe URL in the
body), one copy for transactional mail; the stream header removed, the relay id added; every copy
DKIM-signed last. Copies are made as they are carried, a window at a time: a message to 1,000
recipients holds COPY_WINDOW copies in memory, not 1,000."""

from __future__ import annotations

from typing import AsyncIterator, Mapping, Protocol, Sequence

from policies.facts import MessageFacts
from policies.findings import ReliedConsent
from relay.config import Config
from relay.delivery.carrier import Copy
from relay.delivery.dkim import SplitMessage
from relay.delivery.personalize import CopyTemplates, prepend_header, strip_header
from relay.delivery.smtp_client import wire_ready
from relay.engine.pipeline import STREAM_HEADER, IdAllocator
from relay.engine.signing import CopySigner
from relay.engine.transaction import Transaction

# Names the transaction a copy came from: a feedback report quoting it maps back to the delivery.
RELAY_ID_HEADER = "X-Relay-Id"
BOUNCE_PREFIX = "bounce+"  # the local part of a VERP envelope sender: bounce+ID@mailto_domain
# Per-recipient copies rendered and signed together (one trip to the helper) before they are
# carried: enough to amortise the trip, few enough that memory follows the message's size.
COPY_WINDOW = 32


def with_relay_id(raw: bytes, relay_id: str, *drop: str) -> bytes:
    """`raw` with one X-Relay-Id field first (an application's own is dropped: only ours maps) and
    without the fields `drop`, in one pass over the header block."""
    return prepend_header(strip_header(raw, RELAY_ID_HEADER, *drop), RELAY_ID_HEADER, relay_id)


class CopyLinks(Protocol):
    """What a copy carries of the unsubscribe machinery (relay.unsubscribe.links.CopyLinks, handed in by
    relay.assembly when [unsubscribe] has secrets): the engine never imports the feature, which records
    through the engine."""

    def unsubscribe(
        self, facts: MessageFacts, rcpt: str, relied: ReliedConsent | None, delivery_id: int, issued: int
    ) -> tuple[str, list[tuple[str, str]]]:
        """A marketing copy's one-click URL (/u/TOKEN, withdrawing the consent `relied` on) and its
        list headers."""
        ...

    def bounce_token(self, delivery_id: int) -> str:
        """The token of a copy's VERP envelope sender, bounce+TOKEN@mailto_domain."""
        ...


class CopyMaker:
    def __init__(self, config: Config, links: CopyLinks | None, signer: CopySigner, ids: IdAllocator) -> None:
        self.config = config
        self.links = links
        self.signer = signer
        self.ids = ids
        self.templates = CopyTemplates()  # a campaign's messages share their body: parsed once

    async def __call__(
        self,
        txn: Transaction,
        facts: MessageFacts,
        relied_on: Mapping[str, ReliedConsent],
        raw: bytes,
        recipients: Sequence[str],
    ) -> AsyncIterator[Copy]:
        """The copies, made as the caller takes them (relay.delivery.carrier.deliver)."""
        stream = facts.stream
        if stream is None or not stream.is_marketing or self.links is None:
            raw = with_relay_id(raw, txn.relay_id, STREAM_HEADER)
            (signed,) = await self.signer.sign([raw])
            if self.links is None or stream is None or not self.config.bounces.verp_transactional or facts.null_sender:
                yield Copy(tuple(recipients), signed)
                return
            # verp_transactional: the same bytes, one envelope sender per recipient (docs/SPEC.md §15).
            for rcpt in recipients:
                yield Copy((rcpt,), signed, await self._verp(txn, rcpt))
            return
        issued = int(facts.now.timestamp())
        # Parsed once (the body once for a campaign), rendered per recipient: with_relay_id's message.
        template = self.templates.prepare(
            raw,
            placeholder=self.config.unsubscribe.placeholder,
            first=(RELAY_ID_HEADER, txn.relay_id),
            drop=(RELAY_ID_HEADER, STREAM_HEADER),
        )
        verp = self.config.bounces.verp
        domain = self.config.unsubscribe.mailto_domain
        for start in range(0, len(recipients), COPY_WINDOW):
            window = recipients[start : start + COPY_WINDOW]
            rendered: list[bytes | SplitMessage] = []
            senders: list[str | None] = []
            ready: list[bytes | None] = []  # a copy that needs no dot-stuffing (CopyTemplate.render_wire)
            for rcpt in window:
                delivery_id = await self._delivery_id(txn, rcpt)
                url, headers = self.links.unsubscribe(facts, rcpt, relied_on.get(rcpt), delivery_id, issued)
                copy, copy_ready = template.render_wire(headers=headers, url=url)
                # The signer takes the copy's fields from the template instead of reading them again.
                rendered.append(copy.message if copy.fields is None else SplitMessage(*copy))
                ready.append(copy.message if copy_ready else None)
                # VERP: a bounce names its delivery, whatever the remote MTA writes in it (docs/SPEC.md §15).
                senders.append(f"{BOUNCE_PREFIX}{self.links.bounce_token(delivery_id)}@{domain}" if verp else None)
            signed = await self.signer.sign(rendered)  # the window's copies in one trip to the helper
            del rendered
            # Still ready signed: the signature fields go before the copy (wire_ready holds of a join
            # when it holds of each piece).
            wire = [m is not None and s.endswith(m) and wire_ready(s[: len(s) - len(m)]) for s, m in zip(signed, ready)]
            del ready
            for rcpt, copy, sender, copy_ready in zip(window, signed, senders, wire):
                yield Copy((rcpt,), copy, sender, copy_ready)

    async def _delivery_id(self, txn: Transaction, rcpt: str) -> int:
        delivery_id = txn.delivery_ids.get(rcpt) or await self.ids.take()
        txn.delivery_ids[rcpt] = delivery_id
        return delivery_id

    async def _verp(self, txn: Transaction, rcpt: str) -> str:
        assert self.links is not None
        token = self.links.bounce_token(await self._delivery_id(txn, rcpt))
        return f"{BOUNCE_PREFIX}{token}@{self.config.unsubscribe.mailto_domain}"
