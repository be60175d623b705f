"""Identity rules at end of DATA: no-reply senders, From name, legal notice, postal address."""

from __future__ import annotations

from dataclasses import replace

import pytest

from factories import ORDERS, SHOP, evaluate, facts, mail
from policies.findings import Outcome
from policies.message import fold
from policies.rules.identity import (
    flexible_pattern,
    from_name_mismatch,
    legal_notice_missing,
    no_reply,
    number_pattern,
    postal_address_missing,
)


# --- identity.no_reply ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    ["Shop <noreply@shop.example>", "Shop <no-reply@shop.example>", "Shop <Do_Not.Reply@shop.example>",
     "Shop <nieuws-noreply@shop.example>", "Shop <niet-beantwoorden@shop.example>", "Shop <news@noreply.shop.example>"],
)
def test_no_reply_from_address_hits(sender: str) -> None:
    # policy: clang E-no-reply ("Een no-reply adres is niet toegestaan")
    hit = no_reply.check(facts(mail(sender=sender)))
    assert hit is not None
    assert hit.evidence == sender.split("<")[1].rstrip(">")


def test_no_reply_in_reply_to_hits() -> None:
    # policy: clang E-no-reply
    hit = no_reply.check(facts(mail(headers={"Reply-To": "donotreply@shop.example"})))
    assert hit is not None and hit.detail.startswith("Reply-To")


def test_real_reply_address_passes() -> None:
    # policy: clang E-no-reply
    assert no_reply.check(facts(mail(headers={"Reply-To": "Klantenservice <service@shop.example>"}))) is None


def test_no_reply_near_miss_display_name_only_and_reply_words() -> None:
    # policy: clang E-no-reply — "noreply" in the display name alone, or "reply@" is a real inbox
    assert no_reply.check(facts(mail(sender='"Shop (noreply)" <news@shop.example>'))) is None
    assert no_reply.check(facts(mail(sender="Shop <reply@shop.example>"))) is None
    assert no_reply.check(facts(mail(sender="Shop <norbert@shop.example>"))) is None


# --- identity.from_name_mismatch --------------------------------------------------------------


def test_from_name_without_account_name_hits() -> None:
    # policy: clang E-bestandseigenaar-van-veld (naam van de bestandseigenaar in het 'Van' veld)
    hit = from_name_mismatch.check(facts(mail(sender="Deals Daily <news@shop.example>")))
    assert hit is not None and hit.evidence == "Deals Daily"


def test_from_name_missing_display_name_hits() -> None:
    # policy: clang E-bestandseigenaar-van-veld
    assert from_name_mismatch.check(facts(mail(sender="news@shop.example"))) is not None


@pytest.mark.parametrize("sender", ["Shop <news@shop.example>", "SHOP Nieuwsbrief <news@shop.example>",
                                    "=?utf-8?q?Sanne_van_Shop?= <sanne@shop.example>", "Shop B.V. <news@shop.example>"])
def test_from_name_containing_account_name_passes(sender: str) -> None:
    # policy: clang E-bestandseigenaar-van-veld
    assert from_name_mismatch.check(facts(mail(sender=sender))) is None


def test_from_name_near_miss_account_name_inside_another_word() -> None:
    # policy: clang E-bestandseigenaar-van-veld — "Shopping Deals" does not name "Shop"
    assert from_name_mismatch.check(facts(mail(sender="Shopping Deals <news@shop.example>"))) is not None


def test_from_name_accent_insensitive() -> None:
    # policy: clang E-bestandseigenaar-van-veld
    account = replace(SHOP, name="Café Crème")
    assert from_name_mismatch.check(facts(mail(sender="CAFE CREME nieuws <news@shop.example>"), account=account)) is None


def test_from_name_account_without_name_hits_with_config_detail() -> None:
    # policy: clang E-bestandseigenaar-van-veld
    hit = from_name_mismatch.check(facts(account=replace(SHOP, name="", legal_name="")))
    assert hit is not None and "no name configured" in hit.detail


# --- identity.legal_notice_missing ------------------------------------------------------------


