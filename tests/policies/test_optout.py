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
    text_mail("---\nTo unsubscribe send a blank email to leave-news-1234K@lists.shop.example"),
    text_mail('To unsubscribe from all mailing lists, send an email to\nalerts@shop.example with "Remove" as the subject.'),
    html_mail("<tt>To unsubscribe from this group, send an email to:<br>news-unsubscribe@shop.example</tt>"),
    text_mail("To be removed from this list, use this link:\nhttps://shop.example/remove.cfm?x=1"),
])
def test_unsubscribing_by_e_mail_to_an_address_written_out_passes(raw: bytes) -> None:
    # policy: mailpro M-opt-out ("gratis en eenvoudig", no questionnaire, no login), clang E-afmeldproces —
    # a blank e-mail to the list's leave- address is free, simple and needs no login (real 2002 newsletters
    # of tests/corpus/real: LinuxPlanet, Ryanair, EFFector, Media Unspun)
    assert missing.check(facts(raw)) is None


@pytest.mark.parametrize("raw", [
    # an address with no unsubscribe wording in its sentence
    text_mail("Vragen? Mail naar info@shop.example. Afmelden kan helaas niet."),
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
    # (French ships since issue 14; Finnish does not)
    raw = html_mail('<a href="https://shop.example/x">Peruuta tilaus</a>')
    assert missing.check(facts(raw)) is not None
    assert missing.check(facts(raw, params={"wordlists": {"unsubscribe": ["peruuta tilaus"]}})) is None


# --- issue 14: the languages senders write, List-Unsubscribe, visibility ----------------------

LINK = "https://shop.example/x?id=1"


@pytest.mark.parametrize("html", [
    f'<p><a href="{LINK}">Newsletter abbestellen</a></p>',  # de
    f'<p><a href="{LINK}">Vom Newsletter abmelden</a></p>',
    f'<p>Abmeldelink: <a href="{LINK}">{LINK}</a></p>',
    f'<p>Um sich abzumelden, klicken Sie bitte <a href="{LINK}">hier</a>.</p>',
    f'<p>Pour vous désabonner, <a href="{LINK}">cliquez ici</a>.</p>',  # fr
    f'<p><a href="{LINK}">Se désinscrire</a></p>',
    f'<p>Si no quiere recibir más correos, puede <a href="{LINK}">darse de baja aquí</a>.</p>',  # es
    f'<p>Per non ricevere più la newsletter <a href="{LINK}">clicca qui</a>.</p>',  # it
    f'<p><a href="{LINK}">Disiscriviti</a></p>',
    f'<p><a href="{LINK}">Cancelar subscrição</a></p>',  # pt
    f'<p>Jeśli nie chcesz otrzymywać wiadomości, <a href="{LINK}">kliknij tutaj</a>.</p>',  # pl
    f'<p><a href="{LINK}">Wypisz się</a></p>',
    f'<p><a href="{LINK}">Afmeld nyhedsbrev</a></p>',  # da
    f'<p><a href="{LINK}">Avsluta prenumerationen</a></p>',  # sv
])
def test_unsubscribe_wording_in_ten_languages_passes(html: str) -> None:
    # policy: mailpro M-opt-out, clang E-afmeldproces — a visible unsubscribe link in the sender's language
    assert missing.check(facts(html_mail(html))) is None


def test_the_messages_own_list_unsubscribe_target_counts() -> None:
    # policy: clang E-afmeldproces — the link the List-Unsubscribe header names is the opt-out, whatever its text
    target = "https://news.shop.example/u/8f2c9a"
    raw = mail(text=None, html=f'<p>De zomercollectie. <a href="{target}">Klik</a></p><p>{FOOTER_TEXT}</p>',
               headers={"List-Unsubscribe": f"<mailto:u@shop.example>, <{target}>"})
    assert missing.check(facts(raw)) is None
    other = mail(text=None, html=f'<p>De zomercollectie. <a href="{target}">Klik</a></p><p>{FOOTER_TEXT}</p>',
                 headers={"List-Unsubscribe": "<https://news.shop.example/u/other>"})
    assert missing.check(facts(other)) is not None


def test_wording_of_a_neighbouring_link_does_not_describe_another() -> None:
    # policy: clang E-afmeldproces ("duidelijk zichtbare verwijzing") — the hidden opt-out's words do not lend
    # themselves to the visible "Impressum" link next to it
    html = (f'<p><a href="https://shop.example/impressum">Impressum</a> | '
            f'<a href="{LINK}" style="color:#ffffff">Abmelden</a></p>')
    raw = mail(text=None, html=f'<div style="background-color:#FFF">{html}</div><p>{FOOTER_TEXT}</p>')
    assert missing.check(facts(raw)) is not None


@pytest.mark.parametrize("anchor", [
    f'<a href="{LINK}" style="font-size:1px">Abmelden</a>',
    f'<a href="{LINK}" style="font-size:0">unsubscribe</a>',
    f'<a href="{LINK}" style="color:#fff;background-color:white">afmelden</a>',
    f'<span style="background:#123456"><a href="{LINK}" style="color: rgb(18, 52, 86)">se désabonner</a></span>',
    f'<a href="{LINK}" style="opacity:0">darse de baja</a>',
    f'<div style="display:none"><a href="{LINK}">afmelden</a></div>',
    '<a href="{{unsubscribe_url}}" style="font-size:1px">hier</a>',
])
def test_links_styled_invisible_do_not_count(anchor: str) -> None:
    # policy: clang E-afmeldproces ("duidelijk zichtbare verwijzing")
    raw = mail(text=None, html=f"<p>De zomercollectie is binnen.</p><p>{anchor}</p><p>{FOOTER_TEXT}</p>")
    assert missing.check(facts(raw)) is not None


@pytest.mark.parametrize("anchor", [
    f'<a href="{LINK}" style="font-size:11px;color:#777777">Abmelden</a>',
    f'<div style="background-color:#000"><a href="{LINK}" style="color:#fff">afmelden</a></div>',
    f'<div style="background-color:#fff"></div><a href="{LINK}" style="color:#fff">unsubscribe</a>',
])
def test_small_grey_or_contrasting_links_are_visible(anchor: str) -> None:
    # policy: clang E-afmeldproces — a footer-sized link is a visible one
    raw = mail(text=None, html=f"<p>De zomercollectie is binnen.</p><p>{anchor}</p><p>{FOOTER_TEXT}</p>")
    assert missing.check(facts(raw)) is None
