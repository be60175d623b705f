"""The recipient's unsubscribe and preferences pages (docs/SPEC.md §6, issue 22) against a real relay, a real
upstream and real SMTP: in Debian's Chromium at phone and desktop width with axe-core's accessibility
check, by plain HTTP, and by a crawler that GETs every link and shows that nothing changes.

Set UI_SCREENSHOTS_DIR=docs to refresh docs/unsubscribe-page.png and docs/unsubscribe-preferences.png.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urldefrag, urlencode, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from axe_playwright_python.async_playwright import Axe
from conftest import Outcome, asend, base_account, config_dict, message, serving, write_config
from playwright.async_api import Browser, Page, expect

from policies.facts import ConsentRecord
from relay.config import load_config
from relay.web.contrast import contrast_ratio

ANNA = "anna@example.nl"
SECRET = "unsubscribe-secret-for-tests-0123456789"
# A yellow no one can read white text on: the page must fall back to a darker shade of it.
ACCENT = "#ffcc00"
LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="132" height="40" viewBox="0 0 132 40">'
    '<rect width="132" height="40" rx="8" fill="#ffcc00"/><text x="66" y="27" font-family="sans-serif" '
    'font-size="20" font-weight="700" text-anchor="middle" fill="#1a1a1a">SHOP</text></svg>'
)
STREAMS = [
    {"id": "orders", "kind": "transactional"},
    {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "title": "the weekly newsletter",
     "envelope_from": ["news@shop.example"]},
    {"id": "offers", "kind": "marketing", "topic": "offers", "title": "offers and discounts",
     "envelope_from": ["offers@shop.example"]},
]


def shots_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("UI_SCREENSHOTS_DIR")
    return Path(configured) if configured else tmp_path


def consent(scope: str, topic: str) -> ConsentRecord:
    now = datetime.now(timezone.utc)
    return ConsentRecord(
        email=ANNA, scope=scope, topic=topic, basis="double_opt_in", source="signup_form",
        collected_at=now - timedelta(days=30), confirmed_at=now - timedelta(days=30),
        source_url="https://shop.example/signup", source_ip="192.0.2.10",
        statement_text="Ja, stuur mij de nieuwsbrief", frequency_disclosed=True,
    )


@dataclass
class Setup:
    relay: Any
    logo: LogoHost

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.relay.public_port}"

    def local(self, url: str) -> str:
        """The List-Unsubscribe URL (public_base_url) on the test's public listener."""
        return self.base + "/u/" + url.rsplit("/u/", 1)[1]


class LogoHost:
    """The sender's own web server: serves the logo and counts who asked (and with what Referer)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.base = ""

    def app(self) -> web.Application:
        async def logo(request: web.Request) -> web.Response:
            self.requests.append((request.path, request.headers.get("Referer")))
            return web.Response(text=LOGO, content_type="image/svg+xml")

        app = web.Application()
        app.router.add_get("/logo.svg", logo)
        return app


@pytest.fixture
async def logo_host() -> AsyncIterator[LogoHost]:
    host = LogoHost()
    async with serving(host.app()) as base:
        host.base = base.replace("127.0.0.1", "localhost")  # another origin than the relay's pages
        yield host


async def start_pages(
    tmp_path: Path, upstream: Any, start_relay: Any, logo_host: LogoHost, look: dict[str, Any], streams: list[dict[str, Any]] = STREAMS
) -> Setup:
    """A relay whose account `shop` (under `holding`, beside `shop2`) has the look `look`; Anna holds
    consent for Shop's newsletter at Shop and for offers at the holding (every brand of it)."""
    data = config_dict(
        tmp_path, upstream.port,
        http={"admin_listen": "127.0.0.1:0", "public_listen": "127.0.0.1:0", "public_base_url": "https://unsubscribe.shop.example"},
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
        account={"parent": "holding", "parent_name": "Holding B.V.", "streams": streams, **look},
    )
    data["accounts"].append(
        base_account() | {
            "id": "shop2", "name": "Shop Twee", "domains": ["shop2.example"], "parent": "holding",
            "trusted_networks": [], "default_stream": "deals",
            "streams": [{"id": "deals", "kind": "marketing", "title": "daily deals"}],
        }
    )
    relay = await start_relay(load_config(write_config(tmp_path, data)))
    await relay.services.store.consent.upsert_consents(
        [consent("shop", "newsletter"), consent("holding", "offers")], now=datetime.now(timezone.utc)
    )
    return Setup(relay, logo_host)


