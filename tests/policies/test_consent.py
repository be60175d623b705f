"""Consent and suppression rules, one test per rule and profile, each naming its clause."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.engine import Engine
from policies.facts import AccountFacts, ConsentRecord, MessageFacts, RecipientFacts, StreamFacts, Suppression
from policies.findings import Action, Outcome, ReliedConsent
from policies.profiles import load_profile
from policies.rules import consent
from policies.rules.consent import covering_consent, record_findings

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
ADDR = "anna@example.nl"
SHOP = AccountFacts(id="shop", parent="holding", domains=frozenset({"shop.example"}))
NEWS = StreamFacts("newsletter", "marketing", "newsletter")


def good(**changes: object) -> ConsentRecord:
    """A fully documented double opt-in from the account's own signup form."""
    base = ConsentRecord(
        email=ADDR,
        scope="shop",
        topic="*",
        basis="double_opt_in",
        source="signup_form",
        collected_at=NOW - timedelta(days=30),
        source_url="https://shop.example/signup",
        source_ip="192.0.2.7",
        confirmed_at=NOW - timedelta(days=30, hours=-1),
        statement_text="Yes, send me the Shop newsletter every week",
        frequency_disclosed=True,
        id="1",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def customer(**changes: object) -> ConsentRecord:
    base = ConsentRecord(
        email=ADDR,
        scope="shop",
        topic="newsletter",
        basis="existing_customer",
        source="customer_purchase",
        collected_at=NOW - timedelta(days=60),
        customer_relationship="bought a bicycle",
        last_purchase_at=NOW - timedelta(days=60),
        informed_at_collection=True,
        objection_offered=True,
        id="2",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def facts(profile: str = "strict", stream: StreamFacts | None = NEWS, account: AccountFacts = SHOP) -> MessageFacts:
    return MessageFacts(account=account, mail_from="news@shop.example", now=NOW, params=load_profile(profile).params, stream=stream)


def run(profile: str, *consents: ConsentRecord, suppressions: tuple[Suppression, ...] = (), stream: StreamFacts | None = NEWS, before_data: bool = False) -> list[str]:
    """Rule ids that refuse the recipient under this profile."""
    engine = Engine(consent.RULES, load_profile(profile))
    rcpt = RecipientFacts(ADDR, tuple(consents), suppressions)
    verdict = engine.recipient(facts(profile, stream), rcpt, before_data=before_data)
    return [f.rule for f in verdict.findings if f.action is Action.REJECT]


PROFILES = ("mailpro", "clang", "strict")


@pytest.mark.parametrize("profile", PROFILES)
def test_documented_double_opt_in_passes(profile: str) -> None:
    assert run(profile, good()) == []


# --- consent.missing ---


@pytest.mark.parametrize("profile", PROFILES)
def test_missing_without_any_consent(profile: str) -> None:
    # policy: mailpro M-prior-consent, clang E-who-not
    assert run(profile) == ["consent.missing"]


def test_missing_is_decided_before_data() -> None:
    # policy: mailpro M-prior-consent ("ongeacht of de ontvanger een consument of een organisatie is")
    assert consent.missing.before_data
    assert run("strict", before_data=True) == ["consent.missing"]


def test_missing_other_scope_does_not_cover() -> None:
    # policy: clang E-who-not (consent must be given to the sender itself)
    assert run("strict", good(scope="othershop")) == ["consent.missing"]


def test_parent_scope_consent_covers_account() -> None:
    # policy: clang E-subscription-level (consent at the parent organisation's level)
    assert run("strict", good(scope="holding")) == []


def test_missing_other_topic_does_not_cover() -> None:
    # policy: clang E-who-not ("over een specifiek onderwerp")
    hits = run("strict", good(topic="events"))
    assert hits == ["consent.missing"]


def test_topic_specific_consent_covers_its_stream() -> None:
    # policy: clang E-who-not (consent about a specific topic)
    assert run("strict", good(topic="newsletter")) == []


def test_revoked_consent_counts_as_none() -> None:
    # policy: mailpro M-prior-consent
    record = good(revoked_at=NOW - timedelta(days=1), revoked_via="admin")
    engine = Engine(consent.RULES, load_profile("strict"))
    verdict = engine.recipient(facts(), RecipientFacts(ADDR, (record,)), before_data=False)
    found = [f for f in verdict.findings if f.rule == "consent.missing"]
    assert found and "revoked" in found[0].detail and "admin" in found[0].detail


def test_unknown_topic_at_rcpt_any_consent_of_scope_counts() -> None:
    # policy: mailpro M-prior-consent: only "no consent at all for this scope" is final before DATA
    unknown = StreamFacts("", "marketing", "*")
    assert run("strict", good(topic="events"), stream=unknown, before_data=True) == []
    assert run("strict", stream=unknown, before_data=True) == ["consent.missing"]


def test_transactional_stream_skips_consent_rules() -> None:
    # policy: mailpro M-prior-consent applies to marketing; transactional mail is exempt (docs/SPEC.md §4)
    assert run("strict", stream=StreamFacts("orders", "transactional", "orders")) == []


# --- consent.stale: 18 months (mailpro, strict), 24 months (clang) ---


def _months_ago(months: int, days: int) -> datetime:
    return consent._months_before(NOW, months) + timedelta(days=days)


@pytest.mark.parametrize(("profile", "months"), [("mailpro", 18), ("strict", 18), ("clang", 24)])
def test_stale_boundary(profile: str, months: int) -> None:
    # policy: mailpro M-18-maanden ("langer dan 18 maanden geen contact"), clang E-24-maanden
    fresh = good(collected_at=_months_ago(months, 1), confirmed_at=_months_ago(months, 1))
    old = good(collected_at=_months_ago(months, -1), confirmed_at=_months_ago(months, -1))
    assert run(profile, fresh) == []
    assert run(profile, old) == ["consent.stale"]


def test_stale_clang_allows_20_months_mailpro_does_not() -> None:
    # policy: clang E-houdbaarheidsdatum (2 years) vs mailpro M-18-maanden
    record = good(collected_at=_months_ago(20, 0), confirmed_at=_months_ago(20, 0))
    assert run("clang", record) == []
    assert run("mailpro", record) == ["consent.stale"]


def test_stale_revived_by_interaction() -> None:
    # policy: mailpro M-18-maanden: the limit runs from the last contact
    record = good(collected_at=_months_ago(30, 0), confirmed_at=_months_ago(30, 0), last_interaction_at=NOW - timedelta(days=3))
    assert run("mailpro", record) == []


def test_stale_without_any_date() -> None:
    # policy: clang E-houdbaarheidsdatum
    hits = run("strict", good(collected_at=None, confirmed_at=None))
    assert "consent.stale" in hits


# --- consent.third_party ---


@pytest.mark.parametrize("source", sorted(consent.THIRD_PARTY_SOURCES))
@pytest.mark.parametrize("profile", PROFILES)
def test_third_party_sources(profile: str, source: str) -> None:
    # policy: mailpro M-third-party-lists, clang E-who-not ("gekocht, geleend, gehuurd")
    assert "consent.third_party" in run(profile, good(source=source))


# --- consent.harvested ---


@pytest.mark.parametrize("profile", PROFILES)
def test_harvested(profile: str) -> None:
    # policy: clang E-who-not ("geoogst via internet")
    assert "consent.harvested" in run(profile, good(source="harvested"))


# --- consent.prechecked ---


@pytest.mark.parametrize("profile", ["mailpro", "strict"])
def test_prechecked_never_allowed(profile: str) -> None:
    # policy: mailpro M-vooraf-aangevinkt ("vooraf aangevinkte vakjes niet toegestaan")
    assert run(profile, good(prechecked=True)) == ["consent.prechecked"]
    assert run(profile, good(prechecked=True, source="order_process")) == ["consent.prechecked"]


def test_prechecked_clang_allowed_in_order_process_only() -> None:
    # policy: clang E-bestelprocessen ("uitsluitend in bestelprocessen van tevoren aangevinkt")
    assert run("clang", good(prechecked=True, source="order_process")) == []
    assert run("clang", good(prechecked=True, source="signup_form")) == ["consent.prechecked"]


def test_prechecked_mailpro_soft_optin_exception() -> None:
    # policy: mailpro M-bestaande-klanten (the one exception to pre-ticked boxes)
    assert run("mailpro", customer(prechecked=True)) == []


def _ordered(**changes: object) -> ConsentRecord:
    """An existing customer whose pre-ticked box sat in the shop's order process (online: URL and IP)."""
    return customer(source="order_process", source_url="https://shop.example/checkout", source_ip="192.0.2.8", **changes)


def test_prechecked_clang_existing_customer_outside_order_process() -> None:
    # policy: clang E-bestelprocessen ("Dit hokje mag uitsluitend in bestelprocessen van tevoren zijn
    # aangevinkt"): clang knows no existing-customer exception for pre-ticked boxes
    assert run("clang", customer(prechecked=True)) == ["consent.prechecked"]
    assert run("clang", _ordered(prechecked=True)) == []


def test_prechecked_strict_needs_both_exceptions() -> None:
    # policy: mailpro M-vooraf-aangevinkt + M-bestaande-klanten, clang E-bestelprocessen: strict takes
    # the stricter of both, so a pre-ticked box counts only for an existing customer in an order process
    assert run("strict", customer(prechecked=True)) == ["consent.prechecked"]
    assert run("strict", good(prechecked=True, source="order_process")) == ["consent.prechecked"]
    assert run("strict", _ordered(prechecked=True)) == []


@pytest.mark.parametrize(
    ("profile", "shop_customer", "ordered_customer", "ordered_opt_in"),
    [
        # policy: mailpro M-vooraf-aangevinkt (only the existing-customer soft opt-in is exempt)
        ("mailpro", True, True, False),
        # policy: clang E-bestelprocessen (only an order process is exempt)
        ("clang", False, True, True),
        # policy: strict = mailpro M-vooraf-aangevinkt and clang E-bestelprocessen together
        ("strict", False, True, False),
    ],
)
def test_prechecked_record_findings_per_profile(profile: str, shop_customer: bool, ordered_customer: bool, ordered_opt_in: bool) -> None:
    params = load_profile(profile).params
    ordered_opt_in_record = good(prechecked=True, source="order_process")
    for record, allowed in (
        (customer(prechecked=True), shop_customer),
        (_ordered(prechecked=True), ordered_customer),
        (ordered_opt_in_record, ordered_opt_in),
    ):
        found = [rule_id for rule_id, _ in record_findings(record, params)]
        assert ("consent.prechecked" not in found) is allowed, (profile, record.basis, record.source)


def test_prechecked_detail_names_what_the_profile_allows() -> None:
    # policy: clang E-bestelprocessen, mailpro M-bestaande-klanten
    details = {
        name: dict(record_findings(good(prechecked=True), load_profile(name).params))["consent.prechecked"]
        for name in PROFILES
    }
    assert "order_process" in details["clang"] and "existing_customer" not in details["clang"]
    assert "existing_customer" in details["mailpro"] and "order_process" not in details["mailpro"]
    assert "existing_customer" in details["strict"] and "order_process" in details["strict"]
    assert "never" in dict(record_findings(good(prechecked=True), {}))["consent.prechecked"]


# --- consent.hidden_in_terms ---


@pytest.mark.parametrize("profile", PROFILES)
def test_hidden_in_terms_source(profile: str) -> None:
    # policy: mailpro M-algemene-voorwaarden, clang E-algemene-voorwaarden
    assert "consent.hidden_in_terms" in run(profile, good(source="terms_and_conditions"))


@pytest.mark.parametrize(
    "statement",
    [
        "U stemt ermee in om e-mailberichten van deze organisatie en geselecteerde partners te ontvangen",
        "By accepting our Terms and Conditions you agree to receive offers",
        "Zie ons privacy statement",
    ],
)
def test_hidden_in_terms_vague_statement(statement: str) -> None:
    # policy: mailpro M-vague-descriptions ("deze organisatie en (geselecteerde) partners")
    assert run("mailpro", good(statement_text=statement)) == ["consent.hidden_in_terms"]


# --- consent.undocumented ---


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"collected_at": None, "last_interaction_at": NOW}, "collected_at"),
        ({"source_url": ""}, "source_url"),
        ({"source_ip": ""}, "source_ip"),
        ({"confirmed_at": None}, "confirmed_at"),
        ({"statement_text": "  "}, "statement_text"),
    ],
)
@pytest.mark.parametrize("profile", PROFILES)
def test_undocumented(profile: str, change: dict[str, object], field: str) -> None:
    # policy: mailpro M-aantoonbaar (CSA complaint questionnaire)
    record = good(**change)
    assert run(profile, record) == ["consent.undocumented"]
    assert field in dict(record_findings(record, {}))["consent.undocumented"]