def test_legal_notice_missing_hits_naming_what_is_missing() -> None:
    # policy: mailpro M-legal-notice ("naam- en adresgegevens, … KvK-nummer")
    hit = legal_notice_missing.check(facts(mail(text="Shop B.V., Keizersgracht 1, 1015 AA Amsterdam\n{{unsubscribe_url}}")))
    assert hit is not None
    assert "registration number" in hit.detail and "legal name" not in hit.detail
    assert hit.evidence == "12345678"


@pytest.mark.parametrize(
    "footer",
    [
        "Shop B.V. - KvK 12345678",
        "SHOP BV\nKvK-nummer: 1234 5678",
        "shop b.v.  kvk 1234.5678",
        "Shop B.V. (KvK12345678)",
    ],
)
def test_legal_notice_tolerates_formatting(footer: str) -> None:
    # policy: mailpro M-legal-notice
    assert legal_notice_missing.check(facts(mail(text=f"Hallo\n\n{footer}\n"))) is None


def test_legal_notice_in_html_across_tags_and_entities() -> None:
    # policy: mailpro M-legal-notice
    html = "<p>Shop&nbsp;<b>B.V.</b><br>KvK&#58; 1234&nbsp;5678</p>"
    assert legal_notice_missing.check(facts(mail(text=None, html=html))) is None


def test_legal_notice_near_miss_number_inside_a_longer_number_or_hidden() -> None:
    # policy: mailpro M-legal-notice — 123456789 is not 12345678; hidden text is not shown
    assert legal_notice_missing.check(facts(mail(text="Shop B.V. order 123456789"))) is not None
    html = '<p>Shop B.V.</p><div style="display:none">KvK 12345678</div>'
    assert legal_notice_missing.check(facts(mail(text=None, html=html))) is not None


def test_legal_notice_account_without_configuration_hits_with_config_detail() -> None:
    # policy: mailpro M-legal-notice
    hit = legal_notice_missing.check(facts(account=replace(SHOP, registration_number="")))
    assert hit is not None and hit.detail == "account shop has no registration_number configured"


# --- identity.postal_address_missing ----------------------------------------------------------


def test_postal_address_missing_hits() -> None:
    # policy: mailpro M-legal-notice, clang E-valide-postadres
    hit = postal_address_missing.check(facts(mail(text="Shop B.V. KvK 12345678\n{{unsubscribe_url}}")))
    assert hit is not None and hit.evidence == SHOP.postal_address


@pytest.mark.parametrize(
    "footer",
    [
        "Keizersgracht 1, 1015 AA Amsterdam",
        "KEIZERSGRACHT 1\n1015AA  AMSTERDAM",
        "Keizersgracht 1 | 1015 AA | Amsterdam | Nederland",
    ],
)
def test_postal_address_tolerates_formatting(footer: str) -> None:
    # policy: clang E-valide-postadres
    assert postal_address_missing.check(facts(mail(text=f"Hallo\n\n{footer}\n"))) is None


def test_postal_address_in_html_lines_and_country_left_out() -> None:
    # policy: clang E-valide-postadres
    account = replace(SHOP, postal_address="Keizersgracht 1\n1015 AA Amsterdam\nNetherlands")
    html = "<td>Keizersgracht&nbsp;1<br/>1015 AA&nbsp;Amsterdam</td>"
    assert postal_address_missing.check(facts(mail(text=None, html=html), account=account)) is None


def test_postal_address_near_miss_other_house_number() -> None:
    # policy: clang E-valide-postadres — Keizersgracht 12 is another address
    assert postal_address_missing.check(facts(mail(text="Keizersgracht 12, 1015 AA Amsterdam"))) is not None


def test_postal_address_account_without_configuration_hits_with_config_detail() -> None:
    # policy: mailpro M-legal-notice
    hit = postal_address_missing.check(facts(account=replace(SHOP, postal_address="")))
    assert hit is not None and hit.detail == "account shop has no postal_address configured"


# --- patterns and the engine ------------------------------------------------------------------


def test_patterns_match_on_word_boundaries() -> None:
    pattern = flexible_pattern("Shop B.V.")
    assert pattern is not None
    assert pattern.search(fold("Workshop B.V.")) is None
    assert pattern.search(fold("De Shop BV.")) is not None
    number = number_pattern("KvK 8765 4321")
    assert number is not None
    assert number.search("kvk: 8765.4321") is not None
    assert number.search("987654321") is None