@pytest.fixture
async def setup(tmp_path: Path, upstream: Any, start_relay: Any, logo_host: LogoHost) -> Setup:
    look = {"logo_url": f"{logo_host.base}/logo.svg", "accent_color": ACCENT}
    return await start_pages(tmp_path, upstream, start_relay, logo_host, look)


def marketing(kind: str) -> bytes:
    subject = {"news": "Nieuw deze week", "offers": "20% korting"}[kind]
    return message(sender=f"{kind}@shop.example", to=ANNA, subject=subject, body=f"{subject}. Afmelden: {{{{unsubscribe_url}}}}")


async def send(setup: Setup, kind: str) -> Outcome:
    return await asend(setup.relay.smtp_port, marketing(kind), mail_from=f"{kind}@shop.example", rcpts=[ANNA])


async def link_of(setup: Setup, upstream: Any, kind: str) -> str:
    out = await send(setup, kind)
    assert out.code == 250, out
    raw = upstream.messages[-1].content
    header = re.sub(r"\s+", " ", str(message_from_bytes(raw)["List-Unsubscribe"]))
    return setup.local(re.findall(r"<(https://[^>]+)>", header)[0])


def refused_at_rcpt(out: Outcome) -> bool:
    """The stream is known from the envelope sender: the refusal comes at RCPT, before DATA."""
    return out.data is None and out.rcpts[0][0] == 550 and "[suppression.unsubscribed]" in out.rcpts[0][1]


# --- in Chromium -----------------------------------------------------------------------------




async def assert_accessible(page: Page, what: str) -> None:
    """axe-core (WCAG 2.x A/AA and best practices) finds nothing serious or critical."""
    results = await Axe().run(page)
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{what}: {bad}"
    # It really ran: the contrast and language rules were among those that passed.
    passed = {rule["id"] for rule in results.response["passes"]}
    assert {"color-contrast", "html-has-lang", "valid-lang"} <= passed, (what, sorted(passed))


async def accent_is_readable(page: Page, configured: str | None = ACCENT) -> None:
    """The main button: the configured accent when white text on it is readable, else a darker one."""
    colours = await page.locator("main button:not(.secondary)").first.evaluate(
        "b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).color]"
    )
    background, text = (
        "#" + "".join(f"{int(c):02x}" for c in re.findall(r"\d+", colour)[:3]) for colour in colours
    )
    assert text == "#ffffff" and contrast_ratio(background, text) >= 4.5
    if configured is not None:
        assert (background == configured) == (contrast_ratio(configured, text) >= 4.5), (configured, background)


