"""One transaction from MAIL FROM to the final reply: gather facts (with deadlines), ask the engine,
carry out the decision (refuse, hold, deliver), record it."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace
from typing import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from policies.facts import NOTHING_FOUND, TRANSACTIONAL, AccountFacts, MessageFacts, RecipientFacts, ShellFacts, StreamFacts
from policies.findings import Action, Finding, Outcome, ReliedConsent, Verdict
from policies.message import ParsedMessage, parse_message
from relay import replies
from relay.config import AccountConfig, StreamConfig
from relay.delivery.carrier import Copy, DeliveryReport, deliver
from relay.delivery.upstream import Upstream
from relay.engine.body_walks import BodyWalks
from relay.engine.decisions import DecisionRecorder
from relay.engine.helper import Helper, HelperTimeout, HelperUnavailable, Offload
from relay.engine.retry_memory import RetryMemory
from relay.engine.transaction import Transaction
from relay.errors import ScannerUnavailable, StoreUnavailable
from relay.engine.feature import Feature
from relay.log import get_logger
from relay.metrics import NO_VALUE
from relay.services import Services
from relay.store.records import DecisionRecord, DeliveryRecord, QuarantineItem

STREAM_HEADER = "X-Relay-Stream"
NULL_SENDER_STREAM = "dsn"  # the stream of an account's bounces when it has no transactional stream
_PARSE_IN_THREAD_BYTES = 1 << 20


# Builds the upstream copies of a message that passed: (txn, facts, the verdict's relied_on, raw,
# recipients). relay.engine.copies.CopyMaker: per-recipient marketing copies (each unsubscribe withdraws
# the consent the engine relied on), the stream header removed, DKIM last; made as deliver() takes
# them, so memory follows the message's size, not its recipients.
CopyBuilder = Callable[
    [Transaction, MessageFacts, Mapping[str, ReliedConsent], bytes, Sequence[str]], AsyncIterator[Copy]
]


def new_relay_id() -> str:
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


class Pipeline:
    """SMTP stages in, upstream copies out: at_mail → at_rcpt → at_data → evaluate → _carry_out →
    copies → relay.delivery.carrier.deliver(upstream, outbox) → record."""

    def __init__(
        self,
        services: Services,
        upstream: Upstream,
        recorder: DecisionRecorder,
        *,
        copies: CopyBuilder,
        delivery_ids: IdAllocator,
        wake_outbox: Callable[[], None],
        offload: Offload,
        features: Sequence[Feature] = (),
    ) -> None:
        self.services = services
        self.config = services.config
        self.upstream = upstream
        self.recorder = recorder
        self.log = get_logger()
        self.copies = copies
        self.delivery_ids = delivery_ids
        self.wake_outbox = wake_outbox
        self.offload = offload
        self.features = tuple(features)
        self._feature_named = {f.name: f for f in self.features}
        # Only the features that bring addresses or facts are asked, per recipient and per message.
        self._address_features = tuple(f for f in self.features if _overrides(f, "own_address"))
        self._facts_features = tuple(f for f in self.features if _overrides(f, "message_facts"))
        self.retries = RetryMemory()  # recipients a failed attempt delivered to: its retry skips them
        self.body_walks = BodyWalks()  # a campaign's body walked once for the content rules
        self._account_facts: dict[tuple[str, str, str, frozenset[str]], tuple[AccountConfig, AccountFacts]] = {}

    new_relay_id = staticmethod(new_relay_id)

    @property
    def helper(self) -> Helper | None:
        return self.offload.helper

    @property
    def offload_from(self) -> int:
        return self.offload.offload_from

    @offload_from.setter
    def offload_from(self, value: int) -> None:  # tests set 1: even a lone transaction goes to the helper
        self.offload.offload_from = value

    def own_address(self, address: str) -> str | None:
        """The name of the feature whose address this is (unsubscribe, feedback reports, bounces)."""
        for feature in self._address_features:
            if feature.own_address(address):
                return feature.name
        return None

    # --- facts ----------------------------------------------------------------------------

    async def account_facts(self, account: AccountConfig) -> MessageFacts:
        return MessageFacts(
            account=await self._account_state(account),
            mail_from="",
            now=self.services.clock.now(),
            params=self.services.engine.profile.params,
        )

    async def _account_state(self, account: AccountConfig) -> AccountFacts:
        """The account's facts in its current state (read from the store each transaction). The
        facts of an (account, state) are made once: they are immutable, and the same for every
        message until the state changes."""
        state = await self.services.store.accounts.get(account.id)
        key = (account.id, state.state, state.reason, state.paused_streams)
        known = self._account_facts.get(key)
        if known is not None and known[0] is account:
            return known[1]
        facts = account.facts(state.state, state.reason, state.paused_streams)
        if len(self._account_facts) >= 1024:  # states and reasons an admin wrote: bounded anyway
            self._account_facts.clear()
        self._account_facts[key] = (account, facts)
        return facts

    async def recipient_facts(self, account: AccountConfig, emails: Sequence[str]) -> list[RecipientFacts]:
        scopes = (account.id, account.parent) if account.parent else (account.id,)
        consents, suppressions = await self.services.store.consent.find_consents_and_suppressions(scopes, emails)
        return [
            RecipientFacts(e, tuple(consents.get(e, ())), tuple(suppressions.get(e, ()))) for e in emails
        ]

    async def _recipient_facts_at_data(self, txn: Transaction, account: AccountConfig) -> list[RecipientFacts]:
        """The facts read at RCPT for this transaction, and a store read only for the rest: one
        lookup per recipient and transaction (the scopes depend on the account, not the stream)."""
        missing = [r for r in txn.recipients if r not in txn.rcpt_facts]
        if missing:
            for rfacts in await self.recipient_facts(account, missing):
                txn.rcpt_facts[rfacts.address] = rfacts
        return [txn.rcpt_facts[r] for r in txn.recipients]

    # --- stages ---------------------------------------------------------------------------

    async def at_mail(self, txn: Transaction) -> Verdict:
        assert txn.account is not None
        account = await self._account_state(txn.account)
        if txn.null_sender:
            txn.stream = null_sender_stream(txn.account)
        else:
            txn.stream = txn.account.stream_for_envelope(txn.mail_from) if txn.mail_from else None
        stream = txn.stream.facts if txn.stream else None
        txn.facts = MessageFacts(
            account=account, mail_from=txn.mail_from, now=self.services.clock.now(),
            params=self.services.engine.profile.params, stream=stream, null_sender=txn.null_sender,
        )
        verdict = self.services.engine.session(txn.facts)
        if verdict.outcome is Outcome.DELIVER and txn.account.rate_limit_per_minute > 0:
            # Only a transaction MAIL FROM accepts spends a token (a refusal keeps its own 554 or 550),
            # and only here: the facts kept for RCPT and DATA go without it.
            limited = replace(txn.facts, shell=await self._rate_facts(txn.account))
            verdict = self.services.engine.session(limited)
        for finding in verdict.findings:
            self.count_rule(finding)
        return verdict

    async def _rate_facts(self, account: AccountConfig) -> ShellFacts:
        """Take a token from the account's bucket in the store, shared by every worker and instance.
        A store failure raises StoreUnavailable: the caller tempfails, it never passes."""
        per_minute = account.rate_limit_per_minute
        allowed = await self.services.store.rates.take(
            account.id, rate_per_minute=per_minute, now=self.services.clock.timestamp()
        )
        return ShellFacts(rate_limited=not allowed, rate_limit_per_minute=per_minute)

    def _kind_known_before_data(self, txn: Transaction) -> StreamFacts | None:
        assert txn.account is not None
        if txn.stream is not None:
            return txn.stream.facts
        return txn.account.marketing_before_data

    async def at_rcpt(self, txn: Transaction, rcpt: str) -> Verdict | None:
        assert txn.account is not None and txn.facts is not None
        stream = self._kind_known_before_data(txn)
        if stream is None or not (stream.is_marketing or txn.null_sender):
            return None
        facts = txn.facts
        if facts.stream != stream:  # the stream was not known at MAIL FROM: the account's default
            facts = MessageFacts(
                account=facts.account, mail_from=txn.mail_from, now=facts.now, params=facts.params, stream=stream,
                null_sender=txn.null_sender,
            )
        if stream.is_marketing:
            (rfacts,) = await self.recipient_facts(txn.account, [rcpt])
            txn.rcpt_facts[rcpt] = rfacts
        else:
            rfacts = RecipientFacts(rcpt)  # a bounce: only where it goes matters, not consent
        verdict = self.services.engine.recipient(facts, rfacts, before_data=True)
        for finding in verdict.findings:
            self.count_rule(finding)
        return verdict

    async def at_data(self, txn: Transaction, raw: bytes) -> str:
        self.offload.busy += 1
        try:
            return await self._at_data(txn, raw)
        finally:
            self.offload.busy -= 1

    async def _at_data(self, txn: Transaction, raw: bytes) -> str:
        metrics = self.services.metrics
        metrics.message_bytes.observe(len(raw))
        if txn.own_recipients:
            own_reply = await self._own_mail(txn, raw)
            if not txn.recipients or txn.account is None:
                return own_reply
        assert txn.account is not None
        account = txn.account
        started = time.perf_counter()
        if len(raw) > _PARSE_IN_THREAD_BYTES:
            message = await asyncio.to_thread(parse_message, raw)
        else:
            message = parse_message(raw)
        walk_key = self.body_walks.lend(raw, message)
        requested = message.header(STREAM_HEADER).strip() or None
        if txn.null_sender:
            # A bounce is transactional whatever a header in it says (it may quote the original's).
            requested, stream_cfg = None, txn.stream or null_sender_stream(account)
        elif requested is not None:
            stream_cfg = account.stream(requested)
        else:
            stream_cfg = txn.stream or account.stream(account.default_stream or "")
        stream_name = stream_cfg.id if stream_cfg else (requested or "")  # what the decisions table keeps
        label = metric_stream(stream_cfg)
        try:
            # The account state read at MAIL FROM holds for the whole transaction (as a policy daemon
            # answers per transaction); a change takes effect on the next MAIL FROM.
            base = txn.facts if txn.facts is not None else await self.account_facts(account)
            stream = stream_cfg.facts if stream_cfg else None
            rfacts: list[RecipientFacts] = []
            if stream is not None and stream.is_marketing:
                rfacts = await self._recipient_facts_at_data(txn, account)
            else:
                rfacts = [RecipientFacts(r) for r in txn.recipients]
            shell = NOTHING_FOUND
            for feature in self._facts_features:
                shell = await feature.message_facts(txn, message, shell)
        except StoreUnavailable as exc:
            self.log.error("store_unavailable", stage="data", relay_id=txn.relay_id, error=str(exc))
            self.record(txn, message, stream_name, "tempfailed", [], txn.recipients)
            metrics.messages.labels(account.id, label, "tempfailed").inc()
            return replies.STORE_UNAVAILABLE
        except ScannerUnavailable as exc:
            self.log.error("scanner_unavailable", relay_id=txn.relay_id, error=str(exc))
            self.record(txn, message, stream_name, "tempfailed", [], txn.recipients)
            metrics.messages.labels(account.id, label, "tempfailed").inc()
            return replies.SCANNER_UNAVAILABLE
        facts = MessageFacts(
            account=base.account,
            mail_from=txn.mail_from,
            now=base.now,
            params=base.params,
            stream=stream,
            stream_requested=requested if stream_cfg is None else None,
            message=message,
            null_sender=txn.null_sender,
            shell=shell,
        )
        try:
            verdict = await self.evaluate(facts, rfacts)
        except HelperTimeout as exc:
            # Maybe this very message wedged the helper: not redone on the loop, where it could
            # stall every session. The client retries; by then the helper is a new one.
            self.log.error("policy_timeout", relay_id=txn.relay_id, error=str(exc))
            self.record(txn, message, stream_name, "tempfailed", [], txn.recipients)
            metrics.messages.labels(account.id, label, "tempfailed").inc()
            return replies.POLICY_TIMEOUT
        metrics.policy_seconds.observe(time.perf_counter() - started)
        self.body_walks.keep(walk_key, message)
        for finding in verdict.findings:
            self.count_rule(finding)
        findings = list(verdict.findings)  # RCPT-time refusals were recorded when they happened
        return await self._carry_out(txn, message, raw, stream_cfg, stream_name, verdict, findings, facts)

    async def evaluate(self, facts: MessageFacts, rfacts: Sequence[RecipientFacts]) -> Verdict:
        """The end-of-DATA verdict: in the helper process when there is one, else on the loop
        (a helper that is down costs speed, never mail)."""
        ran = "loop"
        helper = self.offload.helper_now()
        if helper is not None:
            try:
                verdict: Verdict = await helper.call("message", facts, rfacts)
                self.services.metrics.helper_jobs.labels("verdict", "helper").inc()
                return verdict
            except HelperTimeout:
                raise
            except HelperUnavailable:
                ran = "fallback"  # the helper logged why
        self.services.metrics.helper_jobs.labels("verdict", ran).inc()
        return self.services.engine.message(facts, rfacts)

    # --- outcomes -------------------------------------------------------------------------

    async def _carry_out(
        self,
        txn: Transaction,
        message: ParsedMessage,
        raw: bytes,
        stream_cfg: StreamConfig | None,
        stream_name: str,
        verdict: Verdict,
        findings: list[Finding],
        facts: MessageFacts,
    ) -> str:
        assert txn.account is not None
        account_id = txn.account.id
        metrics = self.services.metrics
        all_rcpts = txn.recipients
        label = metric_stream(stream_cfg)
        if verdict.outcome is Outcome.TEMPFAIL:
            assert verdict.deciding is not None
            self.record(txn, message, stream_name, "tempfailed", findings, all_rcpts, misses=verdict.misses)
            metrics.messages.labels(account_id, label, "tempfailed").inc()
            return replies.policy_reply(verdict.deciding)
        if verdict.outcome is Outcome.REJECT:
            assert verdict.deciding is not None
            self.record(txn, message, stream_name, "rejected", findings, all_rcpts, misses=verdict.misses)
            metrics.messages.labels(account_id, label, "rejected").inc()
            metrics.recipients.labels(account_id, label, "rejected").inc(len(all_rcpts))
            return replies.policy_reply(verdict.deciding)
        permitted = [r for r in all_rcpts if r not in verdict.refused]
        assert stream_cfg is not None  # stream.unknown would have rejected
        if verdict.outcome is Outcome.QUARANTINE:
            assert verdict.deciding is not None
            return await self._hold(txn, message, raw, stream_cfg, verdict, findings, permitted)
        earlier = self.retries.delivered(account_id, txn.mail_from, raw)
        if earlier:
            # The client retries a message an earlier attempt delivered in part: those recipients
            # have their copy (and its record) already.
            skipped = [r for r in permitted if r in earlier]
            permitted = [r for r in permitted if r not in earlier]
            self.log.info("retry_skips_delivered", relay_id=txn.relay_id, skipped=len(skipped))
        else:
            skipped = []
        if skipped and not permitted:
            self.retries.forget(account_id, txn.mail_from, raw)
            self.record(txn, message, stream_name, "delivered", findings, all_rcpts, misses=verdict.misses)
            metrics.messages.labels(account_id, label, "delivered").inc()
            return replies.delivered(txn.relay_id, f"{len(skipped)} of {len(skipped)} delivered by an earlier attempt")
        try:
            await self.reserve_delivery_ids(txn, permitted)
        except StoreUnavailable as exc:
            # Nothing has gone upstream yet: the client keeps the message and retries.
            self.log.error("store_unavailable", stage="delivery_ids", relay_id=txn.relay_id, error=str(exc))
            self.record(txn, message, stream_name, "tempfailed", findings, all_rcpts, misses=verdict.misses)
            metrics.messages.labels(account_id, label, "tempfailed").inc()
            return replies.STORE_UNAVAILABLE
        copies = self.copies(txn, facts, verdict.relied_on, raw, permitted)
        report = await deliver(
            self.upstream,
            self.services.store.outbox,
            relay_id=txn.relay_id,
            account=account_id,
            stream=stream_cfg.id,
            mail_from=txn.mail_from,
            copies=copies,
            now=self.services.clock.timestamp(),
        )
        report.earlier = skipped
        return await self._delivery_reply(txn, message, raw, stream_cfg, verdict, findings, facts, report)

    async def _delivery_reply(
        self,
        txn: Transaction,
        message: ParsedMessage,
        raw: bytes,
        stream_cfg: StreamConfig,
        verdict: Verdict,
        findings: list[Finding],
        facts: MessageFacts,
        report: DeliveryReport,
    ) -> str:
        assert txn.account is not None
        account_id, stream_id = txn.account.id, stream_cfg.id
        metrics = self.services.metrics
        if report.tempfailed:
            if report.store_failed:
                self.log.error("store_unavailable", stage="outbox", relay_id=txn.relay_id, account=account_id, error=report.tempfail_reason)
            else:
                self.log.warning("upstream_unavailable", relay_id=txn.relay_id, account=account_id, error=report.tempfail_reason)
            metrics.messages.labels(account_id, stream_id, "tempfailed").inc()
            if not report.delivered:
                self.record(txn, message, stream_id, "tempfailed", findings, txn.recipients, misses=verdict.misses)
                return replies.STORE_UNAVAILABLE if report.store_failed else replies.UPSTREAM_UNAVAILABLE
            # Part of it left before the rest could not be kept. The client must retry (or the rest
            # is lost): the copies that left get their delivery records now, written before the
            # reply when the store can take them (else kept until it can), and the retry skips them.
            self.retries.remember(account_id, txn.mail_from, raw, report.delivered)
            self.record(
                txn, message, stream_id, "tempfailed", findings, txn.recipients, delivered=report.delivered,
                relied_on=verdict.relied_on, facts=facts, misses=verdict.misses,
            )
            metrics.recipients.labels(account_id, stream_id, "delivered").inc(len(report.delivered))
            await self.recorder.flush()
            return replies.STORE_UNAVAILABLE if report.store_failed else replies.UPSTREAM_UNAVAILABLE
        if report.earlier:
            self.retries.forget(account_id, txn.mail_from, raw)
        if report.queued:
            self.wake_outbox()
        policy_refused = [(r, verdict.refused[r].rule) for r in txn.recipients if r in verdict.refused]
        earlier = [(f.recipient or "", f.rule) for f in txn.rcpt_refusals]
        upstream_refused = [(r, "upstream") for r in report.refused]
        ok = report.delivered + report.queued
        outcome = "delivered" if report.delivered and not report.queued else ("deferred" if report.queued else "rejected")
        self.record(
            txn, message, stream_id, outcome, findings, txn.recipients, delivered=ok, relied_on=verdict.relied_on,
            facts=facts, queued=set(report.queued), misses=verdict.misses,
        )
        metrics.messages.labels(account_id, stream_id, outcome).inc()
        if report.delivered:
            metrics.recipients.labels(account_id, stream_id, "delivered").inc(len(report.delivered))
        if report.queued:
            metrics.recipients.labels(account_id, stream_id, "deferred").inc(len(report.queued))
        refused_count = len(policy_refused) + len(upstream_refused)
        if refused_count:
            metrics.recipients.labels(account_id, stream_id, "rejected").inc(refused_count)
        if not ok and not report.earlier:
            return replies.upstream_passthrough(report.rejected_code or 550, report.rejected_reply.partition(" ")[2] or "refused")
        total = len(txn.recipients) + len(earlier)
        done = len(ok) + len(report.earlier)
        if policy_refused or upstream_refused or earlier:
            return replies.partially_delivered(txn.relay_id, done, total, earlier + policy_refused + upstream_refused)
        note = report.upstream_reply.partition(" ")[2] if report.upstream_reply else ""
        if report.queued:
            note = f"{len(report.queued)} of {done} queued for retry"
        elif report.earlier:
            note = f"{len(report.earlier)} of {done} delivered by an earlier attempt" + (f", the rest {note}" if note else "")
        return replies.delivered(txn.relay_id, note)

    async def _hold(
        self,
        txn: Transaction,
        message: ParsedMessage,
        raw: bytes,
        stream_cfg: StreamConfig,
        verdict: Verdict,
        findings: list[Finding],
        permitted: list[str],
    ) -> str:
        assert txn.account is not None and verdict.deciding is not None
        quarantine_id = "Q" + txn.relay_id
        held = [f for f in findings if f.action is Action.QUARANTINE]
        item = QuarantineItem(
            id=quarantine_id,
            relay_id=txn.relay_id,
            account=txn.account.id,
            stream=stream_cfg.id,
            mail_from=txn.mail_from,
            rcpt_tos=tuple(permitted),
            subject=message.subject[:500],
            rules=tuple(dict.fromkeys(f.rule for f in held)),
            findings=tuple(f.as_dict() for f in findings),
            size=len(raw),
            received_at=self.services.clock.now(),
            content=raw,
        )
        try:
            await self.services.store.quarantine.hold(item)
        except StoreUnavailable as exc:
            self.log.error("quarantine_store_failed", relay_id=txn.relay_id, error=str(exc))
            self.record(txn, message, stream_cfg.id, "tempfailed", findings, txn.recipients, misses=verdict.misses)
            self.services.metrics.messages.labels(txn.account.id, stream_cfg.id, "tempfailed").inc()
            return replies.STORE_UNAVAILABLE
        self.services.metrics.quarantine_messages.inc()
        self.record(txn, message, stream_cfg.id, "quarantined", findings, txn.recipients, misses=verdict.misses)
        self.services.metrics.messages.labels(txn.account.id, stream_cfg.id, "quarantined").inc()
        self.services.metrics.recipients.labels(txn.account.id, stream_cfg.id, "quarantined").inc(len(permitted))
        return replies.quarantined(quarantine_id, verdict.deciding.rule)

    async def _own_mail(self, txn: Transaction, raw: bytes) -> str:
        by_feature: dict[str, list[str]] = {}
        for address, name in txn.own_recipients:
            by_feature.setdefault(name, []).append(address)
        reply = replies.OK
        for name, addresses in by_feature.items():
            reply = await self._feature_named[name].handle_mail(txn, addresses, raw)
        return reply

    async def reserve_delivery_ids(self, txn: Transaction, recipients: Sequence[str]) -> None:
        """An id for each recipient's delivery record, taken before anything goes upstream: a copy
        that leaves always has its record (the proof of consent), and a store that cannot give ids
        makes the transaction tempfail while nothing was sent."""
        for rcpt in recipients:
            if rcpt not in txn.delivery_ids:
                txn.delivery_ids[rcpt] = await self.delivery_ids.take()

    # --- recording ------------------------------------------------------------------------

    def count_rule(self, finding: Finding) -> None:
        self.services.metrics.rule_hits.labels(finding.rule, finding.action.value).inc()
        if finding.action is Action.MONITOR:
            self.log.info("rule_monitored", rule=finding.rule, detail=finding.detail[:200])

    def record_rcpt_refusal(self, txn: Transaction, finding: Finding) -> None:
        """A recipient refused at RCPT is a decision of its own: the transaction may never reach DATA."""
        self.recorder.record(
            DecisionRecord(
                relay_id=txn.relay_id,
                outcome="tempfailed" if finding.action is Action.TEMPFAIL else "rejected",
                created_at=self.services.clock.now(),
                account=txn.account.id if txn.account else "",
                stream=txn.stream.id if txn.stream else "",
                mail_from=txn.mail_from,
                recipients=(finding.recipient or "",),
                rules=(finding.rule,),
                findings=(finding.as_dict(),),
            )
        )
        if txn.account is not None:
            stream = txn.stream.id if txn.stream else UNKNOWN_STREAM
            self.services.metrics.recipients.labels(txn.account.id, stream, "rejected").inc()

    def record_refusal(self, txn: Transaction, verdict: Verdict, *, stage: str) -> None:
        assert txn.account is not None
        outcome = "tempfailed" if verdict.outcome is Outcome.TEMPFAIL else "rejected"
        self.services.metrics.messages.labels(txn.account.id, UNKNOWN_STREAM, outcome).inc()
        self.recorder.record(
            DecisionRecord(
                relay_id=txn.relay_id,
                outcome=outcome,
                created_at=self.services.clock.now(),
                account=txn.account.id,
                mail_from=txn.mail_from,
                rules=verdict.rule_ids,
                findings=tuple(f.as_dict() for f in verdict.findings),
                misses=tuple(dict.fromkeys(verdict.misses)),
            )
        )

    def record(
        self,
        txn: Transaction,
        message: ParsedMessage,
        stream: str,
        outcome: str,
        findings: list[Finding],
        recipients: Sequence[str],
        *,
        delivered: Sequence[str] = (),
        relied_on: Mapping[str, ReliedConsent] | None = None,
        facts: MessageFacts | None = None,
        queued: set[str] | None = None,
        misses: Sequence[str] = (),
    ) -> None:
        assert txn.account is not None
        now = self.services.clock.now()
        message_id = message.header("Message-ID").strip()[:300]
        deliveries = []
        if delivered:
            relied_on = relied_on or {}
            stream_topic = facts.stream.topic if facts is not None and facts.stream is not None else ""
            for rcpt in delivered:
                # The consent the engine relied on for this copy (the proof of consent names it), and
                # the subscription its unsubscribe withdraws: that consent's scope and topic.
                relied = relied_on.get(rcpt)
                scope, topic = (relied.scope, relied.topic) if relied is not None else ("", stream_topic)
                consent_id = int(relied.id) if relied is not None and relied.id else None
                delivery_id = txn.delivery_ids[rcpt]  # reserved before the copy left (reserve_delivery_ids)
                deliveries.append(
                    DeliveryRecord(
                        id=delivery_id,
                        relay_id=txn.relay_id,
                        account=txn.account.id,
                        stream=stream,
                        email=rcpt,
                        status="queued" if queued and rcpt in queued else "delivered",
                        delivered_at=now,
                        message_id=message_id,
                        scope=scope,
                        topic=topic,
                        consent_id=consent_id,
                    )
                )
        all_findings = [f.as_dict() for f in findings]
        self.recorder.record(
            DecisionRecord(
                relay_id=txn.relay_id,
                outcome=outcome,
                created_at=now,
                message_id=message_id,
                account=txn.account.id,
                stream=stream,
                mail_from=txn.mail_from,
                recipients=tuple(recipients),
                rules=tuple(dict.fromkeys(f.rule for f in findings)),
                findings=tuple(all_findings),
                misses=tuple(dict.fromkeys(misses)),
            ),
            deliveries,
        )


UNKNOWN_STREAM = NO_VALUE


def null_sender_stream(account: AccountConfig) -> StreamConfig:
    """Where an account's bounces go: its default stream when transactional, else its first
    transactional stream, else a transactional stream of their own."""
    default = account.stream(account.default_stream or "")
    if default is not None and default.kind == TRANSACTIONAL:
        return default
    found = next((s for s in account.streams if s.kind == TRANSACTIONAL), None)
    return found or StreamConfig(NULL_SENDER_STREAM, TRANSACTIONAL, NULL_SENDER_STREAM)


def _overrides(feature: Feature, method: str) -> bool:
    """Whether `feature` has its own `method`, not the Feature protocol's default that adds nothing."""
    return getattr(getattr(feature, method, None), "__func__", None) is not getattr(Feature, method)


