"""content.deceptive_links: phishing that pretends to be the account (issue 14)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from factories import FOOTER_HTML, SHOP, evaluate, facts, mail
from policies.domains import ip_literal, lookalike, registrable
from policies.findings import Action
from policies.profiles import load_profile
from policies.rules.content import deceptive_links, shown_host


def html(anchor: str) -> bytes:
    return mail(text=None, html=f"<p>De zomercollectie is binnen.</p><p>{anchor}</p>{FOOTER_HTML}")


@pytest.mark.parametrize("anchor", [
    '<a href="https://login.evil.example/shop">https://www.shop.example/account</a>',
    '<a href="http://evil.example/">www.shop.example</a>',
    '<a href="https://evil.example/x">Shop.example</a>',
    '<a href="http://192.0.2.7/login">Log in</a>',
    '<a href="http://[2001:db8::1]/login">Log in</a>',
    '<a href="http://3232235777/x">klik</a>',
    '<a href="https://shop-example-login.example/">Inloggen</a>',
    '<a href="https://sh0p.example/">Bekijk</a>',
    '<a href="https://shop.example.verify-account.ru/">Bekijk</a>',
    '<a href="https://is.gd/bFlg4J">Bekijk waar uw pakket zich bevindt</a>',
])
def test_deceptive_links_hit(anchor: str) -> None:
    # policy: mailpro M-code-of-conduct ("kwaadaardige inhoud") — phishing links
    hit = deceptive_links.check(facts(html(anchor)))
    assert hit is not None and hit.evidence


@pytest.mark.parametrize("anchor", [
    '<a href="https://www.shop.example/zomer">www.shop.example</a>',
    '<a href="https://shop.example/">https://www.shop.example/</a>',
    '<a href="https://news.shop.example/x">shop.example/zomer</a>',
    '<a href="https://us1.list-manage.com/track/click?u=1">www.shop.example</a>',  # a platform's click tracking
    '<a href="https://www.facebook.com/shop">Volg ons op Facebook</a>',
    '<a href="mailto:info@shop.example">info@shop.example</a>',
    '<a href="https://shop.de/">shop.de</a>',  # the same brand under another country domain, shown as such
    '<a href="https://www.instagram.com/shop">instagram.com/shop</a>',
    '<a href="https://shop.example/p">Prijs 1.5 kg</a>',
])
def test_honest_links_pass(anchor: str) -> None:
    # policy: mailpro M-code-of-conduct — the links of an honest newsletter
    assert deceptive_links.check(facts(html(anchor))) is None


@pytest.mark.parametrize("raw", [
    mail(text="IBM to Cut Over 15,000 Employees (AP)\nhttp://tinyurl.com/10kz\n\nAfmelden: {{unsubscribe_url}}"),
    html('<a href="http://tinyurl.com/10kz">http://tinyurl.com/10kz</a>'),
    mail(text="Visit our sponsor: http://63.115.136.15/go/infoworld/4524953.html\n\nAfmelden: {{unsubscribe_url}}"),
])
def test_a_shortener_or_ip_link_written_out_as_itself_hides_nothing(raw: bytes) -> None:
    # policy: mailpro M-code-of-conduct — Media Unspun and InfoWorld (tests/corpus/real) print such URLs as
    # they are; the reader sees where they lead. Behind words ("Bekijk waar uw pakket ...", "Log in") they
    # stay deceptive (test_deceptive_links_hit).
    assert deceptive_links.check(facts(raw)) is None
    both = html('<a href="http://tinyurl.com/10kz">http://tinyurl.com/10kz</a> <a href="http://tinyurl.com/10kz">Bekijk</a>')
    assert deceptive_links.check(facts(both)) is not None


def test_the_accounts_own_tracking_host_is_not_deceptive() -> None:
    # policy: mailpro M-code-of-conduct — click tracking of the account's platform, configured per account
    raw = html('<a href="https://t2d857ce9.emailsys2a.net/c/1/2">www.shop.example</a>')
    assert deceptive_links.check(facts(raw)) is not None
    account = replace(SHOP, tracking_hosts=frozenset({"emailsys2a.net"}))
    assert deceptive_links.check(facts(raw, account=account)) is None
    shortened = html('<a href="https://bit.ly/shop">Bekijk</a>')
    assert deceptive_links.check(facts(shortened, account=replace(SHOP, tracking_hosts=frozenset({"bit.ly"})))) is None


def test_profiles_quarantine_under_strict_and_mailpro_and_clang_has_it_off() -> None:
    # policy: mailpro M-code-of-conduct; clang has no such clause
    assert load_profile("strict").action("content.deceptive_links") is Action.QUARANTINE
    assert load_profile("mailpro").action("content.deceptive_links") is Action.QUARANTINE
    assert load_profile("clang").action("content.deceptive_links") is Action.OFF
    raw = html('<a href="http://192.0.2.7/login">Log in</a>')
    assert "content.deceptive_links" in evaluate(facts(raw)).rule_ids


def test_domain_helpers() -> None:
    assert registrable("news.shop.co.uk") == "shop.co.uk" and registrable("a.b.shop.nl") == "shop.nl"
    assert ip_literal("192.0.2.7") and ip_literal("[::1]") and not ip_literal("shop.nl")
    assert ip_literal("static.151.155.156.178.clients.your-server.de")  # an address in disguise
    assert not ip_literal("v2.1.2.shop.example") and not ip_literal("cdn-300-2-3-4.shop.example")
    own = frozenset({"amazon.com"})
    assert lookalike("arnazon.com", own) == "amazon.com" and lookalike("xn--mazon-3ve.com", own) == "amazon.com"
    assert lookalike("amazon-security.com", own) == "amazon.com"
    assert lookalike("images-amazon.com", own) is None and lookalike("www.amazon.com", own) is None
    assert lookalike("amazon.co.uk", own) is None and lookalike("google.com", own) is None
    assert shown_host("www.shop.example") == "www.shop.example" and shown_host("Klik hier") == ""
    assert shown_host("info@shop.example") == ""
