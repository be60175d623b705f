"""The one engine: profile actions, overrides, monitor mode, precedence of outcomes, every hit and
miss kept; and the first rules (relay.denied, account.*, identity.sender_not_authorized, stream.unknown)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from policies.engine import Engine
from policies.facts import AccountFacts, ClientFacts, MessageFacts, RecipientFacts, StreamFacts
from policies.findings import Action, Hit, Outcome, Stage
from policies.message import parse_message
from policies.profiles import ENFORCED_IN_MONITOR_MODE, PROFILE_NAMES, Profile, ProfileError, fixed_action_errors, load_profile
from policies.registry import ALL_RULES
from policies.rule import rule

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
SHOP = AccountFacts(id="shop", name="Shop", domains=frozenset({"shop.example"}))
ORDERS = StreamFacts("orders", "transactional", "orders")
NEWS = StreamFacts("newsletter", "marketing", "newsletter")


def facts(**changes: object) -> MessageFacts:
    values: dict[str, object] = {"account": SHOP, "mail_from": "orders@shop.example", "now": NOW, "stream": ORDERS}
    values.update(changes)
    return MessageFacts(**values)  # type: ignore[arg-type]


def flag(rule_id: str, stage: Stage = Stage.MESSAGE, marketing_only: bool = False) -> object:
    """A rule that hits when its id is in the facts' params["hits"]."""

    def check(f: MessageFacts, rcpt: RecipientFacts | None = None) -> Hit | None:
        hits = f.params.get("hits", ())
        if rcpt is not None:
            return Hit(f"{rule_id} for {rcpt.address}") if (rule_id, rcpt.address) in hits else None
        return Hit(f"{rule_id} hit", evidence="e") if rule_id in hits else None

    return rule(rule_id, f"test rule {rule_id}", clauses=("test",), stage=stage, marketing_only=marketing_only)(check)


A, B, C = flag("t.reject"), flag("t.quarantine"), flag("t.tempfail")
R = flag("t.rcpt", Stage.RECIPIENT)
M = flag("t.marketing", Stage.MESSAGE, marketing_only=True)
PROFILE = Profile(
    "test",
    {
        "t.reject": Action.REJECT, "t.quarantine": Action.QUARANTINE, "t.tempfail": Action.TEMPFAIL,
        "t.rcpt": Action.REJECT, "t.marketing": Action.REJECT,
        "account.suspended": Action.REJECT, "stream.unknown": Action.REJECT,
    },
)
ENGINE = Engine([A, B, C, R, M], PROFILE)  # type: ignore[list-item]


def decide(*hits: object, profile: Profile = PROFILE, rcpts: tuple[str, ...] = ("a@x.nl",), stream: StreamFacts = ORDERS) -> object:
    engine = Engine([A, B, C, R, M], profile)  # type: ignore[list-item]
    return engine.message(facts(params={"hits": hits}, stream=stream), [RecipientFacts(r) for r in rcpts])


def test_nothing_hits_delivers_and_keeps_every_miss() -> None:
    verdict = decide()
    assert verdict.outcome is Outcome.DELIVER and verdict.findings == ()
    assert set(verdict.misses) == {"t.reject", "t.quarantine", "t.tempfail", "t.rcpt"}


def test_precedence_tempfail_reject_quarantine() -> None:
    assert decide("t.quarantine").outcome is Outcome.QUARANTINE
    assert decide("t.quarantine", "t.reject").outcome is Outcome.REJECT
    verdict = decide("t.quarantine", "t.reject", "t.tempfail")
    assert verdict.outcome is Outcome.TEMPFAIL and verdict.deciding.rule == "t.tempfail"
    assert verdict.rule_ids == ("t.reject", "t.quarantine", "t.tempfail")  # every hit recorded


def test_per_recipient_reject_refuses_only_that_recipient() -> None:
    verdict = decide(("t.rcpt", "b@x.nl"), rcpts=("a@x.nl", "b@x.nl"))
    assert verdict.outcome is Outcome.DELIVER and set(verdict.refused) == {"b@x.nl"}
    verdict = decide(("t.rcpt", "a@x.nl"), ("t.rcpt", "b@x.nl"), rcpts=("a@x.nl", "b@x.nl"))
    assert verdict.outcome is Outcome.REJECT and verdict.deciding.recipient == "a@x.nl"


