"""The one place a relay process is wired together from its config: `build_relay` makes every part
and hands each its parts in its constructor. `serve` (relay.app.Relay), the CLI commands that
deliver (quarantine release) and the tests all start here.

A message's way through the parts, by the calls: smtp_handler.RelayHandler → Pipeline.at_mail /
at_rcpt / at_data → each Feature.message_facts → Engine.message (maybe in the Helper) →
Pipeline._carry_out → copies.CopyMaker (list headers, VERP, CopySigner) → delivery.deliver
(Upstream, else the outbox that OutboxWorker retries) → DecisionRecorder."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from policies.engine import Engine
from policies.registry import ALL_RULES
from relay.config import Config, helper_enabled
from relay.consent.signups import ConfirmTokens, SignupService
from relay.delivery.dkim import DkimSigner
from relay.delivery.dkim_keys import load_configured_keys
from relay.delivery.outbox import DeliveredHook, OutboxBell, OutboxWorker
from relay.delivery.upstream import Upstream
from relay.engine.copies import CopyMaker
from relay.engine.decisions import DecisionRecorder
from relay.engine.helper import Helper, Offload
from relay.engine.malware_scan import MalwareScan
from relay.engine.pipeline import IdAllocator, Pipeline, new_relay_id
from relay.engine.signing import CopySigner
from relay.events.webhooks import WebhooksFeature
from relay.engine.feature import Feature
from relay.feedback.bounces_feature import BouncesFeature
from relay.feedback.complaints_feature import ComplaintsFeature
from relay.http.events import EventsFeature
from relay.http.signups import SignupsFeature
from relay.metrics import Metrics
from relay.outgoing import Outgoing
from relay.quarantine.service import QuarantineFeature
from relay.services import Clock, Services, build_profile
from relay.store import open_store_for
from relay.unsubscribe.feature import UnsubscribeFeature, unsubscribe
from relay.unsubscribe.links import CopyLinks
from relay.unsubscribe.tokens import TokenCodec
from relay.web.recipient import RecipientPages


@dataclass(frozen=True)
class RelayParts:
    """Everything one relay process runs, built but not started (nothing is connected yet)."""

    config: Config
    services: Services
    upstream: Upstream
    recorder: DecisionRecorder
    signer: CopySigner
    outbox: OutboxWorker
    pipeline: Pipeline
    features: tuple[Feature, ...]
    helper: Helper | None  # started by relay.app.Relay when [smtp] helper_process is on

    async def close(self) -> None:
        """Close what a command that did not serve may have used (a serving Relay stops its own)."""
        for feature in self.features:
            await feature.close()
        await self.recorder.close()
        await self.upstream.close()


def build_relay(
    config: Config, *, metrics: Metrics | None = None, clock: Clock | None = None, deadline_checks: bool = True
) -> RelayParts:
    """All parts of one relay process. `deadline_checks`: this process runs the complaints' deadline
    check (with [smtp] workers = N, only the worker that serves HTTP does)."""
    metrics = metrics or Metrics()
    clock = clock or Clock()
    store = open_store_for(config.store)
    engine = Engine(ALL_RULES, build_profile(config))
    upstream = Upstream(config.upstream, metrics, local_hostname=config.smtp.hostname)
    recorder = DecisionRecorder(
        store.decisions, frozenset(a.id for a in config.accounts if any("delivered" in h.events for h in a.webhooks))
    )
    dkim = DkimSigner(load_configured_keys(config))
    helper = None
    if helper_enabled(config.smtp):
        # The helper names DKIM keys by their position in this list (relay.engine.signing).
        setup = {"profile": engine.profile, "dkim_keys": [k.pem() for k in dkim.keys]}
        helper = Helper(setup, on_restart=metrics.helper_restarts.inc)
    offload = Offload(helper)
    signer = CopySigner(dkim, metrics, helper_now=offload.helper_now)
    bell = OutboxBell()
    services = Services(
        config=config, store=store, metrics=metrics, engine=engine, clock=clock,
        outgoing=Outgoing(upstream=upstream, signer=signer, recorder=recorder, wake_outbox=bell.ring),
    )
    delivery_ids = IdAllocator(store.decisions.reserve_ids, "deliveries")

    features: list[Feature] = []
    on_delivered: list[DeliveredHook] = []
    secrets = config.unsubscribe.secrets
    codec = TokenCodec(secrets) if secrets else None
    if codec is not None:
        features.append(UnsubscribeFeature(services, codec, recorder, RecipientPages(services, codec, unsubscribe)))
        features.append(BouncesFeature(services, codec))
        signups = SignupService(
            services, ConfirmTokens(secrets), signer, new_relay_id=new_relay_id, wake_outbox=bell.ring,
            delivery_ids=delivery_ids.take, bounce_codec=codec,
        )
        features.append(SignupsFeature(signups))
        on_delivered.append(signups.outbox_delivered)  # a confirmation mail's signup notes its delivery
    features.append(ComplaintsFeature(services, deadline_checks=deadline_checks))
    features.append(QuarantineFeature(services))
    features.append(EventsFeature(services))
    features.append(WebhooksFeature(services))
    if config.malware.clamd:
        features.append(MalwareScan(config.malware.clamd, config.malware))

    outbox = OutboxWorker(store.outbox, upstream, config.outbox, metrics, clock, bell=bell, on_delivered=on_delivered)
    pipeline = Pipeline(
        services, upstream, recorder,
        copies=CopyMaker(config, CopyLinks(config, codec) if codec else None, signer, delivery_ids),
        delivery_ids=delivery_ids,
        wake_outbox=bell.ring,
        offload=offload,
        features=features,
    )
    return RelayParts(
        config=config, services=services, upstream=upstream, recorder=recorder, signer=signer, outbox=outbox,
        pipeline=pipeline, features=tuple(features), helper=helper,
    )


@asynccontextmanager
async def opened_relay(config: Config) -> AsyncIterator[RelayParts]:
    """The parts with their store open, for a CLI command that delivers without serving."""
    parts = build_relay(config, deadline_checks=False)
    await parts.services.store.open()
    try:
        yield parts
    finally:
        try:
            await parts.close()
        finally:
            await parts.services.store.close()
