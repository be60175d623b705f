"""optout.missing: the placeholder or a recognisable unsubscribe link in every marketing message."""

from __future__ import annotations

import pytest

from factories import FOOTER_TEXT, ORDERS, evaluate, facts, mail
from policies.rules.optout import missing


def text_mail(text: str) -> bytes:
    return mail(text=f"Hallo,\n\nDe zomercollectie is binnen.\n\n{text}\n{FOOTER_TEXT}\n")


def html_mail(html: str) -> bytes:
    return mail(text=None, html=f"<p>De zomercollectie is binnen.</p>{html}<p>{FOOTER_TEXT}</p>")


def test_no_opt_out_at_all_hits() -> None:
    # policy: mailpro M-opt-out ("Elk e-mailbericht moet een opt-out mogelijkheid bevatten")
    hit = missing.check(facts(text_mail("Bekijk https://shop.example/zomer")))
    assert hit is not None and "{{unsubscribe_url}}" in hit.detail


@pytest.mark.parametrize("raw", [
    text_mail("Afmelden: {{unsubscribe_url}}"),
    html_mail('<a href="{{unsubscribe_url}}">klik hier</a>'),
    html_mail('<a href="%7B%7Bunsubscribe_url%7D%7D">klik hier</a>'),  # an HTML editor URL-encoded it
])
def test_placeholder_in_text_or_html_passes(raw: bytes) -> None:
    # policy: clang E-afmeldproces ("duidelijk zichtbare verwijzing naar een eenvoudig, goed werkend afmeldproces")
    assert missing.check(facts(raw)) is None


def test_configured_placeholder_from_params() -> None:
    # policy: clang E-afmeldproces — [unsubscribe] placeholder is configurable
    raw = text_mail("Afmelden: [[UNSUB]]")
    assert missing.check(facts(raw, params={"placeholder": "[[UNSUB]]"})) is None
    assert missing.check(facts(text_mail("Stop: {{unsubscribe_url}}"), params={"placeholder": "[[UNSUB]]"})) is not None


@pytest.mark.parametrize("html", [
    '<a href="https://shop.example/nieuwsbrief/afmelden?id=1">hier</a>',  # wording in the URL
    '<a href="https://shop.example/x?id=1">Uitschrijven</a>',  # wording in the anchor
    '<a href="https://shop.example/x?id=1">Unsubscribe</a>',
    '<p>Geen nieuwsbrief meer ontvangen? <a href="https://shop.example/x?id=1">Klik hier</a></p>',  # near it
    '<p>To opt out of these e-mails, <a href="https://shop.example/x?id=1">click here</a>.</p>',
    '<a href="mailto:unsubscribe@shop.example?subject=stop">mail ons</a>',
])
def test_recognisable_unsubscribe_link_passes(html: str) -> None:
    # policy: clang E-afmeldproces, mailpro M-opt-out
    assert missing.check(facts(html_mail(html))) is None


def test_plain_text_wording_next_to_a_url_passes() -> None:
    # policy: mailpro M-opt-out
    raw = text_mail("Wilt u onze e-mails niet meer ontvangen? Meld u af via\nhttps://shop.example/p?u=8f2c")
    assert missing.check(facts(raw)) is None


@pytest.mark.parametrize("raw", [
    # the wording without any link
    text_mail("Afmelden kan door te antwoorden met STOP."),
    # the wording far away from the only link
    text_mail("Afmelden? Bel onze klantenservice." + " Lorem ipsum dolor sit amet." * 10 + "\nhttps://shop.example/zomer"),
    # a link with the wording that goes nowhere
    html_mail('<a href="#">Afmelden</a>'),
    # the wording only in hidden text
    html_mail('<div style="display:none"><a href="https://shop.example/u/1">unsubscribe</a></div>'),
])
def test_near_misses_hit(raw: bytes) -> None:
    # policy: clang E-afmeldproces ("duidelijk zichtbare verwijzing")
    assert missing.check(facts(raw)) is not None


def test_transactional_streams_are_exempt_through_the_engine() -> None:
    # policy: mailpro M-opt-out — docs/SPEC.md §4: transactional streams skip opt-out
    raw = text_mail("Uw bestelling is onderweg.")
    assert "optout.missing" in evaluate(facts(raw)).rule_ids
    assert "optout.missing" not in evaluate(facts(raw, stream=ORDERS)).rule_ids


def test_site_extra_wording_from_params() -> None:
    # policy: mailpro M-opt-out — word lists extendable from the config
    raw = html_mail('<a href="https://shop.example/x">Se désabonner</a>')
    assert missing.check(facts(raw)) is not None
    assert missing.check(facts(raw, params={"wordlists": {"unsubscribe": ["se desabonner"]}})) is None
