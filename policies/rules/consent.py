"""Consent and suppression rules (POLICY.md, consent rules): demonstrable permission per recipient.

The record-only checks live in `record_findings`, shared by the importer and send time.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from policies.facts import ConsentRecord, MessageFacts, RecipientFacts, Suppression
from policies.findings import Hit, Stage
from policies.frozen import quick_init
from policies.rule import Rule, rule

# A stream topic of '*' in MessageFacts means "marketing, topic not known yet" (RCPT time on an
# all-marketing account): any consent of the scope counts, only scope-wide suppressions apply.
ANY_TOPIC = "*"

BASES = ("opt_in", "double_opt_in", "existing_customer", "business_card", "offline_form")
SOURCES = (
    "signup_form",
    "order_process",
    "newsletter_signup",
    "offline",
    "business_card",
    "customer_purchase",
    "co_registration",
    "partner",
    "lottery",
    "questionnaire",
    "purchased",
    "rented",
    "traded",
    "borrowed",
    "found",
    "harvested",
    "terms_and_conditions",
    "other",
)
# M-third-party-lists: "gekocht, verhandeld, gehuurd, geleend, gevonden"; the CSA questionnaire's
# "partnerregistratie/loterij/vragenlijst"; E-who-not: "van een derde partij".
THIRD_PARTY_SOURCES = frozenset(
    {"purchased", "rented", "traded", "borrowed", "found", "co_registration", "partner", "lottery", "questionnaire"}
)
ONLINE_SOURCES = frozenset({"signup_form", "newsletter_signup", "order_process"})
SIGNUP_SOURCES = frozenset({"signup_form", "newsletter_signup"})
EXPLICIT_BASES = frozenset({"opt_in", "double_opt_in", "offline_form"})
INTERACTION_KINDS = ("purchase", "click", "reply", "confirmation")

UNSUBSCRIBED = "suppression.unsubscribed"
COMPLAINT = "suppression.complaint"
BOUNCED = "suppression.bounced"

# M-vague-descriptions: "deze organisatie en (geselecteerde) partners"; M/E: consent through the
# general terms or a privacy statement is no consent.
_VAGUE = re.compile(
    r"partner|derde(n| partij)|third[ -]part|affiliat|"
    r"algemene voorwaarden|terms (and|&) conditions|terms of (service|use)|"
    r"privacy[ -]?(statement|policy|verklaring|beleid)",
    re.IGNORECASE,
)


def _months_before(moment: datetime, months: int) -> datetime:
    """The same wall time `months` calendar months earlier (day clamped to the month's length)."""
    index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(index, 12)
    day = moment.day
    if day > 28:  # every month has 28 days: only a later day may need clamping
        day = min(day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def last_sign_of_life(record: ConsentRecord) -> datetime | None:
    """Latest of collected, confirmed, last interaction and last purchase."""
    dates = [
        d
        for d in (record.collected_at, record.confirmed_at, record.last_interaction_at, record.last_purchase_at)
        if d is not None
    ]
    return max(dates) if dates else None


def _param_int(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def record_findings(
    record: ConsentRecord, params: Mapping[str, Any], *, now: datetime | None = None
) -> list[tuple[str, str]]:
    """Findings (rule id, detail) that depend only on the record, in POLICY.md order.

    Without `now` the time-dependent soft opt-in purchase limit is not checked (the importer
    keeps such rows, like stale ones: a new purchase revives them); send time passes facts.now.
    """
    found: list[tuple[str, str]] = []
    source, basis = record.source, record.basis
    if source in THIRD_PARTY_SOURCES:
        found.append(
            (
                "consent.third_party",
                f"consent source {source!r} is a third party; the sender must collect consent itself",
            )
        )
    if source == "harvested":
        found.append(("consent.harvested", "the address was harvested from a public place"))
    if record.prechecked and not _prechecked_allowed(record, params):
        found.append(("consent.prechecked", "consent came from a pre-ticked box" + _prechecked_where(params)))
    if source == "terms_and_conditions":
        found.append(
            ("consent.hidden_in_terms", "consent was taken from general terms and conditions or a privacy statement")
        )
    elif record.statement_text and (match := _VAGUE.search(record.statement_text)):
        found.append(
            (
                "consent.hidden_in_terms",
                f"the consent statement is not specific (mentions {match.group(0)!r}): "
                "partners or terms and conditions are no consent",
            )
        )
    missing = _undocumented(record)
    if missing:
        found.append(("consent.undocumented", "the record lacks " + ", ".join(missing)))
    soft = _soft_optin_problems(record, params, now)
    if soft:
        found.append(("consent.soft_optin_invalid", "existing-customer soft opt-in: " + "; ".join(soft)))
    if source in SIGNUP_SOURCES and not record.frequency_disclosed:
        found.append(("consent.frequency_undisclosed", "the signup form did not disclose the sending frequency"))
    if (basis == "business_card" or source == "business_card") and not record.email_contact_announced:
        found.append(
            (
                "consent.business_card_unannounced",
                "the business card was given without the note that contact by e-mail would follow",
            )
        )
    return found


_ANY = "*"


def _allowed_values(params: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = params.get(name, ())
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()


def _prechecked_allowed(record: ConsentRecord, params: Mapping[str, Any]) -> bool:
    """A pre-ticked box counts only where the profile allows both its basis and its source.

    mailpro allows it for the existing-customer soft opt-in only (bases), clang in order processes
    only (sources), strict where both do; '*' allows any value, an empty or missing list none.
    """
    bases = _allowed_values(params, "prechecked_allowed_bases")
    sources = _allowed_values(params, "prechecked_allowed_sources")
    return (_ANY in bases or record.basis in bases) and (_ANY in sources or record.source in sources)


def _prechecked_where(params: Mapping[str, Any]) -> str:
    bases = _allowed_values(params, "prechecked_allowed_bases")
    sources = _allowed_values(params, "prechecked_allowed_sources")
    if not bases or not sources:
        return " (never allowed under this profile)"
    conditions = [
        f"the {what} is {' or '.join(values)}"
        for what, values in (("basis", bases), ("source", sources))
        if _ANY not in values
    ]
    return f" (allowed only when {' and '.join(conditions)})" if conditions else ""


def record_findings_key(record: ConsentRecord) -> tuple[object, ...]:
    """Everything `record_findings` reads when called without `now`: equal keys, equal findings.

    Lets a bulk import check each distinct shape of record once.
    """
    return (
        record.source,
        record.basis,
        record.prechecked,
        record.statement_text,
        record.collected_at is None,
        not record.source_url,
        not record.source_ip,
        record.confirmed_at is None,
        not record.customer_relationship.strip(),
        record.topic == ANY_TOPIC,
        record.informed_at_collection,
        record.objection_offered,
        record.last_purchase_at is None,
        record.frequency_disclosed,
        record.email_contact_announced,
    )


def _undocumented(record: ConsentRecord) -> list[str]:
    """The CSA complaint questionnaire's answers this record cannot give."""
    missing: list[str] = []
    if record.collected_at is None:
        missing.append("collected_at (when the address was collected)")
    if record.source in ONLINE_SOURCES:
        if not record.source_url:
            missing.append("source_url (online collection)")
        if not record.source_ip:
            missing.append("source_ip (online collection)")
    if record.basis == "double_opt_in" and record.confirmed_at is None:
        missing.append("confirmed_at (double opt-in confirmation time)")
    if record.basis in EXPLICIT_BASES and not record.statement_text.strip():
        missing.append("statement_text (the consent statement)")
    if record.basis == "existing_customer" and not record.customer_relationship.strip():
        missing.append("customer_relationship (the nature of the customer relationship)")
    return missing


def _soft_optin_problems(record: ConsentRecord, params: Mapping[str, Any], now: datetime | None) -> list[str]:
    if record.basis != "existing_customer":
        return []
    problems: list[str] = []
    if record.topic == ANY_TOPIC:
        problems.append("it covers every topic, but may only cover the customer's own similar products (give it a topic)")
    if not record.informed_at_collection:
        problems.append("the customer was not told at collection that the address would be used for marketing")
    if not record.objection_offered:
        problems.append("the customer was not offered an objection")
    if record.last_purchase_at is None:
        problems.append("no purchase date (last_purchase_at)")
    elif now is not None:
        months = _param_int(params, "soft_optin_months", 18)
        if record.last_purchase_at < _months_before(now, months):
            problems.append(f"the last purchase ({record.last_purchase_at.date()}) is older than {months} months")
    return problems


# --- which records and suppressions apply to a message ---


def _topic(facts: MessageFacts) -> str:
    return facts.stream.topic if facts.stream is not None else ANY_TOPIC


def _scoped(record: ConsentRecord | Suppression, facts: MessageFacts) -> bool:
    return record.scope in facts.account.scopes


def _consent_topic_matches(record: ConsentRecord, topic: str) -> bool:
    return topic == ANY_TOPIC or record.topic in (ANY_TOPIC, topic)


def covering_consents(facts: MessageFacts, rcpt: RecipientFacts) -> list[ConsentRecord]:
    """Every unrevoked consent of this recipient whose scope and topic cover the message."""
    topic = _topic(facts)
    return [
        c
        for c in rcpt.consents
        if c.revoked_at is None and _scoped(c, facts) and _consent_topic_matches(c, topic)
    ]


def _is_stale(record: ConsentRecord, facts: MessageFacts) -> str | None:
    months = _param_int(facts.params, "stale_months", 18)
    last = last_sign_of_life(record)
    if last is None:
        return "the consent has no date at all (collected, confirmed, interaction or purchase)"
    if last < _months_before(facts.now, months):
        return f"the last sign of life ({last.date()}) is more than {months} months ago"
    return None


@quick_init
@dataclass(frozen=True)
class _Picked:
    """The consent the relay relies on for one recipient of one message, with what the record rules
    and `stale` find about it."""

    record: ConsentRecord | None
    findings: tuple[tuple[str, str], ...] = ()
    stale: str | None = None


def _pick(facts: MessageFacts, rcpt: RecipientFacts) -> _Picked:
    """`covering_consent`'s choice (its docstring gives the order), each candidate judged once."""
    candidates = covering_consents(facts, rcpt)
    if not candidates:
        return _Picked(None)
    judged = [
        _Picked(c, tuple(record_findings(c, facts.params, now=facts.now)), _is_stale(c, facts)) for c in candidates
    ]
    if len(judged) == 1:
        return judged[0]
    topic = _topic(facts)

    def rank(p: _Picked) -> tuple[int, int, int, float]:
        c = p.record
        assert c is not None
        last = last_sign_of_life(c)
        return (
            len(p.findings) + (1 if p.stale else 0),
            0 if c.scope == facts.account.id else 1,
            0 if c.topic == topic else 1,
            -(last.timestamp() if last else float("-inf")),
        )

    return min(judged, key=rank)


def _picked(facts: MessageFacts, rcpt: RecipientFacts) -> _Picked:
    # Once per recipient and message: `stale`, the eight record rules and the engine's
    # Verdict.relied_on all judge this one pick (issue 20: it was ranked again for each of them).
    return rcpt.derived(facts, _pick)


def covering_consent(facts: MessageFacts, rcpt: RecipientFacts) -> ConsentRecord | None:
    """The consent the relay relies on for this recipient (recorded with the delivery for the proof).

    Among the covering consents: the one with fewest problems, then the most specific (the
    account's own scope before the parent's, the stream's topic before '*'), then the freshest.
    """
    return _picked(facts, rcpt).record


def _record_rule_hit(rule_id: str, facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
    picked = _picked(facts, rcpt)
    if picked.record is None:
        return None
    for found_id, detail in picked.findings:
        if found_id == rule_id:
            return Hit(detail, evidence=_evidence(picked.record), consent_id=picked.record.id or None)
    return None


def _evidence(record: ConsentRecord) -> str:
    return f"consent {record.id or '?'} scope={record.scope} topic={record.topic} basis={record.basis} source={record.source}"


# --- the rules ---


@rule(
    "consent.missing",
    "No consent record for this recipient that covers this account (or its parent) and the stream's topic.",
    clauses=("M-definition", "M-prior-consent", "E-definition", "E-who-not"),
    stage=Stage.RECIPIENT,
    before_data=True,
    marketing_only=True,
)
def missing(facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
    if covering_consents(facts, rcpt):
        return None
    topic = _topic(facts)
    in_scope = [c for c in rcpt.consents if _scoped(c, facts)]
    revoked = [c for c in in_scope if c.revoked_at is not None and _consent_topic_matches(c, topic)]
    if revoked:
        last = max(revoked, key=lambda c: c.revoked_at)  # type: ignore[arg-type, return-value]
        via = f" via {last.revoked_via}" if last.revoked_via else ""
        return Hit(
            f"the recipient's consent was revoked on {last.revoked_at.date()}{via}",  # type: ignore[union-attr]
            evidence=_evidence(last),
            consent_id=last.id or None,
        )
    if in_scope:
        topics = ", ".join(sorted({c.topic for c in in_scope}))
        return Hit(f"no consent for topic {topic!r}; the recipient consented only to: {topics}")
    return Hit(f"no consent for this recipient at scope {' or '.join(facts.account.scopes)}")


@rule(
    "consent.stale",
    "The consent's last sign of life is older than the profile's limit (18 or 24 months).",
    clauses=("M-18-maanden", "E-24-maanden", "E-houdbaarheidsdatum"),
    stage=Stage.RECIPIENT,
    marketing_only=True,
)
def stale(facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
    picked = _picked(facts, rcpt)
    if picked.record is None or not picked.stale:
        return None
    return Hit(picked.stale, evidence=_evidence(picked.record), consent_id=picked.record.id or None)


def _record_rule(rule_id: str, description: str, clauses: tuple[str, ...]) -> Any:
    def check(facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
        return _record_rule_hit(rule_id, facts, rcpt)

    check.__name__ = rule_id.replace(".", "_")
    return rule(rule_id, description, clauses=clauses, stage=Stage.RECIPIENT, marketing_only=True, from_record=True)(check)


third_party = _record_rule(
    "consent.third_party",
    "Consent source is a third party (purchased, rented, traded, borrowed, found, partner, lottery, questionnaire).",
    ("M-third-party-lists", "E-who-not"),
)
harvested = _record_rule(
    "consent.harvested",
    "The address was harvested from the web or another public place.",
    ("E-who-not",),
)
prechecked = _record_rule(
    "consent.prechecked",
    "Consent came from a pre-ticked box (clang: allowed only in an order process).",
    ("M-vooraf-aangevinkt", "E-bestelprocessen"),
)
hidden_in_terms = _record_rule(
    "consent.hidden_in_terms",
    "Consent came only through terms and conditions or a privacy statement, or its statement is vague.",
    ("M-algemene-voorwaarden", "M-vague-descriptions", "E-algemene-voorwaarden"),
)
undocumented = _record_rule(
    "consent.undocumented",
    "The record lacks the provenance a complaints desk asks for (CSA complaint procedure).",
    ("M-aantoonbaar",),
)
soft_optin_invalid = _record_rule(
    "consent.soft_optin_invalid",
    "Existing-customer basis without its conditions (similar products, informed, objection, recent purchase).",
    ("M-bestaande-klanten", "E-2-jaar-aankoop"),
)
frequency_undisclosed = _record_rule(
    "consent.frequency_undisclosed",
    "Signup form consent without the sending frequency disclosed.",
    ("E-frequentie",),
)
business_card_unannounced = _record_rule(
    "consent.business_card_unannounced",
    "Business-card consent without the note that contact by e-mail would follow.",
    ("E-business-card",),
)


def _suppression(facts: MessageFacts, rcpt: RecipientFacts, reason: str) -> Suppression | None:
    topic = _topic(facts)
    return next(
        (
            s
            for s in rcpt.suppressions
            if s.reason == reason and _scoped(s, facts) and (s.topic == ANY_TOPIC or (topic != ANY_TOPIC and s.topic == topic))
        ),
        None,
    )


@rule(
    COMPLAINT,
    "The recipient complained about this account's mail: suppressed at once.",
    clauses=("M-violation", "E-spam-reports"),
    stage=Stage.RECIPIENT,
    before_data=True,
    marketing_only=True,
)
def complaint(facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
    found = _suppression(facts, rcpt, COMPLAINT)
    if found is None:
        return None
    when = f" on {found.created_at.date()}" if found.created_at else ""
    return Hit(f"the recipient complained{when}; suppressed at scope {found.scope}", evidence=f"topic={found.topic}")


@rule(
    UNSUBSCRIBED,
    "The recipient unsubscribed at this scope or a parent scope: permanent.",
    clauses=("M-opt-out", "E-direct-permanent", "E-subscription-level"),
    stage=Stage.RECIPIENT,
    before_data=True,
    marketing_only=True,
)
def unsubscribed(facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
    found = _suppression(facts, rcpt, UNSUBSCRIBED)
    if found is None:
        return None
    when = f" on {found.created_at.date()}" if found.created_at else ""
    via = f" via {found.via}" if found.via else ""
    return Hit(
        f"the recipient unsubscribed{when}{via} at scope {found.scope}",
        evidence=f"topic={found.topic}",
    )


@rule(
    BOUNCED,
    "The recipient's address hard-bounced for this account's scope: mail to it is list hygiene gone wrong.",
    clauses=("M-18-maanden", "platform"),
    stage=Stage.RECIPIENT,
    before_data=True,
    marketing_only=True,
)
def bounced(facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
    found = _suppression(facts, rcpt, BOUNCED)
    if found is None:
        return None
    when = f" on {found.created_at.date()}" if found.created_at else ""
    return Hit(f"the address hard-bounced{when}; suppressed at scope {found.scope}", evidence=f"topic={found.topic}")


# Suppressions first: an unsubscribe, complaint or dead address is the clearest reason to give at RCPT.
RULES = (
    unsubscribed,
    complaint,
    bounced,
    missing,
    stale,
    third_party,
    harvested,
    prechecked,
    hidden_in_terms,
    undocumented,
    soft_optin_invalid,
    frequency_undisclosed,
    business_card_unannounced,
)



def record_rule_ids(rules: Iterable[Rule]) -> tuple[str, ...]:
    """The rules the importer checks per row: those that decide from the consent record alone."""
    return tuple(r.id for r in rules if r.from_record)


RECORD_RULE_IDS = record_rule_ids(RULES)
