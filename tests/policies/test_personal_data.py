"""content.personal_data after issue 14: other people's numbers only, told apart by context."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import FOOTER_TEXT, ORDERS, SHOP, evaluate, facts, mail
from policies.rules.content import bsn_valid, iban_valid, luhn_valid, personal_data

UNSUB = "\nAfmelden: {{unsubscribe_url}}\n"


def body(text: str) -> bytes:
    return mail(text=f"Hallo,\n\n{text}\n\n{FOOTER_TEXT}{UNSUB}")


def check(text: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return personal_data.check(facts(body(text), **kwargs))  # type: ignore[arg-type]


# --- IBANs of the sender itself ----------------------------------------------------------------

CHARITY = replace(SHOP, legal_name="Stichting Vogelopvang", own_ibans=frozenset({"NL91ABNA0417164300"}))


@pytest.mark.parametrize("text", [
    "Steun ons werk: doneer op NL02 ABNA 0123 4567 89 t.n.v. Stichting Vogelopvang",
    "Spendenkonto: DE89 3704 0044 0532 0130 00",
    "Bankverbindung: Sparkasse, IBAN DE89 3704 0044 0532 0130 00, BIC COLSDE33",
    "Faire un don : FR14 2004 1010 0505 0001 3M02 606",
    "Stichting Vogelopvang, IBAN NL02 ABNA 0123 4567 89",
])
def test_the_senders_own_iban_in_a_donation_or_payment_context_passes(text: str) -> None:
    # policy: mailpro M-code-of-conduct (privacy van derden) — a charity's own donation account is nobody's personal data
    assert check(text, account=CHARITY) is None


def test_an_iban_addressed_to_the_reader_still_hits() -> None:
    # policy: mailpro M-code-of-conduct — "uw IBAN" is the reader's, even in a payment sentence
    hit = check("Wij schrijven het bedrag af van uw IBAN NL02 ABNA 0123 4567 89.", account=CHARITY)
    assert hit is not None and hit.evidence == "NL** **** **** **** 89"
    assert check("Rekening van Jan Jansen: NL02 ABNA 0123 4567 89", account=CHARITY) is not None


IBANS = st.sampled_from([
    "NL91ABNA0417164300", "NL02ABNA0123456789", "DE89370400440532013000", "BE68539007547034",
    "FR1420041010050500013M02606", "GB29NWBK60161331926819", "ES9121000418450200051332",
])


@settings(max_examples=60, deadline=None)
@given(iban=IBANS, spaced=st.booleans(), sentence=st.sampled_from([
    "Rekening van Jan: {}", "Uw IBAN {} is geregistreerd.", "Winnaar Piet, rekening {}", "IBAN: {}",
]))
def test_an_iban_of_the_account_never_fires(iban: str, spaced: bool, sentence: str) -> None:
    # policy: mailpro M-code-of-conduct — property: the account's own_ibans never fire, whatever the sentence
    account = replace(SHOP, own_ibans=frozenset({iban}))
    shown = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if spaced else iban
    assert iban_valid(iban)
    assert check(sentence.format(shown), account=account) is None


# --- BSN: the 11-test and not formatted or labelled as another number --------------------------

@pytest.mark.parametrize("text", [
    "Bel ons: +31 111 222 333",
    "Telefoon 111-222-333",
    "Tel.: 111222333",
    "Ordernummer: 111222333",
    "Klantnummer 111222333",
    "Factuur 111222333",
    "Rechnungsnummer: 111222333",
    "Bestellung Nr. 111222333",
    "Sendungsnummer 111222333",
    "Meer: https://shop.example/help?nodeId=111222333&ref=x",
    "Bel 11 1222 333",  # grouped the way phone numbers are
])
def test_a_valid_bsn_formatted_or_labelled_as_another_number_passes(text: str) -> None:
    # policy: mailpro M-code-of-conduct — a phone, order, customer or invoice number is not a citizen's BSN
    assert bsn_valid("111222333")
    assert check(text) is None


@settings(max_examples=80, deadline=None)
@given(digits=st.text(alphabet="0123456789", min_size=8, max_size=8), sentence=st.sampled_from([
    "Het BSN van mevrouw Jansen is {}.",
    "Winnaar: Jan de Vries, burgerservicenummer {}",
    "Gegevens van uw buurman: BSN {} en geboortedatum 1-2-1960.",
    "Sofinummer: {}",
]))
def test_a_random_valid_bsn_in_a_personal_data_sentence_still_fires(digits: str, sentence: str) -> None:
    # policy: mailpro M-code-of-conduct (privacy van derden) — property over random valid BSNs
    for last in "0123456789":
        bsn = digits + last
        if bsn_valid(bsn):
            break
    else:
        return
    hit = check(sentence.format(bsn))
    assert hit is not None and hit.evidence == "*******" + bsn[-2:]


# --- card numbers: more than a Luhn pass --------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Trackingnummer 4111111111111111",
    "Bestellung 4111 1111 1111 1111",
    "Volg uw pakket: https://track.example/?id=4111111111111111",
    "Referentie 4111-11-1111-111111",  # not grouped as a card is printed
    "Artikel 54111111111111111",  # inside a longer digit run
])
def test_luhn_valid_numbers_that_are_not_cards_pass(text: str) -> None:
    # policy: mailpro M-code-of-conduct — tracking ids and order numbers pass the Luhn check by chance
    assert luhn_valid("4111111111111111")
    assert check(text) is None


@pytest.mark.parametrize("text", [
    "Kaart van Jan: 4111 1111 1111 1111",
    "Creditcard: 5500-0000-0000-0004",
    "Amex van Piet 3782 822463 10005",
])
def test_a_card_number_printed_as_one_still_hits(text: str) -> None:
    # policy: mailpro M-code-of-conduct (privacy van derden)
    hit = check(text)
    assert hit is not None and hit.evidence.startswith("****") and text[-4:] == hit.evidence.replace(" ", "")[-4:]


def test_a_label_inside_a_longer_word_is_no_label() -> None:
    # policy: mailpro M-code-of-conduct — "Mart" is a name, not "art."; "Casino" is not "no"
    assert check("Gegevens van Mart: 111222333") is not None
    assert check("Winnaar Casino-actie, Jan: 111222333") is not None


# --- other recipients' addresses in To/Cc (Cc instead of Bcc) ------------------------------------


def addressed(to: str, cc: str = "") -> bytes:
    raw = mail().replace(b"To: anna@example.nl", f"To: {to}".encode())
    return raw.replace(b"Subject:", f"Cc: {cc}\nSubject:".encode(), 1) if cc else raw


@pytest.mark.parametrize(("to", "cc", "count"), [
    ("webmaster@nuhxirc.com, webmaster@odyssea.com, webmaster@obsceniebaby.com", "", 3),
    ("Anna <anna@example.nl>", "Bert <bert@voorbeeld.nl>", 2),
    ("cvs@bruce-guenter.example, rait@bruce-guenter.example", "", 2),
])
def test_a_marketing_mail_showing_its_recipients_each_others_addresses_hits(to: str, cc: str, count: int) -> None:
    # policy: mailpro M-code-of-conduct ("de verspreiding van de persoonlijke informatie van derden zonder
    # toestemming") — a mailing with its recipients in To/Cc instead of Bcc hands each one the others' addresses
    hit = personal_data.check(facts(addressed(to, cc)))
    assert hit is not None and f"show {count} recipients" in hit.detail
    assert "@" in hit.evidence and not any(a.split("@")[0] in hit.evidence for a in ("webmaster@", "anna@", "bert@"))


@pytest.mark.parametrize(("to", "cc"), [
    ("anna@example.nl", ""),  # one recipient: the normal case
    ("Nieuwsbrief <nieuws@shop.example>", "anna@example.nl"),  # the sender's own list address and one reader
    ("undisclosed-recipients:;", ""),  # every recipient in Bcc
    ("anna@example.nl, Anna <ANNA@example.nl>", ""),  # one person named twice
])
def test_one_recipient_or_the_senders_own_list_address_passes(to: str, cc: str) -> None:
    # policy: mailpro M-code-of-conduct (privacy van derden) — near misses: nobody else's address is shown
    assert personal_data.check(facts(addressed(to, cc))) is None


def test_recipients_shown_to_each_other_count_only_on_a_marketing_stream() -> None:
    # policy: mailpro M-code-of-conduct — a transactional notice copied to a colleague (a bug tracker's
    # "Processed: …" to the submitter, the package and the list) is not a mailing
    raw = addressed("cjwatson@debian.example, debian-cd@lists.debian.example", "unknown-package@qa.debian.example")
    marketing = evaluate(facts(raw))
    transactional = evaluate(facts(raw, stream=ORDERS))
    assert "content.personal_data" in marketing.rule_ids
    assert "content.personal_data" not in transactional.rule_ids
