"""Hosted double opt-in in a real browser (Playwright driving Debian's Chromium): the application's
backend submits a signup, the DKIM-signed confirmation mail reaches the upstream, the recipient opens
the link and presses the button, and the next newsletter is delivered; the page passes axe-core and
fits a 360 px wide phone (screenshots kept in the test's directory, or SIGNUP_SCREENSHOTS_DIR)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, expect

from tests.conftest import RecordingUpstream, asend, cli_run, message, until
from tests.e2e.signup_support import (
    cli_json,
    ADMIN_TOKEN, SIGNUP, confirm_link, dkim_records, local_url, perl_verify, post_signup, signup_config,
)

PHONE = {"width": 360, "height": 740}




def shots_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("SIGNUP_SCREENSHOTS_DIR")
    folder = Path(configured) if configured else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def accessible(page: Page) -> None:
    """axe-core (WCAG 2 A/AA and best practices) finds no violation; the page does not scroll sideways."""
    results = await Axe().run(page)
    assert results.violations_count == 0, results.generate_report()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide at {PHONE['width']} px"


async def test_signup_confirm_in_chromium_then_the_newsletter_is_delivered(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, browser: Browser, capsys: pytest.CaptureFixture[str]
) -> None:
    config = signup_config(tmp_path, upstream.port)
    relay = await start_relay(config, background=True)
    status, answer = await post_signup(relay.admin_port, SIGNUP)
    assert (status, answer["status"]) == (202, "sent")
    await until(lambda: upstream.messages, what="the confirmation mail")
    mail = upstream.messages[0]
    assert perl_verify(mail.content, dkim_records(config), tmp_path) == "pass"
    url = local_url(relay.public_port, confirm_link(mail.content))

    context = await browser.new_context(viewport=PHONE, locale="en-GB")
    page = await context.new_page()
    await page.goto(url)
    await expect(page).to_have_title("Aanmelding bevestigen")  # the signup's language, not the browser's
    await expect(page.locator("html")).to_have_attribute("lang", "nl")
    await expect(page.locator("blockquote")).to_have_text(SIGNUP["statement"])
    assert await page.locator("button").count() == 1
    await accessible(page)
    await page.screenshot(path=str(shots_dir(tmp_path) / "signup-confirm-360.png"), full_page=True)
    # Opening the page confirmed nothing.
    assert (await relay.services.store.consent.find_consents(["shop"], ["anna@example.nl"])) == {}

    await page.get_by_role("button", name="Ja, ik meld me aan").click()
    await expect(page.locator("h1")).to_have_text("Aanmelding bevestigd")
    await accessible(page)
    await page.screenshot(path=str(shots_dir(tmp_path) / "signup-confirmed-360.png"), full_page=True)
    [first] = (await relay.services.store.consent.find_consents(["shop"], ["anna@example.nl"]))["anna@example.nl"]
    # Back to the link: no button any more; the form posted again (a replay) records nothing new.
    await page.go_back()
    await page.reload()
    await expect(page.locator("h1")).to_have_text("Aanmelding bevestigd")
    assert await page.locator("button").count() == 0
    replay = await page.request.post(url, form={"confirm": "yes"})
    assert replay.status == 200
    [again] = (await relay.services.store.consent.find_consents(["shop"], ["anna@example.nl"]))["anna@example.nl"]
    assert again == first
    await context.close()

    newsletter = message(sender="news@shop.example", to="anna@example.nl", subject="Nieuw", stream="newsletter",
                         body="Nieuw deze week. Afmelden: {{unsubscribe_url}}")
    sent = await asend(relay.smtp_port, newsletter, mail_from="news@shop.example", rcpts=["anna@example.nl"])
    assert sent.code == 250, sent
    assert upstream.messages[-1].rcpt_tos == ["anna@example.nl"] and len(upstream.messages) == 2

    await until(lambda: _mail_delivered(relay), what="the confirmation mail's delivery noted")
    await relay.recorder.flush()  # the newsletter's delivery row is written behind the reply
    capsys.readouterr()
    code, out, err = await asyncio.to_thread(
        cli_run, ["consent", "proof", "anna@example.nl", "--account", "shop", "--format", "json", "-c", str(config.path)], capsys
    )
    assert code == 0, err
    proof = cli_json(out)
    [consent] = proof["consents"]
    [chain] = proof["signups"]
    # Every question of the CSA complaint procedure has its answer.
    assert consent["collected_at"] == chain["request"]["requested_at"]
    assert chain["request"]["method"] == "web_form" and consent["source"] == "signup_form"
    assert consent["source_url"] == SIGNUP["source_url"] and consent["source_ip"] == SIGNUP["ip"]
    assert consent["basis"] == "double_opt_in" and chain["confirmation"]["opt_in_type"] == "double"
    assert consent["confirmed_at"] == chain["confirmation"]["confirmed_at"] and chain["confirmation"]["ip"] == "127.0.0.1"
    assert consent["statement_text"] == SIGNUP["statement"] and chain["request"]["frequency"] == SIGNUP["frequency"]
    assert consent["frequency_disclosed"] is True and consent["prechecked"] is False
    assert chain["mail"]["status"] == "delivered" and chain["mail"]["relay_id"] == mail_relay_id(mail.content)
    assert [d["relay_id"] for d in proof["deliveries"]]  # the newsletter, under this consent
    assert proof["deliveries"][0]["consent_id"] == consent["id"]

    # The admin UI shows the same chain.
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    admin = f"http://127.0.0.1:{relay.admin_port}"
    await page.goto(admin + "/ui/login")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.goto(admin + "/ui/consent?email=anna%40example.nl&account=shop")
    chain_card = page.locator("section.card", has=page.locator("h2", has_text="Double opt-in through the relay"))
    await expect(chain_card).to_contain_text(chain["mail"]["relay_id"])
    await expect(chain_card).to_contain_text("via web_form")
    await expect(chain_card).to_contain_text(f"{chain['confirmation']['confirmed_at']} from 127.0.0.1")
    await context.close()


def mail_relay_id(raw: bytes) -> str:
    found = re.search(rb"^X-Relay-Id: (\S+)", raw, re.M)
    assert found
    return found[1].decode()


async def _mail_delivered(relay: Any) -> bool:
    [signup] = await relay.services.store.signups.for_address("anna@example.nl", ["shop"])
    return signup.mail_status == "delivered"


async def test_scanner_gets_expired_forged_and_replayed_links_record_nothing(
    tmp_path: Path, upstream: RecordingUpstream, start_relay: Any, browser: Browser
) -> None:
    from tests.conftest import Clocked
    import datetime as dt

    clock = Clocked(dt.datetime(2026, 3, 16, 9, 0, tzinfo=dt.timezone.utc))
    config = signup_config(tmp_path, upstream.port, signups={"confirm_ttl_hours": 1})
    relay = await start_relay(config, background=True, clock=clock.clock())
    assert (await post_signup(relay.admin_port, SIGNUP))[0] == 202
    await until(lambda: upstream.messages, what="the confirmation mail")
    url = local_url(relay.public_port, confirm_link(upstream.messages[0].content))
    context = await browser.new_context(viewport=PHONE, locale="de-DE")
    page = await context.new_page()
    # A link scanner fetches (GET) the page, follows nothing, runs no form.
    for _ in range(3):
        response = await page.goto(url)
        assert response is not None and response.status == 200
    token = url.rsplit("/", 1)[1]
    response = await page.goto(url.replace(token, token[::-1]))
    assert response is not None and response.status == 404
    await expect(page.locator("html")).to_have_attribute("lang", "de")  # the browser's language: no signup to ask
    await accessible(page)
    await page.screenshot(path=str(shots_dir(tmp_path) / "signup-invalid-360.png"), full_page=True)
    clock.advance(hours=1)
    await page.goto(url)
    await expect(page.locator("h1")).to_have_text("Link ungültig")
    assert await page.locator("button").count() == 0
    await context.close()
    assert (await relay.services.store.consent.find_consents(["shop"], ["anna@example.nl"])) == {}
    assert ADMIN_TOKEN  # the API token never reaches the browser