def test_undocumented_customer_relationship() -> None:
    # policy: mailpro M-aantoonbaar ("Aard van deze klantrelatie")
    assert run("strict", customer(customer_relationship="")) == ["consent.undocumented"]


def test_single_opt_in_needs_no_confirmation() -> None:
    # policy: mailpro M-aantoonbaar (confirmation time only for double opt-in)
    assert run("strict", good(basis="opt_in", confirmed_at=None)) == []


# --- consent.soft_optin_invalid: purchase within 18 (mailpro, strict) / 24 months (clang) ---


@pytest.mark.parametrize("profile", PROFILES)
def test_soft_optin_valid(profile: str) -> None:
    # policy: mailpro M-bestaande-klanten, clang E-2-jaar-aankoop
    assert run(profile, customer()) == []


@pytest.mark.parametrize(
    "change",
    [{"informed_at_collection": False}, {"objection_offered": False}, {"last_purchase_at": None}, {"topic": "*"}],
)
@pytest.mark.parametrize("profile", PROFILES)
def test_soft_optin_conditions(profile: str, change: dict[str, object]) -> None:
    # policy: mailpro M-bestaande-klanten ("mogelijkheid krijgen om bezwaar te maken"), clang E-2-jaar-aankoop
    assert "consent.soft_optin_invalid" in run(profile, customer(**change))


