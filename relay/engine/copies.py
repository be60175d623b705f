"""Build what goes upstream: per-recipient marketing copies (list headers, unsubscribe URL in the
body), one copy for transactional mail; the stream header removed, the relay id added; every copy
DKIM-signed last."""

from __future__ import annotations

from typing import Mapping, Sequence

from policies.facts import MessageFacts
from policies.findings import ReliedConsent
from relay.config import Config
from relay.delivery.carrier import Copy
from relay.delivery.personalize import prepare, prepend_header, strip_header
from relay.engine.pipeline import STREAM_HEADER, IdAllocator
from relay.engine.signing import CopySigner
from relay.engine.transaction import Transaction
from relay.unsubscribe.feature import list_headers, subscription_for
from relay.unsubscribe.tokens import TokenCodec

# Names the transaction a copy came from: a feedback report quoting it maps back to the delivery.
RELAY_ID_HEADER = "X-Relay-Id"
BOUNCE_PREFIX = "bounce+"  # the local part of a VERP envelope sender: bounce+ID@mailto_domain


def with_relay_id(raw: bytes, relay_id: str, *drop: str) -> bytes:
    """`raw` with one X-Relay-Id field first (an application's own is dropped: only ours maps) and
    without the fields `drop`, in one pass over the header block."""
    return prepend_header(strip_header(raw, RELAY_ID_HEADER, *drop), RELAY_ID_HEADER, relay_id)


class CopyMaker:
    def __init__(self, config: Config, codec: TokenCodec | None, signer: CopySigner, ids: IdAllocator) -> None:
        self.config = config
        self.codec = codec
        self.signer = signer
        self.ids = ids
        self.base_url = config.http.public_base_url.rstrip("/")

    async def __call__(
        self,
        txn: Transaction,
        facts: MessageFacts,
        relied_on: Mapping[str, ReliedConsent],
        raw: bytes,
        recipients: Sequence[str],
    ) -> list[Copy]:
        raw = with_relay_id(raw, txn.relay_id, STREAM_HEADER)
        stream = facts.stream
        if stream is None or not stream.is_marketing or self.codec is None:
            (signed,) = await self.signer.sign([raw])
            if self.codec is None or stream is None or not self.config.bounces.verp_transactional or facts.null_sender:
                return [Copy(tuple(recipients), signed)]
            # verp_transactional: the same bytes, one envelope sender per recipient (docs/SPEC.md §15).
            return [Copy((rcpt,), signed, await self._verp(txn, rcpt)) for rcpt in recipients]
        issued = int(facts.now.timestamp())
        template = prepare(raw, placeholder=self.config.unsubscribe.placeholder)  # parse once, render per recipient
        rendered = []
        senders: list[str | None] = []
        verp = self.config.bounces.verp
        domain = self.config.unsubscribe.mailto_domain
        for rcpt in recipients:
            sub = subscription_for(facts, relied_on.get(rcpt))
            delivery_id = await self._delivery_id(txn, rcpt)
            url = f"{self.base_url}/u/{self.codec.issue(sub.scope, sub.topic, rcpt, issued)}"
            headers = list_headers(self.config, stream.topic, facts.account.id, url, self.codec.issue_mailto(delivery_id))
            rendered.append(template.render(headers=headers, url=url))
            # VERP: a bounce names its delivery, whatever the remote MTA writes in it (docs/SPEC.md §15).
            senders.append(f"{BOUNCE_PREFIX}{self.codec.issue_bounce(delivery_id)}@{domain}" if verp else None)
        signed = await self.signer.sign(rendered)  # all copies in one trip to the helper
        return [Copy((rcpt,), copy, sender) for rcpt, copy, sender in zip(recipients, signed, senders)]

    async def _delivery_id(self, txn: Transaction, rcpt: str) -> int:
        delivery_id = txn.delivery_ids.get(rcpt) or await self.ids.take()
        txn.delivery_ids[rcpt] = delivery_id
        return delivery_id

    async def _verp(self, txn: Transaction, rcpt: str) -> str:
        assert self.codec is not None
        token = self.codec.issue_bounce(await self._delivery_id(txn, rcpt))
        return f"{BOUNCE_PREFIX}{token}@{self.config.unsubscribe.mailto_domain}"
