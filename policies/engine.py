"""The one engine: run rules for a stage, map hits to actions through the profile, pick the outcome.

Detection (rules) is separate from decision (profile). Every hit and every miss is
returned so the shell can record the whole evaluation, and with the end-of-DATA outcome the
consent each permitted recipient's copy relies on (the shell records it, never recomputes it).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from policies.facts import ClientFacts, MessageFacts, RecipientFacts
from policies.findings import Action, Finding, Outcome, ReliedConsent, Stage, Verdict
from policies.profiles import Profile
from policies.rule import Rule
from policies.rules.consent import covering_consent

_ACTIVE = (Action.REJECT, Action.QUARANTINE, Action.TEMPFAIL, Action.MONITOR)


class Engine:
    def __init__(self, rules: Sequence[Rule], profile: Profile) -> None:
        self.profile = profile
        self._by_stage: dict[Stage, tuple[Rule, ...]] = {
            stage: tuple(r for r in rules if r.stage is stage and profile.action(r.id) is not Action.OFF)
            for stage in Stage
        }
        # The rules of a stage that apply, by (null sender, marketing stream): _applies decided once
        # per engine, not per rule and message.
        self._applying: dict[tuple[Stage, bool, bool], tuple[Rule, ...]] = {
            (stage, null, marketing): tuple(r for r in rules if _applies(r, null, marketing))
            for stage, rules in self._by_stage.items()
            for null in (False, True)
            for marketing in (False, True)
        }

    def rules(self, stage: Stage) -> tuple[Rule, ...]:
        return self._by_stage[stage]

    def client(self, facts: ClientFacts, recipient: str) -> Verdict:
        """RCPT TO (not one of the relay's own addresses): may this client relay to the recipient at all."""
        findings: list[Finding] = []
        misses: list[str] = []
        for r in self._by_stage[Stage.CLIENT]:
            hit = r.check(facts)
            if hit is None:
                misses.append(r.id)
            else:
                findings.append(Finding(r.id, self.profile.action(r.id), hit.detail, hit.evidence, recipient))
        return _decide(findings, misses, (recipient,))

    def account(self, rule: Rule, facts: object) -> Finding | None:
        """Outside a transaction: one account rule (complaint enforcement) on its own facts; the profile
        gives the action (suspend, pause, monitor, ...). None when it misses or the profile turns it off."""
        if rule.stage is not Stage.ACCOUNT:
            raise ValueError(f"{rule.id} is not an account rule")
        action = self.profile.action(rule.id)
        if action is Action.OFF:
            return None
        hit = rule.check(facts)
        return None if hit is None else Finding(rule.id, action, hit.detail, hit.evidence)

    def _applying_to(self, stage: Stage, facts: MessageFacts) -> tuple[Rule, ...]:
        stream = facts.stream
        return self._applying[stage, bool(facts.null_sender), bool(stream is not None and stream.is_marketing)]

    def session(self, facts: MessageFacts) -> Verdict:
        """MAIL FROM: account state, envelope sender."""
        findings, misses = self._run(self._applying_to(Stage.SESSION, facts), facts)
        return _decide(findings, misses, ())

    def recipient(self, facts: MessageFacts, rcpt: RecipientFacts, *, before_data: bool) -> Verdict:
        """RCPT TO: only the recipient rules that can be decided before DATA when before_data."""
        rules = [r for r in self._applying_to(Stage.RECIPIENT, facts) if r.before_data or not before_data]
        findings, misses = self._run_recipient(rules, facts, rcpt)
        return _decide(findings, misses, (rcpt.address,))

    def message(
        self,
        facts: MessageFacts,
        recipients: Sequence[RecipientFacts],
        *,
        skip: Iterable[str] = (),
    ) -> Verdict:
        """End of DATA: every rule, session ones again (state may have changed), then per recipient;
        the verdict names the consent each recipient it permits relies on (`Verdict.relied_on`)."""
        skipped = frozenset(skip)
        findings: list[Finding] = []
        misses: list[str] = []
        for stage in (Stage.SESSION, Stage.MESSAGE):
            rules = self._applying_to(stage, facts)
            hit, miss = self._run([r for r in rules if r.id not in skipped] if skipped else rules, facts)
            findings += hit
            misses += miss
        rcpt_rules = self._applying_to(Stage.RECIPIENT, facts)
        if skipped:
            rcpt_rules = tuple(r for r in rcpt_rules if r.id not in skipped)
        for rcpt in recipients:
            hit, miss = self._run_recipient(rcpt_rules, facts, rcpt)
            findings += hit
            misses += miss
        verdict = _decide(findings, misses, tuple(r.address for r in recipients))
        relied = _relied_on(facts, recipients, verdict.refused)
        if not relied:
            return verdict
        return Verdict(verdict.outcome, verdict.findings, verdict.misses, verdict.refused, verdict.deciding, relied)

    def _run(self, rules: Iterable[Rule], facts: MessageFacts) -> tuple[list[Finding], list[str]]:
        """The rules given, which apply to these facts (_applying_to)."""
        findings: list[Finding] = []
        misses: list[str] = []
        for r in rules:
            hit = r.check(facts)
            if hit is None:
                misses.append(r.id)
            else:
                findings.append(Finding(r.id, self.profile.action(r.id), hit.detail, hit.evidence))
        return findings, misses

    def _run_recipient(
        self, rules: Iterable[Rule], facts: MessageFacts, rcpt: RecipientFacts
    ) -> tuple[list[Finding], list[str]]:
        findings: list[Finding] = []
        misses: list[str] = []
        for r in rules:
            hit = r.check(facts, rcpt)
            if hit is None:
                misses.append(r.id)
            else:
                action = self.profile.action(r.id)
                findings.append(Finding(r.id, action, hit.detail, hit.evidence, rcpt.address, hit.consent_id))
        return findings, misses


def _applies(rule: Rule, null_sender: bool, marketing: bool) -> bool:
    if null_sender and rule.skip_for_null_sender:
        return False
    return marketing or not rule.marketing_only


def _relied_on(
    facts: MessageFacts, recipients: Sequence[RecipientFacts], refused: Mapping[str, Finding]
) -> dict[str, ReliedConsent]:
    """Recipient -> the consent that covers it (policies.rules.consent.covering_consent: the record
    the consent rules judged, picked once per recipient and these facts, not ranked again here), for
    the recipients not refused. Marketing only: transactional mail relies on no consent. Whichever
    consent rules the profile runs, as a delivery record always had."""
    if facts.stream is None or not facts.stream.is_marketing:
        return {}
    relied: dict[str, ReliedConsent] = {}
    for rcpt in recipients:
        if rcpt.address in refused:
            continue
        record = covering_consent(facts, rcpt)
        if record is not None:
            relied[rcpt.address] = ReliedConsent(record.id or None, record.scope, record.topic)
    return relied


def _decide(findings: list[Finding], misses: list[str], recipients: tuple[str, ...]) -> Verdict:
    """tempfail > reject of the message > quarantine > deliver; per-recipient rejects refuse that recipient."""
    if not findings:  # nearly every message: nothing to rank
        return Verdict(Outcome.DELIVER, (), tuple(misses), {}, None)
    message_level = [f for f in findings if f.recipient is None]
    refused: dict[str, Finding] = {}
    held: Finding | None = None
    for f in findings:
        if f.recipient is not None and f.action is Action.REJECT:
            refused.setdefault(f.recipient, f)
        if f.recipient is not None and f.action is Action.TEMPFAIL:
            return Verdict(Outcome.TEMPFAIL, tuple(findings), tuple(misses), {}, f)
    for action, outcome in ((Action.TEMPFAIL, Outcome.TEMPFAIL), (Action.REJECT, Outcome.REJECT)):
        first = next((f for f in message_level if f.action is action), None)
        if first is not None:
            return Verdict(outcome, tuple(findings), tuple(misses), refused, first)
    if recipients and all(r in refused for r in recipients):
        return Verdict(Outcome.REJECT, tuple(findings), tuple(misses), refused, refused[recipients[0]])
    permitted = [r for r in recipients if r not in refused]
    held = next(
        (
            f
            for f in findings
            if f.action is Action.QUARANTINE and (f.recipient is None or f.recipient in permitted)
        ),
        None,
    )
    if held is not None:
        return Verdict(Outcome.QUARANTINE, tuple(findings), tuple(misses), refused, held)
    return Verdict(Outcome.DELIVER, tuple(findings), tuple(misses), refused, None)