@pytest.mark.parametrize(("profile", "months"), [("mailpro", 18), ("strict", 18), ("clang", 24)])
def test_soft_optin_purchase_limit_boundary(profile: str, months: int) -> None:
    # policy: clang E-2-jaar-aankoop ("binnen de afgelopen 2 jaar een aankoop"), mailpro M-18-maanden
    recent = _months_ago(months, 1)
    old = _months_ago(months, -1)
    fresh = NOW - timedelta(days=1)  # recent interaction keeps the consent itself alive
    assert run(profile, customer(last_purchase_at=recent, collected_at=recent, last_interaction_at=fresh)) == []
    assert run(profile, customer(last_purchase_at=old, collected_at=old, last_interaction_at=fresh)) == [
        "consent.soft_optin_invalid"
    ]


def test_soft_optin_purchase_limit_not_checked_without_now() -> None:
    # policy: clang E-2-jaar-aankoop: a later purchase revives it, so the importer keeps old purchases
    old = customer(last_purchase_at=NOW - timedelta(days=3000), collected_at=NOW - timedelta(days=3000))
    assert record_findings(old, load_profile("clang").params) == []
    assert [r for r, _ in record_findings(old, load_profile("clang").params, now=NOW)] == ["consent.soft_optin_invalid"]


# --- consent.frequency_undisclosed: off in mailpro ---


