"""How the relay's own mail (complaint and bounce notices) leaves a running relay process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from relay.delivery.upstream import Upstream
from relay.engine.decisions import DecisionRecorder
from relay.engine.signing import CopySigner


@dataclass(frozen=True)
class Outgoing:
    """The running relay's upstream connection and DKIM signer (mailto_domain's key), the outbox's
    bell for a copy queued for retry, and the recorder whose batch may still hold a copy that left
    moments ago. A CLI command without a relay has none: it sends unsigned over its own connection."""

    upstream: Upstream
    signer: CopySigner
    recorder: DecisionRecorder
    wake_outbox: Callable[[], None]