def metric_stream(stream_cfg: StreamConfig | None) -> str:
    """The stream label of a metric: a configured stream id, never what a client wrote in a header."""
    return stream_cfg.id if stream_cfg is not None else UNKNOWN_STREAM


class IdAllocator:
    """Hands out ids from blocks reserved in the store, so ids are unique across processes."""

    def __init__(self, reserve: Callable[[str, int], Awaitable[int]], name: str, block: int = 1000) -> None:
        self._reserve = reserve
        self._name = name
        self._block = block
        self._next = 0
        self._end = 0
        self._lock = asyncio.Lock()
        self._refilling: asyncio.Task[None] | None = None

    async def refill(self) -> None:
        async with self._lock:
            if self._end - self._next < self._block // 4:
                first = await self._reserve(self._name, self._block)
                self._next, self._end = first, first + self._block

    async def take(self) -> int:
        """The next id. A dry allocator waits for its block (a refill in flight, or one of its own)
        rather than hand out nothing: every delivery gets its record. StoreUnavailable when the store
        cannot reserve one."""
        while self._next >= self._end:
            await self.refill()
        value = self._next
        self._next += 1
        if self._end - self._next < self._block // 4 and (self._refilling is None or self._refilling.done()):
            # Ahead of need, so the common case never waits; a failure here is retried by the next take.
            self._refilling = asyncio.get_running_loop().create_task(self._refill_quietly())
        return value

    async def _refill_quietly(self) -> None:
        try:
            await self.refill()
        except StoreUnavailable:
            pass