def test_frequency_undisclosed_clang_and_strict() -> None:
    # policy: clang E-frequentie ("met welke frequentie")
    record = good(frequency_disclosed=False)
    assert run("clang", record) == ["consent.frequency_undisclosed"]
    assert run("strict", record) == ["consent.frequency_undisclosed"]


def test_frequency_undisclosed_off_in_mailpro() -> None:
    # policy: mailpro has no frequency clause (E-frequentie is clang's)
    assert run("mailpro", good(frequency_disclosed=False)) == []


# --- consent.business_card_unannounced: off in mailpro ---


def _card(**changes: object) -> ConsentRecord:
    base = good(basis="business_card", source="business_card", source_url="", source_ip="", confirmed_at=None, statement_text="", email_contact_announced=True)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_business_card_announced_passes() -> None:
    # policy: clang E-business-card
    assert run("clang", _card()) == []


@pytest.mark.parametrize("profile", ["clang", "strict"])
def test_business_card_unannounced(profile: str) -> None:
    # policy: clang E-business-card ("vermeld dat er contact via e-mail zal plaatsvinden")
    assert run(profile, _card(email_contact_announced=False)) == ["consent.business_card_unannounced"]


def test_business_card_unannounced_off_in_mailpro() -> None:
    # policy: mailpro has no business-card clause (E-business-card is clang's)
    assert run("mailpro", _card(email_contact_announced=False)) == []