def test_overrides_and_off_rules_are_not_run() -> None:
    profile = PROFILE.with_site_config({"t.reject": "off", "t.quarantine": "reject"})
    verdict = decide("t.reject", "t.quarantine", profile=profile)
    assert verdict.outcome is Outcome.REJECT and verdict.deciding.rule == "t.quarantine"
    assert "t.reject" not in verdict.misses and "t.reject" not in verdict.rule_ids


def test_monitor_mode_logs_instead_of_rejecting() -> None:
    profile = PROFILE.with_site_config({}, mode="monitor")
    verdict = decide("t.reject", "t.quarantine", profile=profile)
    assert verdict.outcome is Outcome.DELIVER
    assert [f.action for f in verdict.findings] == [Action.MONITOR, Action.MONITOR]
    assert decide("t.tempfail", profile=profile).outcome is Outcome.TEMPFAIL  # monitor never drops a tempfail


def test_monitor_mode_keeps_a_suspension_and_an_unknown_stream() -> None:
    # policy: mailpro M-violation ("account … opschorten"): an admin's suspension is not a roll-out switch
    profile = PROFILE.with_site_config({}, mode="monitor")
    assert profile.action("account.suspended") is Action.REJECT
    assert profile.action("stream.unknown") is Action.REJECT
    assert profile.action("t.reject") is Action.MONITOR


def test_per_rule_monitor_override() -> None:
    verdict = decide("t.reject", profile=PROFILE.with_site_config({"t.reject": "monitor"}))
    assert verdict.outcome is Outcome.DELIVER and verdict.findings[0].action is Action.MONITOR


def test_marketing_only_rules_skip_transactional_streams() -> None:
    assert decide("t.marketing").outcome is Outcome.DELIVER
    assert decide("t.marketing", stream=NEWS).outcome is Outcome.REJECT


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profiles_name_every_rule(name: str) -> None:
    profile = load_profile(name)
    known = {r.id for r in ALL_RULES}
    assert known - set(profile.actions) == set()  # a rule missing from a profile would silently be off
    assert set(profile.actions) - known <= {a for a in profile.actions if a.startswith("account.")}


# --- the first rules, through the shipped profiles ---

REAL = Engine(ALL_RULES, load_profile("strict"))


def test_relay_denied_when_client_not_permitted() -> None:
    # policy: platform (relay.denied: decided first, nothing overrides it)
    verdict = REAL.client(ClientFacts(ip="192.0.2.9"), "anna@example.nl")
    assert verdict.outcome is Outcome.REJECT and verdict.deciding.rule == "relay.denied"
    assert verdict.refused == {"anna@example.nl": verdict.deciding}
    permitted = REAL.client(ClientFacts(ip="192.0.2.9", account="shop"), "anna@example.nl")
    assert permitted.outcome is Outcome.DELIVER and permitted.misses == ("relay.denied",)


def test_relay_denied_takes_its_action_from_the_profile() -> None:
    # policy: platform (relay.denied): the engine asks the profile, like for every rule
    marked = Profile("marked", {"relay.denied": Action.TEMPFAIL})  # built directly: not a loadable profile
    verdict = Engine(ALL_RULES, marked).client(ClientFacts(ip="192.0.2.9"), "anna@example.nl")
    assert verdict.outcome is Outcome.TEMPFAIL and verdict.deciding.action is Action.TEMPFAIL


@pytest.mark.parametrize("value", ["monitor", "off", "quarantine", "tempfail"])
def test_no_profile_override_grants_relay_permission(value: str) -> None:
    # policy: platform (relay.denied: nothing can override it): refused loudly, never ignored
    with pytest.raises(ProfileError, match=r"relay\.denied must be 'reject'"):
        load_profile("strict").with_site_config({"relay.denied": value})
    assert load_profile("strict").with_site_config({"relay.denied": "reject"}).action("relay.denied") is Action.REJECT


def test_monitor_mode_keeps_relay_denied_enforced() -> None:
    # policy: platform (relay.denied): the monitor roll-out never opens the relay
    monitored = load_profile("strict").with_site_config({}, mode="monitor")
    verdict = Engine(ALL_RULES, monitored).client(ClientFacts(ip="192.0.2.9"), "anna@example.nl")
    assert verdict.outcome is Outcome.REJECT


