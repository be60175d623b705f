"""Complaint enforcement rules: the 24 h deadline, the complaint rate at its boundary, the message
rate limit; each test names the clause it enforces."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from policies.engine import Engine
from policies.facts import AccountFacts, MessageFacts, ShellFacts
from policies.findings import Action, Outcome, Stage
from policies.profiles import PROFILE_NAMES, load_profile
from policies.rules import complaints
from policies.rules.complaints import ComplaintRateFacts, OpenComplaint, UnansweredFacts

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
SHOP = AccountFacts(id="shop", name="Shop")


def open_complaint(cid: str, hours_ago: float, deadline_hours: float = 24) -> OpenComplaint:
    received = NOW - timedelta(hours=hours_ago)
    return OpenComplaint(cid, received, received + timedelta(hours=deadline_hours))


def rate(complaints_: int, delivered: int, *, threshold: float = 0.003, minimum: int = 3) -> ComplaintRateFacts:
    return ComplaintRateFacts("shop", complaints_, delivered, threshold, minimum, 24)


# --- account.complaint_unanswered ------------------------------------------------------------


def test_unanswered_complaint_suspends_after_24_hours() -> None:
    # policy: mailpro M-violation ("Als we binnen 24 uur geen feedback … ontvangen, kunnen we het
    # betreffende account opschorten")
    facts = UnansweredFacts("shop", (open_complaint("7", hours_ago=24),), NOW)
    hit = complaints.complaint_unanswered.check(facts)
    assert hit is not None
    assert hit.detail == "complaint 7 not acknowledged within 24 h"
    assert hit.evidence == "7"


def test_complaint_within_its_deadline_is_no_violation() -> None:
    # policy: mailpro M-violation (24 hours for the customer's feedback)
    facts = UnansweredFacts("shop", (open_complaint("7", hours_ago=23.99),), NOW)
    assert complaints.complaint_unanswered.check(facts) is None
    assert complaints.complaint_unanswered.check(UnansweredFacts("shop", (), NOW)) is None


def test_unanswered_names_the_oldest_overdue_and_counts_the_rest() -> None:
    # policy: mailpro M-violation
    facts = UnansweredFacts(
        "shop",
        (open_complaint("9", hours_ago=30), open_complaint("8", hours_ago=50), open_complaint("10", hours_ago=1)),
        NOW,
    )
    hit = complaints.complaint_unanswered.check(facts)
    assert hit is not None
    assert hit.detail == "complaint 8 not acknowledged within 24 h (and 1 more)"
    assert hit.evidence == "8,9"


def test_configured_deadline_is_named() -> None:
    # policy: mailpro M-violation (the 24 hours are configurable: ack_deadline_hours)
    facts = UnansweredFacts("shop", (open_complaint("3", hours_ago=2, deadline_hours=1.5),), NOW)
    hit = complaints.complaint_unanswered.check(facts)
    assert hit is not None and "within 1.5 h" in hit.detail


# --- account.complaint_rate ------------------------------------------------------------------


def test_complaint_rate_at_the_boundary_is_not_over_it() -> None:
    # policy: mailpro M-onmiddellijk-opgeschort ("krijgen hun account onmiddellijk opgeschort"),
    # clang E-campagne-gepauzeerd: 0.3% of 1000 delivered is 3 complaints — at the limit, not over.
    assert complaints.complaint_rate.check(rate(3, 1000)) is None
    hit = complaints.complaint_rate.check(rate(4, 1000))
    assert hit is not None
    assert hit.detail == (
        "4 complaints on 1000 delivered recipients in 24 h (0.40%, limit 0.30% with at least 3)"
    )
    assert hit.evidence == "complaints=4 delivered=1000"


def test_complaint_rate_needs_the_minimum_number_of_complaints() -> None:
    # policy: mailpro M-onmiddellijk-opgeschort (a spike, not one unlucky complaint: at least 3)
    assert complaints.complaint_rate.check(rate(2, 10)) is None  # 20%, but only 2
    assert complaints.complaint_rate.check(rate(3, 10)) is not None
    assert complaints.complaint_rate.check(rate(3, 0)) is not None  # complaints without deliveries
    assert complaints.complaint_rate.check(rate(0, 0, minimum=0)) is None


def test_complaint_rate_boundary_holds_for_other_thresholds() -> None:
    # policy: clang E-campagne-gepauzeerd (the threshold as configured, compared as the decimal written)
    assert complaints.complaint_rate.check(rate(3, 3000, threshold=0.001)) is None
    assert complaints.complaint_rate.check(rate(4, 3000, threshold=0.001)) is not None
    assert complaints.complaint_rate.check(rate(7, 700, threshold=0.01)) is None
    assert complaints.complaint_rate.check(rate(8, 700, threshold=0.01)) is not None


# --- account.rate_limited --------------------------------------------------------------------


def session_facts(**shell: object) -> MessageFacts:
    return MessageFacts(account=SHOP, mail_from="news@shop.example", now=NOW, shell=ShellFacts(**shell))  # type: ignore[arg-type]


def test_rate_limited_when_the_shell_found_the_bucket_empty() -> None:
    # policy: platform (protection of the relay and its upstream; POLICY.md account.rate_limited)
    hit = complaints.rate_limited.check(session_facts(rate_limited=True, rate_limit_per_minute=60))
    assert hit is not None
    assert hit.detail == "Account shop is over its rate of 60 messages per minute; try again later"
    assert complaints.rate_limited.check(session_facts()) is None
    # The bucket's size alone is no finding: only the shell's report of an empty bucket is.
    assert complaints.rate_limited.check(session_facts(rate_limit_per_minute=60)) is None


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_rate_limited_tempfails_in_every_profile(profile: str) -> None:
    # policy: platform — 451 4.7.1 so the client keeps its mail and retries
    engine = Engine(complaints.RULES, load_profile(profile))
    verdict = engine.session(session_facts(rate_limited=True))
    assert verdict.outcome is Outcome.TEMPFAIL
    assert verdict.deciding is not None and verdict.deciding.rule == "account.rate_limited"
    assert engine.session(session_facts()).outcome is Outcome.DELIVER


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_profiles_suspend_on_unanswered_and_pause_on_rate(profile: str) -> None:
    # policy: mailpro M-violation (suspend), clang E-campagne-gepauzeerd (pause a running campaign)
    loaded = load_profile(profile)
    assert loaded.action("account.complaint_unanswered") is Action.SUSPEND
    assert loaded.action("account.complaint_rate") is Action.PAUSE


def test_account_rules_run_outside_a_transaction() -> None:
    # The engine never runs them at MAIL FROM or DATA: the complaint service does, on its own facts.
    assert complaints.complaint_unanswered.stage is Stage.ACCOUNT
    assert complaints.complaint_rate.stage is Stage.ACCOUNT
    assert complaints.rate_limited.stage is Stage.SESSION
    assert [r.id for r in complaints.RULES] == [
        "account.complaint_unanswered",
        "account.complaint_rate",
        "account.rate_limited",
    ]
