"""content.fraud, content.prescription_drugs and content.data_trading (issue 14: recall on real spam
with a realistic footer), and the word-list features they use: every term found, terms in scripts
written without spaces."""

from __future__ import annotations

import pytest

from factories import FOOTER_TEXT, ORDERS, evaluate, facts, mail
from policies.findings import Action, Outcome
from policies.message import fold
from policies.profiles import load_profile
from policies.rules.content import _large_sum, adult, data_trading, fraud, prescription_drugs
from policies.wordlists import compile_terms

UNSUB = "\nAfmelden: {{unsubscribe_url}}\n"


def body(text: str, subject: str = "Nieuws van Shop") -> bytes:
    return mail(subject=subject, text=f"Hallo,\n\n{text}\n\n{FOOTER_TEXT}{UNSUB}")


# --- content.fraud ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "evidence"),
    [
        (
            "Attention Beneficiary: we have concluded arrangements to effect your payment of $1,500,000.00 "
            "through WESTERN UNION Swift Money transfer services today.",
            "$1,500,000.00; beneficiary, western union",
        ),
        (
            "Dear Western Union Beneficiary, the United Nations has authorized us to remit to you a total "
            "amount of $920,000.00 (Nine Hundred and Twenty Thousand United States Dollars).",
            "$920,000.00; beneficiary, western union, remit to you",
        ),
        (
            "I am writing to you concerning the sum of Twenty-Five Million United States Dollars that belongs "
            "to a foreigner. As next of kin you will receive it; this is a risk-free business proposal.",
            "twenty-five million; next of kin, business proposal, risk free",
        ),
        (
            "Geachte begunstigde, uit de erfenis van wijlen de heer Jansen staat EUR 2.450.000 voor u klaar.",
            "eur 2.450.000; begunstigde, erfenis",
        ),
        (
            "Sehr geehrter Begünstigter, die Lotterie hat Ihnen 850.000 € zugesprochen.",
            "850.000 €; begünstigter, lotterie",
        ),
        (
            "Dear Homeowner, you have been pre-approved for a $402,000 Home Loan; your credit is in no way a "
            "factor.",
            "$402,000; pre-approved, your credit is in no way a factor",
        ),
    ],
)
def test_fraud_large_sum_with_two_markers_hits(text: str, evidence: str) -> None:
    # policy: clang E-misleiden ("met als doel mij te misleiden"); mailpro M-code-of-conduct (oplichting
    # is against Dutch law) — advance-fee, prize and loan fraud
    hit = fraud.check(facts(body(text)))
    assert hit is not None and hit.evidence == evidence


def test_fraud_stock_promotion_with_a_ticker_hits() -> None:
    # policy: mailpro M-code-of-conduct — pump-and-dump is market manipulation; clang E-misleiden
    text = "Exciting Investor Alert\nTicker:IGTS\nCurrent:0.01\nRating:Big Mover Next Week\nOTC markets"
    hit = fraud.check(facts(body(text)))
    assert hit is not None and hit.evidence == "ticker:igts; investor alert, big mover, otc markets"


@pytest.mark.parametrize(
    "text",
    [
        # one marker, with a large sum: a bank or an insurer
        "Geld versturen via Western Union? Vanaf nu tot € 150.000 per jaar in de app.",
        "Name a beneficiary for your life cover of $250,000 in the app.",
        # two markers, no sum: a news item
        "Lottery winners rarely name a beneficiary, a study finds.",
        # a ticker with one marker: a broker's newsletter
        "Symbol: AAPL — our analysts rate it a strong buy after the results.",
        # large sums and no markers: a property newsletter
        "Nieuw in de verkoop: herenhuis aan de gracht, vraagprijs € 1.250.000 k.k.",
    ],
)
def test_fraud_near_misses_pass(text: str) -> None:
    # policy: clang E-misleiden — what a careful reader calls honest mail is not fraud
    assert fraud.check(facts(body(text))) is None


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("$1,500,000.00", "$1,500,000.00"),
        ("920.000 EUR", "920.000 eur"),
        ("€ 99.999,99 en $ 12,000", None),
        ("25 million dollars", "25 million"),
        ("invoice 1234567 of 12 May", None),
    ],
)
def test_large_sums(text: str, found: str | None) -> None:
    # policy: clang E-misleiden — the sum fraud promises, in any currency notation
    assert _large_sum(fold(text)) == found


def test_fraud_quarantines_on_every_profile() -> None:
    # policy: clang E-misleiden, mailpro M-code-of-conduct
    raw = body("Attention Beneficiary: your payment of $1,500,000.00 through Western Union is ready.")
    for profile in ("strict", "mailpro", "clang"):
        verdict = evaluate(facts(raw, profile=profile), profile)
        assert verdict.outcome is Outcome.QUARANTINE, profile
        assert "content.fraud" in verdict.rule_ids
        assert load_profile(profile).action("content.fraud") is Action.QUARANTINE


