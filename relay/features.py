"""Install the optional parts of a relay process: consent bookkeeping, unsubscribe and DKIM copies,
and whatever else a config switches on. Each returns an object the Relay asks for routes and tasks."""

from __future__ import annotations

from typing import Any

from policies.rules.consent import covering_consent
from relay.bounces_feature import BouncesFeature
from relay.complaints_feature import ComplaintsFeature
from relay.copies import CopyMaker
from relay.dkim import DkimSigner
from relay.dkim_keys import load_configured_keys
from relay.http_events import EventsFeature
from relay.webhooks import WebhooksFeature
from relay.http_signups import SignupsFeature
from relay.quarantine_service import QuarantineFeature
from relay.signing import CopySigner
from relay.unsubscribe import UnsubscribeFeature
from relay.unsubscribe_tokens import TokenCodec


async def install(relay: Any) -> list[Any]:
    config = relay.config
    features: list[Any] = []
    relay.pipeline.covering_consent = covering_consent
    codec = TokenCodec(config.unsubscribe.secrets) if config.unsubscribe.secrets else None
    relay.copy_signer = CopySigner(DkimSigner(load_configured_keys(config)), relay.services.metrics)
    relay.services.signer = relay.copy_signer  # complaint and bounce notices are signed for mailto_domain
    relay.pipeline.copy_builder = CopyMaker(config, codec, relay.copy_signer, relay.pipeline.delivery_ids)
    if codec is not None:
        features.append(UnsubscribeFeature(relay, codec))
        features.append(BouncesFeature(relay, codec))
        if getattr(relay, "outbox", None) is not None:  # a serving relay, not the CLI's release stand-in
            features.append(SignupsFeature(relay, config.unsubscribe.secrets))
    features.append(ComplaintsFeature(relay))
    features.append(QuarantineFeature(relay.services))
    features.append(EventsFeature(relay.services))
    features.append(WebhooksFeature(relay.services))
    if config.malware.clamd:
        features.append(MalwareScan(relay))
    return features


class MalwareScan:
    """`[malware] clamd`: every message is scanned; the verdict reaches content.malware as a fact."""

    def __init__(self, relay: Any) -> None:
        from relay.clamd import Clamd

        config = relay.config.malware
        self.clamd = Clamd(config.clamd, config.clamd_timeout)
        self.on_unavailable = config.clamd_unavailable
        self.log = relay.log
        relay.pipeline.extra_facts.append(self.scan)

    async def scan(self, txn: Any, message: Any) -> dict[str, object]:
        from relay.errors import ScannerUnavailable

        try:
            return {"clamd_result": await self.clamd.scan(message.raw)}
        except ScannerUnavailable as exc:
            if self.on_unavailable == "pass":
                self.log.warning("clamd_unavailable_passing", relay_id=txn.relay_id, error=str(exc))
                return {}
            raise