# --- suppressions ---


def _sup(reason: str, scope: str = "shop", topic: str = "*") -> Suppression:
    return Suppression(ADDR, scope, topic, reason, via="one_click", created_at=NOW - timedelta(days=1))


@pytest.mark.parametrize("profile", PROFILES)
def test_unsubscribed(profile: str) -> None:
    # policy: mailpro M-opt-out, clang E-direct-permanent ("direct en permanent verwijdert")
    assert run(profile, good(), suppressions=(_sup(consent.UNSUBSCRIBED),), before_data=True) == ["suppression.unsubscribed"]


def test_unsubscribed_at_parent_scope() -> None:
    # policy: clang E-subscription-level ("afmelden op het niveau van het moederbedrijf")
    assert run("strict", good(scope="holding"), suppressions=(_sup(consent.UNSUBSCRIBED, scope="holding"),)) == [
        "suppression.unsubscribed"
    ]


def test_unsubscribed_other_topic_does_not_apply() -> None:
    # policy: clang E-subscription-level (unsubscribe at the level of the subscription)
    sup = _sup(consent.UNSUBSCRIBED, topic="events")
    assert run("strict", good(), suppressions=(sup,)) == []
    assert run("strict", good(), suppressions=(_sup(consent.UNSUBSCRIBED, topic="newsletter"),)) == [
        "suppression.unsubscribed"
    ]


def test_unsubscribed_topic_unknown_before_data_only_scope_wide() -> None:
    # policy: clang E-subscription-level
    unknown = StreamFacts("", "marketing", "*")
    assert run("strict", good(), suppressions=(_sup(consent.UNSUBSCRIBED, topic="events"),), stream=unknown, before_data=True) == []


def test_unsubscribed_other_account_does_not_apply() -> None:
    # policy: mailpro M-opt-out (per sender)
    assert run("strict", good(), suppressions=(_sup(consent.UNSUBSCRIBED, scope="other"),)) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_complaint(profile: str) -> None:
    # policy: mailpro M-violation (complaints), clang E-spam-reports
    assert consent.complaint.before_data
    assert run(profile, good(), suppressions=(_sup(consent.COMPLAINT),), before_data=True) == ["suppression.complaint"]


# --- shared helpers ---


def test_every_consent_rule_is_marketing_only_recipient_stage() -> None:
    # policy: mailpro M-prior-consent (every rule id of POLICY.md's consent table is here)
    ids = {r.id for r in consent.RULES}
    assert ids == {
        "consent.missing", "consent.stale", "consent.third_party", "consent.harvested", "consent.prechecked",
        "consent.hidden_in_terms", "consent.undocumented", "consent.soft_optin_invalid",
        "consent.frequency_undisclosed", "consent.business_card_unannounced",
        "suppression.unsubscribed", "suppression.complaint", "suppression.bounced",
    }
    assert all(r.marketing_only for r in consent.RULES)
    assert {r.id for r in consent.RULES if r.before_data} == {
        "consent.missing", "suppression.unsubscribed", "suppression.complaint", "suppression.bounced"
    }