def test_every_fixed_action_is_enforced_in_monitor_mode_and_set_by_every_shipped_profile() -> None:
    fixed = [r for r in ALL_RULES if r.fixed_action is not None]
    assert [r.id for r in fixed] == ["relay.denied"]
    for r in fixed:
        assert r.id in ENFORCED_IN_MONITOR_MODE
        for name in PROFILE_NAMES:
            assert load_profile(name).actions[r.id] is r.fixed_action
    assert fixed_action_errors({}) == ["relay.denied must be 'reject', not 'off': nothing may grant relay permission (docs/POLICY.md, platform rules)"]


def test_account_suspended_and_paused() -> None:
    # policy: mailpro M-violation, clang E-toegang-ontzeggen (account.suspended)
    suspended = REAL.session(facts(account=AccountFacts("shop", domains=SHOP.domains, state="suspended", state_reason="x")))
    assert suspended.outcome is Outcome.REJECT and suspended.deciding.rule == "account.suspended"
    # policy: clang E-campagne-gepauzeerd (account.paused)
    paused = REAL.session(facts(account=AccountFacts("shop", domains=SHOP.domains, state="paused")))
    assert paused.outcome is Outcome.TEMPFAIL and paused.deciding.rule == "account.paused"
    stream_paused = AccountFacts("shop", domains=SHOP.domains, paused_streams=frozenset({"orders"}))
    assert REAL.session(facts(account=stream_paused)).deciding.rule == "account.paused"
    assert REAL.session(facts(account=stream_paused, stream=NEWS)).outcome is Outcome.DELIVER


def test_sender_not_authorized_envelope_and_header() -> None:
    # policy: mailpro M-echte-identiteit, clang E-werkelijke-identiteit (identity.sender_not_authorized)
    assert REAL.session(facts(mail_from="x@other.example")).deciding.rule == "identity.sender_not_authorized"
    assert REAL.session(facts(mail_from="x@SHOP.example".lower())).outcome is Outcome.DELIVER
    parsed = parse_message(b"From: Shop <x@other.example>\r\nSubject: hi\r\n\r\nbody\r\n")
    hit = [f.rule for f in REAL.message(facts(message=parsed), []).findings]
    assert "identity.sender_not_authorized" in hit


def test_unknown_stream() -> None:
    # policy: platform (stream.unknown)
    parsed = parse_message(b"From: Shop <x@shop.example>\r\nSubject: hi\r\n\r\nbody\r\n")
    verdict = REAL.message(facts(stream=None, stream_requested="promo", message=parsed), [])
    assert "stream.unknown" in verdict.rule_ids
    finding = next(f for f in verdict.findings if f.rule == "stream.unknown")
    assert finding.action is Action.REJECT and "promo" in finding.detail


# --- account rules (complaint enforcement): decided by the engine, their action from the profile ---


def test_account_rules_take_their_action_from_the_profile() -> None:
    from policies.rules.complaints import ComplaintRateFacts, complaint_rate

    over = ComplaintRateFacts(account="shop", complaints=5, delivered=100, threshold=0.003, min_complaints=3, window_hours=24, spam_trap_hits=0)
    under = ComplaintRateFacts(account="shop", complaints=0, delivered=100, threshold=0.003, min_complaints=3, window_hours=24, spam_trap_hits=0)
    finding = REAL.account(complaint_rate, over)
    assert finding is not None and finding.rule == "account.complaint_rate" and finding.action is Action.PAUSE
    assert REAL.account(complaint_rate, under) is None
    monitored = load_profile("strict").with_site_config({"account.complaint_rate": "monitor"})
    assert Engine(ALL_RULES, monitored).account(complaint_rate, over).action is Action.MONITOR  # type: ignore[union-attr]
    off = load_profile("strict").with_site_config({"account.complaint_rate": "off"})
    assert Engine(ALL_RULES, off).account(complaint_rate, over) is None  # off: not run
    with pytest.raises(ValueError, match="not an account rule"):
        REAL.account(ALL_RULES[0], over)
