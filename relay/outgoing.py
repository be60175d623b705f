"""How the relay's own mail (complaint and bounce notices) leaves a running relay process.

Typed by what the notices need of the parts, not by the parts' classes: `relay.assembly` hands in
the delivery's Upstream, the engine's CopySigner and DecisionRecorder, and this module (imported by
`relay.services`, which everything imports) imports neither package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


class Sender(Protocol):
    """One upstream transaction (relay.delivery.upstream.Upstream.send): raises UpstreamUnavailable,
    UpstreamUncertain or UpstreamRejected as that does."""

    async def send(self, mail_from: str, recipients: Sequence[str], content: bytes) -> object: ...


class Signer(Protocol):
    """DKIM-signs messages for their From domains (relay.engine.signing.CopySigner)."""

    async def sign(self, messages: Sequence[bytes]) -> list[bytes]: ...


class Flushable(Protocol):
    """Writes what it holds in its batch now (relay.engine.decisions.DecisionRecorder)."""

    async def flush(self) -> None: ...


@dataclass(frozen=True)
class Outgoing:
    """The running relay's upstream connection and DKIM signer (mailto_domain's key), the outbox's
    bell for a copy queued for retry, and the recorder whose batch may still hold a copy that left
    moments ago. A CLI command without a relay has none: it sends unsigned over its own connection."""

    upstream: Sender
    signer: Signer
    recorder: Flushable
    wake_outbox: Callable[[], None]