@pytest.mark.parametrize(("width", "locale"), [(360, "nl-NL"), (1280, "en-GB")])
async def test_page_says_who_what_and_where_then_preferences_stop_one_topic_then_all(
    setup: Setup, upstream: Any, browser: Browser, tmp_path: Path, width: int, locale: str
) -> None:
    news_url = await link_of(setup, upstream, "news")
    offers_url = await link_of(setup, upstream, "offers")
    context = await browser.new_context(viewport={"width": width, "height": 800}, locale=locale)
    page = await context.new_page()
    lang = locale[:2]

    # The newsletter's page: who (Shop), what (its title), where (Shop only), address masked.
    await page.goto(news_url)
    await expect(page.locator("html")).to_have_attribute("lang", lang)
    await expect(page.locator(".brand")).to_have_text("Shop")
    await expect(page.locator(".lead")).to_contain_text("the weekly newsletter")
    await expect(page.locator(".lead .address")).to_have_text("a**@example.nl")
    await expect(page.locator(".scope")).to_contain_text("Shop")
    assert ANNA not in await page.content()
    await expect(page.locator(".brand img")).to_have_js_property("complete", True)
    assert await page.locator(".brand img").evaluate("i => i.naturalWidth") == 132
    await accent_is_readable(page)
    await assert_accessible(page, f"unsubscribe page at {width}px")
    await page.screenshot(path=str(tmp_path / f"unsubscribe-{width}.png"), full_page=True)
    if width == 360:
        await page.screenshot(path=str(shots_dir(tmp_path) / "unsubscribe-page.png"), full_page=True)

    # The visible switch: German, and back.
    await page.get_by_role("link", name="Deutsch").click()
    await expect(page.locator("html")).to_have_attribute("lang", "de")
    await expect(page.locator("h1")).to_have_text("Abmelden")
    await expect(page.locator(".languages [aria-current]")).to_have_text("Deutsch")
    await assert_accessible(page, f"unsubscribe page in German at {width}px")
    await page.locator(f".languages a[lang={lang}]").click()
    await expect(page.locator("html")).to_have_attribute("lang", lang)

    # The offers' page: the consent was given at the holding, so that is where it stops.
    await page.goto(offers_url)
    await expect(page.locator(".lead")).to_contain_text("offers and discounts")
    await expect(page.locator(".scope")).to_contain_text("Holding B.V.")
    await expect(page.locator(".scope")).to_contain_text("Shop, Shop Twee")
    await assert_accessible(page, f"unsubscribe page of a parent's consent at {width}px")
    await page.screenshot(path=str(tmp_path / f"unsubscribe-parent-{width}.png"), full_page=True)

    # Preferences from the newsletter's link: both topics at the level where Anna signed up.
    await page.goto(news_url)
    await page.locator("main a[href*='/preferences']").click()
    rows = page.locator(".topics li")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("the weekly newsletter")
    await expect(rows.nth(1)).to_contain_text("offers and discounts")
    await expect(rows.nth(1)).to_contain_text("Holding B.V.")
    await assert_accessible(page, f"preferences at {width}px")
    await page.screenshot(path=str(tmp_path / f"preferences-{width}.png"), full_page=True)

    # Stop the newsletter only.
    logo_requests = len(setup.logo.requests)
    await rows.nth(0).get_by_role("button").click()
    await expect(page.locator("[role=status]")).to_contain_text("the weekly newsletter")
    await expect(page.locator(".brand img")).to_have_count(0)  # the answer to a POST loads nothing from elsewhere
    await expect(rows.nth(0).get_by_role("button")).to_have_count(0)
    await expect(rows.nth(1).get_by_role("button")).to_have_count(1)
    await assert_accessible(page, f"preferences after a change at {width}px")
    await page.screenshot(path=str(tmp_path / f"preferences-stopped-one-{width}.png"), full_page=True)
    if width == 1280:
        await page.screenshot(path=str(shots_dir(tmp_path) / "unsubscribe-preferences.png"), full_page=True)
    assert refused_at_rcpt(await send(setup, "news"))
    assert (await send(setup, "offers")).code == 250  # the other topic still goes through

    # Stop all: the offers (held at the holding) stop too, for every brand of the holding.
    await page.locator("main button[value=all]").click()
    await expect(page.locator("[role=status]")).to_be_visible()
    await expect(page.locator(".topics button")).to_have_count(0)
    await expect(page.locator("main button[value=all]")).to_have_count(0)
    await assert_accessible(page, f"preferences after stopping all at {width}px")
    await page.screenshot(path=str(tmp_path / f"preferences-stopped-all-{width}.png"), full_page=True)
    assert refused_at_rcpt(await send(setup, "offers"))
    assert len(setup.logo.requests) == logo_requests
    store = setup.relay.services.store
    vias = {(s.scope, s.topic, s.via) for s in await store.consent.list_suppressions()}
    assert vias == {("shop", "newsletter", "preferences"), ("holding", "*", "preferences")}
    audit = [e for e in await store.audit.list() if e.action == "unsubscribe.preferences"]
    assert sorted((e.actor, e.target, e.detail["topic"]) for e in audit) == [
        ("recipient", "holding", "*"), ("recipient", "shop", "newsletter")
    ]
    assert all(e.detail["email"] == ANNA for e in audit)
    await context.close()