def test_covering_consent_prefers_valid_then_specific() -> None:
    # policy: mailpro M-aantoonbaar (the relay records the consent it relied on)
    bad = good(id="9", source="purchased")
    parent = good(id="8", scope="holding")
    own = good(id="7", topic="newsletter")
    rcpt = RecipientFacts(ADDR, (bad, parent, own))
    assert covering_consent(facts(), rcpt) == own
    assert covering_consent(facts(), RecipientFacts(ADDR, (bad, parent))) == parent
    assert covering_consent(facts(), RecipientFacts(ADDR, (good(revoked_at=NOW),))) is None


def test_hit_names_the_consent_record() -> None:
    # policy: mailpro M-aantoonbaar
    engine = Engine(consent.RULES, load_profile("strict"))
    verdict = engine.recipient(facts(), RecipientFacts(ADDR, (good(id="42", source="rented"),)), before_data=False)
    assert verdict.outcome is Outcome.REJECT
    assert "42" in verdict.refused[ADDR].evidence
    assert consent.third_party.check(facts(), RecipientFacts(ADDR, (good(id="42", source="rented"),))).consent_id == "42"


def test_a_finding_carries_the_consent_id_of_its_hit() -> None:
    # policy: mailpro M-aantoonbaar
    engine = Engine(consent.RULES, load_profile("strict"))
    verdict = engine.recipient(facts(), RecipientFacts(ADDR, (good(id="42", source="rented"),)), before_data=False)
    assert verdict.refused[ADDR].consent_id == "42"
    assert "consent_id" not in verdict.refused[ADDR].as_dict()  # the stored findings keep their shape


def test_the_outcome_names_the_consent_each_permitted_recipient_relies_on() -> None:
    # policy: mailpro M-aantoonbaar (the relay records the consent it relied on, from the engine's outcome)
    engine = Engine(consent.RULES, load_profile("strict"))
    own = good(id="7", topic="newsletter")
    parent = good(id="8", scope="holding")
    long_ago = NOW - timedelta(days=800)
    carol = good(id="9", email="carol@example.nl", collected_at=long_ago, confirmed_at=long_ago)
    recipients = [
        RecipientFacts(ADDR, (parent, own)),
        RecipientFacts("bob@example.nl"),  # no consent: refused
        RecipientFacts("carol@example.nl", (carol,)),  # covered, but stale: refused
        RecipientFacts("dirk@example.nl", (good(id="10", email="dirk@example.nl", scope="holding"),)),
    ]
    verdict = engine.message(facts(), recipients)
    assert verdict.outcome is Outcome.DELIVER
    assert set(verdict.refused) == {"bob@example.nl", "carol@example.nl"}
    assert verdict.relied_on == {
        ADDR: ReliedConsent("7", "shop", "newsletter"),  # covering_consent's pick: own scope, own topic
        "dirk@example.nl": ReliedConsent("10", "holding", "*"),
    }
    # Transactional mail relies on no consent, though one covers the recipient.
    orders = StreamFacts("orders", "transactional", "orders")
    assert engine.message(facts(stream=orders), recipients[:1]).relied_on == {}
    # Every recipient refused: none relied on.
    assert engine.message(facts(), recipients[1:3]).relied_on == {}


def test_in_monitor_mode_the_outcome_names_the_consent_a_delivered_stale_copy_relied_on() -> None:
    # policy: clang E-24-maanden (monitor mode delivers, and the record still names the consent)
    engine = Engine(consent.RULES, load_profile("strict").with_site_config({}, "monitor"))
    long_ago = NOW - timedelta(days=800)
    verdict = engine.message(facts(), [RecipientFacts(ADDR, (good(id="9", collected_at=long_ago, confirmed_at=long_ago),))])
    assert verdict.outcome is Outcome.DELIVER and not verdict.refused
    assert [(f.rule, f.consent_id) for f in verdict.findings] == [("consent.stale", "9")]
    assert verdict.relied_on == {ADDR: ReliedConsent("9", "shop", "*")}