def test_default_message_passes_all_identity_rules_through_the_engine() -> None:
    # policy: mailpro M-legal-notice, clang E-no-reply
    verdict = evaluate(facts())
    assert verdict.outcome is Outcome.DELIVER, verdict.findings


def test_identity_rules_apply_to_transactional_streams_too() -> None:
    # policy: clang E-no-reply — docs/SPEC.md §4: identity rules still apply on transactional streams
    verdict = evaluate(facts(mail(sender="Shop <noreply@shop.example>", text="Uw bestelling"), stream=ORDERS))
    assert "identity.no_reply" in verdict.rule_ids
    assert "optout.missing" not in verdict.rule_ids


# --- issue 14: legal notice across borders ---------------------------------------------------------

@pytest.mark.parametrize(("declared", "footer"), [
    ("HRB 12345 Amtsgericht München", "Registergericht: Amtsgericht München, Registernummer: HRB 12345"),
    ("HRA 4711 B Amtsgericht Charlottenburg", "Amtsgericht Charlottenburg HRA 4711 B"),
    ("RCS Paris B 552 100 554", "RCS Paris 552 100 554"),
    ("SIREN 552100554", "SIRET : 552 100 554 00013"),
    ("KBO 0123.456.789", "Ondernemingsnummer BE 123.456.789"),
    ("BCE 0123456789", "TVA BE0123.456.789"),
    ("Companies House 03900782", "Registered in England & Wales No 3900782"),
    ("VAT DE123456789", "USt-IdNr.: DE 123 456 789"),
    ("IVA IT10914660153", "Partita IVA 10914660153"),
    ("KRS 0000028368", "KRS nr 0000028368"),
])
def test_foreign_registration_numbers_as_the_account_declares_them(declared: str, footer: str) -> None:
    # policy: mailpro M-legal-notice ("KvK-nummer") — or the sender's country's equivalent register
    account = replace(SHOP, registration_number=declared)
    raw = mail(text=f"Hallo\n\nShop B.V. | Keizersgracht 1, 1015 AA Amsterdam | {footer}\n{{{{unsubscribe_url}}}}\n")
    assert legal_notice_missing.check(facts(raw, account=account)) is None


@pytest.mark.parametrize(("declared", "footer"), [
    ("HRB 12345 Amtsgericht München", "HRB 12345, Amtsgericht Köln"),  # another court's HRB 12345
    ("HRB 12345 Amtsgericht München", "Amtsgericht München, HRB 123456"),
    ("SIREN 552100554", "SIRET : 552 100 555 00013"),
    ("VAT DE123456789", "USt-IdNr.: DE 123 456 780"),
])
def test_foreign_registration_near_misses_hit(declared: str, footer: str) -> None:
    # policy: mailpro M-legal-notice
    account = replace(SHOP, registration_number=declared)
    raw = mail(text=f"Hallo\n\nShop B.V. | Keizersgracht 1, 1015 AA Amsterdam | {footer}\n")
    assert legal_notice_missing.check(facts(raw, account=account)) is not None


@pytest.mark.parametrize(("declared", "footer"), [
    ("Musterstraße 12, 80331 München, Deutschland", "Musterstr. 12 · 80331 München"),
    ("564 Chemin des Platières, 38670 Chasse-sur-Rhône, France", "564 Chemin des Platières - 38670 Chasse sur Rhône"),
    ("Capitol House, 1 Capitol Close, Leeds, LS27 0WH, United Kingdom", "Capitol House, 1 Capitol Close, Leeds LS27 0WH"),
    ("ul. Mineralna 15, 02-274 Warszawa, Polska", "ul. Mineralna 15, 02-274 Warszawa"),
])
def test_foreign_postal_address_formats(declared: str, footer: str) -> None:
    # policy: mailpro M-legal-notice, clang E-valide-postadres — street abbreviations, postcodes and countries abroad
    account = replace(SHOP, postal_address=declared)
    raw = mail(text=f"Hallo\n\nShop B.V. | {footer} | KvK 12345678\n{{{{unsubscribe_url}}}}\n")
    assert postal_address_missing.check(facts(raw, account=account)) is None