async def test_button_unsubscribes_and_confirmation_loads_nothing_else(
    setup: Setup, upstream: Any, browser: Browser, tmp_path: Path
) -> None:
    news_url = await link_of(setup, upstream, "news")
    context = await browser.new_context(viewport={"width": 360, "height": 800}, locale="fr-FR")
    page = await context.new_page()
    await page.goto(news_url)
    await expect(page.locator("h1")).to_have_text("Se désabonner")
    await expect(page.locator(".brand img")).to_have_js_property("complete", True)
    assert setup.logo.requests and all(referer is None for _, referer in setup.logo.requests)  # the token never leaks
    before = len(setup.logo.requests)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.get_by_role("button", name="Se désabonner").click()
    await expect(page.locator("h1")).to_have_text("Vous êtes désabonné")
    status = page.locator("[role=status]")
    await expect(status).to_contain_text("the weekly newsletter")
    await expect(status).to_contain_text("a**@example.nl")
    await expect(status.locator("time")).to_have_count(1)
    assert await page.locator("script").count() == 0
    assert len(setup.logo.requests) == before and all(u.startswith(setup.base) for u in requested), requested
    await assert_accessible(page, "confirmation page")
    await page.screenshot(path=str(tmp_path / "confirmation-360.png"), full_page=True)
    assert refused_at_rcpt(await send(setup, "news"))
    assert (await send(setup, "offers")).code == 250
    (suppression,) = await setup.relay.services.store.consent.list_suppressions()
    assert (suppression.scope, suppression.topic, suppression.via) == ("shop", "newsletter", "page")

    # A broken link gets a page too, in the visitor's language, and passes the same check.
    response = await page.goto(setup.base + "/u/not-a-token")
    assert response is not None and response.status == 404
    await expect(page.locator("h1")).to_have_text("Lien non valide")
    await assert_accessible(page, "invalid link page")
    await context.close()


LONG_STREAMS = [
    {"id": "orders", "kind": "transactional"},
    {"id": "newsletter", "kind": "marketing", "topic": "newsletter", "envelope_from": ["news@shop.example"],
     "title": "de tweewekelijkse nieuwsbrief met aanbiedingen, recepten en nieuws uit alle winkels"},
    {"id": "offers", "kind": "marketing", "topic": "offers", "envelope_from": ["offers@shop.example"]},
]


@pytest.mark.parametrize(
    "look",
    [
        {},
        {"accent_color": "#ffffff"},
        {"accent_color": "#000000", "logo": True},
        {"accent_color": "#00ff00", "logo": True},
        {"accent_color": "#7c3aed"},
    ],
    ids=["no-look", "white", "black-logo", "green-logo", "violet"],
)
async def test_every_look_stays_readable_and_fits_a_phone(
    tmp_path: Path, upstream: Any, start_relay: Any, logo_host: LogoHost, browser: Browser, look: dict[str, Any]
) -> None:
    account_look = {k: v for k, v in look.items() if k != "logo"}
    if look.get("logo"):
        account_look["logo_url"] = f"{logo_host.base}/logo.svg"
    setup = await start_pages(tmp_path, upstream, start_relay, logo_host, account_look, LONG_STREAMS)
    news_url = await link_of(setup, upstream, "news")
    context = await browser.new_context(viewport={"width": 360, "height": 740}, locale="nl-NL")
    page = await context.new_page()
    for url in (news_url, news_url + "/preferences"):
        await page.goto(url)
        await expect(page.locator("main")).to_contain_text("de tweewekelijkse nieuwsbrief")
        await expect(page.locator(".brand img")).to_have_count(1 if look.get("logo") else 0)
        await accent_is_readable(page, look.get("accent_color"))
        await assert_accessible(page, f"{url} with {look}")
        # Nothing wider than the phone: no sideways scrolling.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    await page.screenshot(path=str(tmp_path / "preferences-look.png"), full_page=True)
    await context.close()


