"""Release a quarantined message: deliver it as normal delivery would, skipping only the rules that
held it and never to a recipient suppressed since; audited."""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.facts import MessageFacts, RecipientFacts
from policies.findings import Outcome
from policies.message import parse_message
from relay.config import AccountConfig, StreamConfig
from relay.delivery.carrier import deliver
from relay.engine.pipeline import Pipeline
from relay.engine.transaction import Transaction
from relay.errors import UpstreamUnavailable, UsageError
from relay.store.records import AuditEntry, QuarantineItem


@dataclass
class ReleaseResult:
    delivered: list[str] = field(default_factory=list)
    # (recipient, rule or upstream reply); a message-level reject's rule, then the recipient's own if it has one
    refused: list[tuple[str, str]] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)


async def release_message(pipeline: Pipeline, item: QuarantineItem, *, actor: str, note: str) -> ReleaseResult:
    """Claim the item in the store (held → releasing, so one release wins across processes), deliver
    through the pipeline (the running relay's, or one relay.assembly built for a CLI command), then
    mark it released with its audit entry; if delivery fails it goes back to held."""
    services = pipeline.services
    account = services.config.account(item.account)
    if account is None:
        raise UsageError(f"account {item.account!r} of {item.id} is no longer configured")
    stream_cfg = account.stream(item.stream)
    if stream_cfg is None:
        raise UsageError(f"stream {item.stream!r} of {item.id} is no longer configured")
    store = services.store.quarantine
    claimed = await store.claim_release(item.id, services.clock.now())
    if claimed is None:
        raise UsageError(f"quarantine item {item.id} is not held any more (released, deleted, or being released)")
    try:
        result = await _deliver(pipeline, claimed, account, stream_cfg)
    except BaseException:
        # deliver() tempfails when the upstream accepted nothing (or, as it tells an SMTP client,
        # when the rest could not be queued): held again, for a later release to retry.
        await store.unclaim_release(item.id)
        raise
    audit = AuditEntry(
        actor=actor, action="quarantine.release", target=item.id, note=note,
        detail={"delivered": result.delivered + result.queued, "refused": [list(x) for x in result.refused]},
        at=services.clock.now(),
    )
    if not await store.finish_release(item.id, audit):
        raise UsageError(f"quarantine item {item.id} is not being released any more")
    services.metrics.quarantine_releases.inc()
    services.metrics.quarantine_messages.dec()
    return result


async def _deliver(pipeline: Pipeline, item: QuarantineItem, account: AccountConfig, stream_cfg: StreamConfig) -> ReleaseResult:
    services = pipeline.services
    message = parse_message(item.content)
    base = await pipeline.account_facts(account)
    facts = MessageFacts(
        account=base.account, mail_from=item.mail_from, now=base.now, params=base.params,
        stream=stream_cfg.facts, message=message,
    )
    recipients = list(item.rcpt_tos)
    if stream_cfg.facts.is_marketing:
        rfacts = await pipeline.recipient_facts(account, recipients)
    else:
        rfacts = [RecipientFacts(r) for r in recipients]
    verdict = services.engine.message(facts, rfacts, skip=item.rules)
    result = ReleaseResult()
    if verdict.outcome is Outcome.TEMPFAIL and verdict.deciding is not None:
        # e.g. the account is paused now: not refused for good, so the message stays held.
        raise UsageError(f"{item.id} still held: [{verdict.deciding.rule}] {verdict.deciding.detail}")
    deciding = verdict.deciding
    if verdict.outcome is Outcome.REJECT and deciding is not None and deciding.recipient is None:
        # A message-level reject (the account suspended since the hold, say) refuses every copy, as it
        # refuses the whole message at SMTP time, also when some recipients are refused on their own
        # as well: those are reported with their own rule after the message's.
        result.refused = [
            (r, f"{deciding.rule}, {verdict.refused[r].rule}" if r in verdict.refused else deciding.rule)
            for r in recipients
        ]
        permitted: list[str] = []
    else:
        result.refused = [(r, verdict.refused[r].rule) for r in recipients if r in verdict.refused]
        permitted = [r for r in recipients if r not in verdict.refused]
    txn = Transaction(relay_id=item.relay_id, client_ip="", mail_from=item.mail_from, account=account)
    txn.recipients = recipients
    if permitted:
        await pipeline.reserve_delivery_ids(txn, permitted)
        copies = await pipeline.copies(txn, facts, verdict.relied_on, item.content, permitted)
        report = await deliver(
            pipeline.upstream, services.store.outbox, relay_id=item.relay_id, account=account.id,
            stream=stream_cfg.id, mail_from=item.mail_from, copies=copies, now=services.clock.timestamp(),
        )
        if report.tempfailed:
            raise UpstreamUnavailable(f"release of {item.id} not done: {report.tempfail_reason}")
        result.delivered = list(report.delivered)
        result.queued = list(report.queued)
        result.refused += [(r, reply) for r, reply in report.refused.items()]
        if report.queued:
            pipeline.wake_outbox()
        pipeline.record(
            txn, message, stream_cfg.id, "delivered", list(verdict.findings), recipients,
            delivered=report.delivered + report.queued, relied_on=verdict.relied_on, facts=facts,
            queued=set(report.queued), misses=verdict.misses,
        )
    return result