# --- content.prescription_drugs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "text", "evidence"),
    [
        ("via.gra", "Best offer of the week.", "via.gra"),
        ("Nieuws", "V1AGRA and C1AL1S from our partners.", "c1al1s"),
        ("V IA GR A  G UA RA NT EE", "Best offer of the week.", "v ia gr a"),
        ("Nieuws", "Buy Viagra at the lowest price online.", "viagra; buy"),
        ("Nieuws", "Goedkoop tramadol bestellen zonder gedoe.", "tramadol; bestellen"),
        ("no r-x req", "A massive discount on your meds. No dr-script required.", "no dr script"),
        ("Blood pressure?", "If you need a good RX site for online purchases, we are your answer.", "rx site"),
    ],
)
def test_prescription_drugs_offered_or_disguised_hit(subject: str, text: str, evidence: str) -> None:
    # policy: mailpro M-code-of-conduct ("materiaal dat niet voldoet aan de Nederlandse wetgeving":
    # Geneesmiddelenwet art. 85 forbids advertising prescription-only medicines to the public)
    hit = prescription_drugs.check(facts(body(text, subject=subject)))
    assert hit is not None and hit.evidence == evidence


@pytest.mark.parametrize(
    "text",
    [
        "The patent on Viagra expired this year; generic makers entered the market in 2013.",
        "Ibuprofen 400 mg, available without a prescription, now 20% off.",
        "Onze specialisten (specialist in cialisme?) helpen u graag.",
        "Specialist care and social events in Soma Bay.",
    ],
)
def test_prescription_drugs_news_and_over_the_counter_offers_pass(text: str) -> None:
    # policy: mailpro M-code-of-conduct — reporting on a medicine or selling what needs no prescription
    # is lawful
    assert prescription_drugs.check(facts(body(text))) is None


def test_prescription_drugs_quarantines_on_mailpro_and_strict_only() -> None:
    # policy: mailpro M-code-of-conduct — clang's policy has no code-of-conduct clause on it
    raw = body("Buy Viagra at the lowest price online.")
    for profile, outcome in (("strict", Outcome.QUARANTINE), ("mailpro", Outcome.QUARANTINE), ("clang", Outcome.DELIVER)):
        verdict = evaluate(facts(raw, profile=profile), profile)
        assert verdict.outcome is outcome, profile
    assert load_profile("clang").action("content.prescription_drugs") is Action.OFF
    assert evaluate(facts(raw, stream=ORDERS)).outcome is Outcome.QUARANTINE


# --- content.data_trading --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "evidence"),
    [
        ("Reach 5 million e-mail addresses! Our bulk email software sends for you.", "million e-mail addresses, bulk email software"),
        (
            "Astounding new software lets you find out almost ANYTHING about ANYONE. Search for ANYONE, "
            "anytime, anywhere.",
            "anything about anyone, search for anyone",
        ),
        ("1，收集目标客户手机号，批量获取目标客户的手机号，邮箱等。4，自动群发，快速积累客户群体。", "批量获取, 自动群发"),
        ("Adressdaten kaufen? Wir liefern Millionen E-Mail-Adressen.", "adressdaten kaufen, millionen e-mail-adressen"),
    ],
)
def test_data_trading_hits(text: str, evidence: str) -> None:
    # policy: mailpro M-third-party-lists ("gekocht, verhandeld … verboden"), clang E-who-not ("geoogst via
    # internet"), mailpro M-code-of-conduct (privacy of third parties) — selling lists, harvesters, people search
    hit = data_trading.check(facts(body(text)))
    assert hit is not None and hit.evidence == evidence


@pytest.mark.parametrize(
    "text",
    [
        "Never buy an email list for sale: we only mail people who asked for it.",
        "Onze nieuwsbrief gaat naar 2 miljoen abonnees die zich zelf aanmeldden.",
        "WhatsApp目前已经是国外最火的即时聊天通讯软件",
    ],
)
def test_data_trading_one_marker_or_none_passes(text: str) -> None:
    # policy: mailpro M-third-party-lists — a warning against bought lists is no trade in them
    assert data_trading.check(facts(body(text))) is None


def test_data_trading_quarantines_on_every_profile() -> None:
    # policy: mailpro M-third-party-lists, clang E-who-not
    raw = body("Reach 5 million e-mail addresses! Our bulk email software sends for you.")
    for profile in ("strict", "mailpro", "clang"):
        assert evaluate(facts(raw, profile=profile), profile).outcome is Outcome.QUARANTINE, profile
        assert load_profile(profile).action("content.data_trading") is Action.QUARANTINE


# --- word lists: every term, scripts without spaces ------------------------------------------


def test_find_all_returns_every_distinct_term_in_list_order() -> None:
    words = compile_terms("t", ("western union", "beneficiary", "next of kin", "lottery"))
    text = fold("Lottery news for the Beneficiary: next of kin, via Western-Union. Beneficiary again.")
    assert words.find_all(text) == ("western union", "beneficiary", "next of kin", "lottery")
    assert words.find_all(fold("the next kin of union")) == ()


def test_terms_in_a_script_without_spaces_match_inside_the_text() -> None:
    words = compile_terms("t", ("内射", "porno"))
    assert words.search(fold("我把镜头拉近些这种场合自然少不了内射")) == "内射"
    assert words.search(fold("外贸客户开发，势在必行")) is None
    assert words.find_all(fold("porno 内射")) == ("内射", "porno")


def test_adult_chinese_terms_hit() -> None:
    # policy: mailpro M-code-of-conduct ("erotisch of pornografisch van aard")
    hit = adult.check(facts(body("我把镜头拉近些，你们看看这个是什么，这种场合自然少不了内射")))
    assert hit is not None and hit.evidence == "内射"
    assert adult.check(facts(body("WhatsApp目前已经是国外最火的即时聊天通讯软件"))) is None