# --- by HTTP -------------------------------------------------------------------------------


async def test_one_click_post_stays_rfc_8058(setup: Setup, upstream: Any) -> None:
    news_url = await link_of(setup, upstream, "news")
    async with aiohttp.ClientSession() as http:
        async with http.post(news_url, data={"List-Unsubscribe": "One-Click"}, allow_redirects=False) as r:
            assert r.status == 200 and await r.text() == "unsubscribed\n"
            assert "Location" not in r.headers and "Set-Cookie" not in r.headers
    assert refused_at_rcpt(await send(setup, "news"))
    metrics = setup.relay.services.metrics.registry
    assert metrics.get_sample_value("consent_relay_unsubscribes_total", {"method": "one_click"}) == 1.0


async def test_names_from_the_config_are_escaped(tmp_path: Path, upstream: Any, start_relay: Any, logo_host: LogoHost) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    streams = [dict(s, title=f"news {hostile}") if s["id"] == "newsletter" else s for s in STREAMS]
    setup = await start_pages(tmp_path, upstream, start_relay, logo_host, {"parent_name": f'Holding "B.V." {hostile}'}, streams)
    pages = [await link_of(setup, upstream, "news"), await link_of(setup, upstream, "offers")]
    async with aiohttp.ClientSession() as http:
        for url in pages + [pages[0] + "/preferences"]:
            async with http.get(url) as r:
                html = await r.text()
                assert r.status == 200 and "<img src=x" not in html
                assert "&lt;img src=x onerror=alert(1)&gt;" in html


async def test_a_choice_that_is_not_on_the_page_changes_nothing(setup: Setup, upstream: Any) -> None:
    news_url = await link_of(setup, upstream, "news")
    async with aiohttp.ClientSession() as http:
        for bad in ({"stop": "shop2/deals"}, {"stop": "holding/newsletter%2F"}, {"nothing": "x"}, {}):
            async with http.post(news_url + "/preferences", data=bad) as r:
                assert r.status == 400 and "role=\"alert\"" in await r.text(), bad
        async with http.post(news_url + "/preferences", data=b"\xff\xfe", headers={"Content-Type": "multipart/form-data"}) as r:
            assert r.status == 400
        async with http.post(setup.base + "/u/forged/preferences", data={"stop": "all"}) as r:
            assert r.status == 404
    assert await setup.relay.services.store.consent.list_suppressions() == []
    assert (await send(setup, "news")).code == 250