def test_months_before_clamps_day() -> None:
    # policy: mailpro M-18-maanden (calendar months)
    assert consent._months_before(datetime(2024, 8, 31, tzinfo=timezone.utc), 18) == datetime(2023, 2, 28, tzinfo=timezone.utc)


# --- the import's memo key covers everything record_findings reads ---

_DATES = st.one_of(st.none(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(timezone.utc)))


@st.composite
def _records(draw: st.DrawFn) -> ConsentRecord:
    return ConsentRecord(
        email=draw(st.sampled_from(["a@x.nl", "b@y.nl"])),
        scope=draw(st.sampled_from(["shop", "holding"])),
        topic=draw(st.sampled_from(["*", "newsletter"])),
        basis=draw(st.sampled_from(consent.BASES)),
        source=draw(st.sampled_from(consent.SOURCES)),
        collected_at=draw(_DATES),
        source_url=draw(st.sampled_from(["", "https://a.example/", "https://b.example/x"])),
        source_ip=draw(st.sampled_from(["", "192.0.2.1", "::1"])),
        confirmed_at=draw(_DATES),
        statement_text=draw(st.sampled_from(["", " ", "Weekly news", "with our partners"])),
        prechecked=draw(st.booleans()),
        frequency_disclosed=draw(st.booleans()),
        customer_relationship=draw(st.sampled_from(["", "bought a bike", "sold a car"])),
        last_purchase_at=draw(_DATES),
        informed_at_collection=draw(st.booleans()),
        objection_offered=draw(st.booleans()),
        email_contact_announced=draw(st.booleans()),
        last_interaction_at=draw(_DATES),
    )


@settings(max_examples=300, deadline=None)
@given(a=_records(), b=_records(), profile=st.sampled_from(PROFILES))
def test_record_findings_key_decides_findings(a: ConsentRecord, b: ConsentRecord, profile: str) -> None:
    # policy: mailpro M-aantoonbaar (the importer checks each record shape once)
    params = load_profile(profile).params
    if consent.record_findings_key(a) == consent.record_findings_key(b):
        assert record_findings(a, params) == record_findings(b, params)
    same_shape = replace(b, **{k: getattr(a, k) for k in ("source", "basis", "prechecked", "statement_text", "topic", "informed_at_collection", "objection_offered", "frequency_disclosed", "email_contact_announced")})
    same_shape = replace(
        same_shape,
        collected_at=None if a.collected_at is None else (b.collected_at or NOW),
        confirmed_at=None if a.confirmed_at is None else (b.confirmed_at or NOW),
        last_purchase_at=None if a.last_purchase_at is None else (b.last_purchase_at or NOW),
        source_url=a.source_url and (b.source_url or "https://c.example/"),
        source_ip=a.source_ip and (b.source_ip or "192.0.2.9"),
        customer_relationship=a.customer_relationship.strip() and (b.customer_relationship.strip() or "rented a van"),
    )
    assert consent.record_findings_key(same_shape) == consent.record_findings_key(a)
    assert record_findings(same_shape, params) == record_findings(a, params)


# --- which rules the importer checks per row: a property of the rule, not a position in RULES ---


def test_record_rule_ids_are_the_rules_record_findings_decides() -> None:
    bad = [
        good(source="purchased"), good(source="harvested"), good(prechecked=True), good(source="terms_and_conditions"),
        good(source_url="", source_ip="", statement_text=""), customer(objection_offered=False),
        good(frequency_disclosed=False), good(basis="business_card", source="business_card"),
    ]
    decided = {rule_id for record in bad for rule_id, _ in record_findings(record, {})}
    assert set(consent.RECORD_RULE_IDS) == decided
    assert not {"consent.missing", "consent.stale", "suppression.unsubscribed"} & set(consent.RECORD_RULE_IDS)
    # reordering the rules (suppressions, then consent, then anything new) keeps the set and its order
    assert consent.record_rule_ids(reversed(consent.RULES)) == tuple(reversed(consent.RECORD_RULE_IDS))
    assert consent.record_rule_ids(consent.RULES[3:] + consent.RULES[:3]) == consent.RECORD_RULE_IDS