async def test_preferences_count_and_show_in_the_metrics(setup: Setup, upstream: Any) -> None:
    news_url = await link_of(setup, upstream, "news")
    async with aiohttp.ClientSession(headers={"Accept-Language": "nl"}) as http:
        async with http.post(news_url + "/preferences", data={"stop": "holding/offers"}) as r:
            page = await r.text()
            assert r.status == 200 and "Gestopt met directe ingang" in page and "offers and discounts" in page
        # Pressed again (a reload re-POSTs): already stopped, so nothing more is recorded.
        async with http.post(news_url + "/preferences", data={"stop": "holding/offers"}) as r:
            assert r.status == 200 and "Gestopt met directe ingang" not in await r.text()
    assert refused_at_rcpt(await send(setup, "offers"))
    assert (await send(setup, "news")).code == 250
    metrics = setup.relay.services.metrics.registry
    assert metrics.get_sample_value("consent_relay_unsubscribes_total", {"method": "preferences"}) == 1.0
    (record,) = (await setup.relay.services.store.consent.find_consents(["holding"], [ANNA]))[ANNA]
    assert record.revoked_via == "preferences"
    audit = await setup.relay.services.store.audit.list()
    assert [(e.action, e.target, e.detail["topic"]) for e in audit] == [("unsubscribe.preferences", "holding", "offers")]
    # The application learns of it as of any unsubscribe: an `unsubscribed` event (docs/SPEC.md §17).
    events = [e for e in await setup.relay.services.store.events.after("holding", 0, 100) if e.recipient == ANNA]
    assert [(e.type, e.detail["topic"], e.detail["via"]) for e in events] == [("unsubscribed", "offers", "preferences")]


# --- a link scanner ------------------------------------------------------------------------


class Links(HTMLParser):
    """Every URL a scanner could GET from a page: links, images, and forms (as GET, with their fields)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in ("a", "link") and "href" in a:
            self.urls.append(a["href"])
        elif tag in ("img", "script", "iframe") and "src" in a:
            self.urls.append(a["src"])
        elif tag == "form":
            self.forms.append((a.get("action", ""), {}))
        elif tag in ("input", "button") and self.forms and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")


async def snapshot(setup: Setup) -> tuple[Any, ...]:
    store = setup.relay.services.store
    consents = await store.consent.find_consents(["shop", "holding"], [ANNA])
    registry = setup.relay.services.metrics.registry
    return (
        sorted((c.scope, c.topic, c.revoked_at, c.revoked_via) for c in consents.get(ANNA, [])),
        await store.consent.list_suppressions(),
        [(e.action, e.target) for e in await store.audit.list()],
        [registry.get_sample_value("consent_relay_unsubscribes_total", {"method": m})
         for m in ("one_click", "page", "mailto", "preferences")],
    )


async def test_a_crawler_following_every_link_changes_nothing(setup: Setup, upstream: Any) -> None:
    starts = [await link_of(setup, upstream, "news"), await link_of(setup, upstream, "offers")]
    before = await snapshot(setup)
    seen: set[str] = set()
    queue = [(url, None) for url in starts]
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        while queue and len(seen) < 300:
            url, _ = queue.pop(0)
            if url in seen:
                continue
            seen.add(url)
            async with http.get(url, allow_redirects=False) as r:
                statuses[url] = r.status
                if not r.headers.get("Content-Type", "").startswith("text/html"):
                    continue
                links = Links()
                links.feed(await r.text())
            for href in links.urls:
                queue.append((urldefrag(urljoin(url, href))[0], url))
            for action, fields in links.forms:
                # Some scanners submit forms as GETs: the form's own fields in the query.
                target = urljoin(url, action)
                joiner = "&" if urlsplit(target).query else "?"
                queue.append((target + joiner + urlencode(fields), url))
    pages = [u for u in seen if u.startswith(setup.base)]
    # Not a vacuous crawl: both pages, every language, preferences, the logo and the form-as-GET URLs.
    assert any(u.endswith("/logo.svg") for u in seen)
    assert {re.search(r"lang=(\w+)", u)[1] for u in pages if "lang=" in u} == {"nl", "en", "de", "fr"}  # type: ignore[index]
    assert sum("/preferences" in u for u in pages) >= 4 and any("stop=all" in u for u in pages)
    assert any("List-Unsubscribe=One-Click" in u for u in pages)
    assert all(statuses[u] == 200 for u in pages), {u: s for u, s in statuses.items() if s != 200}
    assert await snapshot(setup) == before
    assert (await send(setup, "news")).code == 250 and (await send(setup, "offers")).code == 250
