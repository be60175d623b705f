"""The admin web UI in a real browser (Playwright driving Debian's Chromium) against a real relay and a
real upstream: sign in, filter, open, release, bulk-delete, audit; hostile HTML neither runs nor loads.

Set UI_SCREENSHOTS_DIR=docs to refresh docs/ui-quarantine-list.png and docs/ui-quarantine-message.png.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from conftest import RecordingUpstream, asend, base_account, config_dict, deep_merge, write_config, zipped
from playwright.async_api import Browser, Page, expect

from relay.config import load_config
from relay.passwords import hash_password

TOKEN = "ui-admin-token-0123456789abcdef"
FOOTER = "Shop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678"
BAKERY_FOOTER = "Bakkerij de Vries V.O.F., Dorpsstraat 12, 9711 AB Groningen, KvK 87654321"


class RemoteHost:
    """Stands in for a tracker's server: counts every request that reaches it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def anything(request: web.Request) -> web.Response:
            self.hits.append(request.path)
            return web.Response(text="window.parent.pwned = 1", content_type="application/javascript")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", anything)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def base(self) -> str:
        # A different host name than the admin listener's 127.0.0.1: "that host" is unmistakable.
        return f"http://localhost:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def plain(sender: str, display: str, subject: str, footer: str, body: str) -> bytes:
    return (
        f"From: {display} <{sender}>\r\nTo: <anna@example.nl>\r\nSubject: {subject}\r\n"
        "Date: Tue, 10 Mar 2026 09:30:00 +0100\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}\r\n\r\n{footer}\r\n"
    ).encode("utf-8")


def hostile(remote: str) -> bytes:
    """A newsletter-looking HTML message with scripts, trackers, remote styles, frames and a refresh."""
    html = f"""<html><head>
<meta http-equiv="refresh" content="0;url={remote}/refresh">
<link rel="stylesheet" href="{remote}/style.css">
<style>@import url("{remote}/import.css"); body {{ font-family: Georgia, serif; background: url({remote}/bg.png); }}</style>
<script>document.title = "pwned"; window.pwned = 1; try {{ parent.document.title = "pwned"; }} catch (e) {{}}</script>
<script src="{remote}/tracker.js"></script>
</head>
<body onload="window.pwned = 2" style="margin:0;background:#fff7ed">
<table width="100%" cellpadding="24" style="background:#9a3412;color:#fff"><tr><td>
<h1 style="margin:0;font-size:28px">Spring sale: 20% off everything</h1>
<p style="margin:8px 0 0">Only this weekend, in every Shop store and online.</p></td></tr></table>
<div style="padding:24px;font-size:16px;line-height:1.5;color:#1c1917">
<p>Hoi Anna, the weather is awful, so why not shop from the sofa?</p>
<p><a href="{remote}/click?u=anna" style="display:inline-block;background:#ea580c;color:#fff;padding:10px 18px;border-radius:6px;text-decoration:none">Shop the sale</a></p>
<img src="{remote}/pixel.gif?u=anna" width="1" height="1" alt="">
<img srcset="{remote}/hero-2x.jpg 2x" alt="hero">
<iframe src="{remote}/frame.html"></iframe>
<p style="color:#78716c;font-size:13px">{FOOTER}<br>You get this mail because you subscribed at shop.example.</p>
</div></body></html>"""
    html = html.replace("\n", "\r\n")  # smtplib sends bytes as they are: lines must end in CRLF
    text = "Spring sale: 20% off everything.\r\n\r\n" + FOOTER
    return (
        "From: Shop <orders@shop.example>\r\nTo: <anna@example.nl>\r\n"
        "Subject: Wat een klote weer! Tijd voor 20% korting\r\n"
        "Date: Tue, 10 Mar 2026 09:30:00 +0100\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--b1--\r\n"
    ).encode("utf-8")


@pytest.fixture
async def remote() -> AsyncIterator[RemoteHost]:
    host = RemoteHost()
    await host.start()
    yield host
    await host.stop()


@pytest.fixture
async def relay(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> Any:
    data = config_dict(
        tmp_path, upstream.port,
        smtp={"auth_require_tls": False},
        http={"admin_listen": "127.0.0.1:0", "admin_tokens": [{"label": "alice", "hash": hash_password(TOKEN)}]},
        # Hold dangerous attachments instead of refusing them, so the UI can show what was found.
        policy={"actions": {"content.malware": "quarantine"}},
    )
    data["accounts"].append(
        deep_merge(base_account(), {
            "id": "bakkerij", "name": "Bakkerij de Vries", "domains": ["bakkerijdevries.example"],
            "legal_name": "Bakkerij de Vries V.O.F.", "postal_address": "Dorpsstraat 12, 9711 AB Groningen",
            "registration_number": "87654321", "abuse_contact": "abuse@bakkerijdevries.example", "trusted_networks": [],
            "password_hash": hash_password("bakkerij-password"),
        })
    )
    return await start_relay(load_config(write_config(tmp_path, data)))


async def hold(relay: Any, content: bytes, *, sender: str = "orders@shop.example", login: tuple[str, str] | None = None) -> str:
    out = await asend(relay.smtp_port, content, mail_from=sender, rcpts=["anna@example.nl"], login=login)
    assert out.code == 250 and "Held for review as" in out.text, out
    return re.search(r"as (Q\S+)", out.text).group(1)  # type: ignore[union-attr]




async def sign_in(page: Page, base: str) -> None:
    await page.goto(base + "/ui/")
    await expect(page).to_have_url(re.compile(r"/ui/login"))
    await page.fill("#token", "not-the-token")
    await page.click("button[type=submit]")
    await expect(page.locator(".flash.error")).to_contain_text("not a valid admin token")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/ui/quarantine$"))
    await expect(page.locator(".who")).to_contain_text("alice")


def shots_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("UI_SCREENSHOTS_DIR")
    return Path(configured) if configured else tmp_path


async def test_review_release_bulk_delete_and_audit(
    relay: Any, upstream: RecordingUpstream, browser: Browser, remote: RemoteHost, tmp_path: Path
) -> None:
    shop = [
        await hold(relay, plain("orders@shop.example", "Shop", f"Wat een klote weer! Deal {n}", FOOTER, "Twintig procent korting op alles."))
        for n in range(3)
    ]
    bakery = [
        await hold(
            relay,
            plain("brood@bakkerijdevries.example", "Bakkerij de Vries", f"Klote weer, vers brood {n}", BAKERY_FOOTER, "Warme broodjes."),
            sender="brood@bakkerijdevries.example", login=("bakkerij", "bakkerij-password"),
        )
        for n in range(2)
    ]
    showcase = await hold(relay, hostile(remote.base))
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    base = f"http://127.0.0.1:{relay.admin_port}"
    await sign_in(page, base)

    # The list: every held message, counts per rule and account.
    rows = page.locator("table.list tbody tr[data-id]")
    await expect(rows).to_have_count(6)
    await expect(page.locator(".chips a", has_text="bakkerij")).to_contain_text("2")
    await expect(page.locator(".chips a", has_text="content.offensive_subject")).to_contain_text("6")
    await page.screenshot(path=str(shots_dir(tmp_path) / "ui-quarantine-list.png"), full_page=True)

    # Filter by account, then by age (nothing is older than 7 days).
    await page.select_option("select[name=account]", "bakkerij")
    await page.click("form.filters button[type=submit]")
    await expect(rows).to_have_count(2)
    assert sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.id)")) == sorted(bakery)
    await page.select_option("select[name=age]", "older7d")
    await page.click("form.filters button[type=submit]")
    await expect(rows).to_have_count(0)
    await page.click("text=Reset")
    await expect(rows).to_have_count(6)

    # Open one message: headers, text, findings with evidence; release it with a note.
    await page.click(f"tr[data-id='{shop[0]}'] td.subject a")
    await expect(page.locator("h1")).to_have_text("Wat een klote weer! Deal 0")
    await expect(page.locator(".findings")).to_contain_text("content.offensive_subject")
    await expect(page.locator(".findings .evidence")).to_contain_text("klote")
    await expect(page.locator("pre.body")).to_contain_text("Twintig procent korting op alles.")
    await expect(page.locator("pre.headers")).to_contain_text("Subject: Wat een klote weer! Deal 0")
    await page.fill("#note", "offensive word used jokingly; fine")
    await page.click("button[value=release]")
    await expect(page).to_have_url(re.compile(r"/ui/quarantine$"))
    await expect(page.locator(".flash")).to_contain_text("Released 1 message: delivered to 1 recipient")
    assert [m.rcpt_tos for m in upstream.messages] == [["anna@example.nl"]]
    assert b"Subject: Wat een klote weer! Deal 0" in upstream.messages[0].content
    await expect(rows).to_have_count(5)

    # Bulk-delete two with a note.
    await page.check(f"input[name=ids][value='{shop[1]}']")
    await page.check(f"input[name=ids][value='{bakery[0]}']")
    await page.fill(".bulkbar input[name=note]", "bulk cleanup")
    await page.click("button[value=delete]")
    await expect(page.locator(".flash")).to_contain_text("Deleted 2 messages.")
    await expect(rows).to_have_count(3)
    remaining = await rows.evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert sorted(remaining) == sorted([shop[2], bakery[1], showcase])

    # The audit log shows who did what and why.
    await page.click("nav >> text=Audit log")
    audit = page.locator("table.list tbody tr")
    await expect(audit).to_have_count(3)
    text = await page.locator("table.list").inner_text()
    assert "quarantine.release" in text and "offensive word used jokingly; fine" in text
    assert text.count("quarantine.delete") == 2 and text.count("bulk cleanup") == 2
    assert text.count("alice") == 3 and shop[1] in text and bakery[0] in text

    # Account state page: pause with a reason, then resume.
    await page.click("nav >> text=Accounts")
    row = page.locator("tr[data-account=bakkerij]")
    await row.locator("input[name=reason]").fill("complaint spike")
    await row.locator("button[value=pause]").click()
    await expect(page.locator(".flash")).to_contain_text("bakkerij is now paused")
    await expect(row.locator(".state")).to_have_text("paused")
    assert (await relay.services.store.accounts.get("bakkerij")).state == "paused"
    await row.locator("button[value=resume]").click()  # no reason given: refused, still paused
    await expect(page.locator(".flash")).to_contain_text("Give a reason to resume bakkerij")
    await expect(row.locator(".state")).to_have_text("paused")
    await row.locator("input[name=reason]").fill("spike explained: a re-sent campaign")
    await row.locator("button[value=resume]").click()
    await expect(row.locator(".state")).to_have_text("active")

    # The message view of the showcase (hostile) message, for the README.
    await page.goto(f"{base}/ui/quarantine/{showcase}")
    await page.frame_locator("iframe.html").locator("h1").wait_for()
    # A full_page capture leaves out-of-viewport iframes blank: grow the viewport to the page instead.
    height = await page.evaluate("document.documentElement.scrollHeight")
    await page.set_viewport_size({"width": 1280, "height": height})
    await page.frame_locator("iframe.html").locator("h1").wait_for()
    await page.screenshot(path=str(shots_dir(tmp_path) / "ui-quarantine-message.png"))
    await context.close()


async def test_hostile_html_neither_runs_nor_loads(relay: Any, browser: Browser, remote: RemoteHost) -> None:
    qid = await hold(relay, hostile(remote.base))
    context = await browser.new_context()
    page = await context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    base = f"http://127.0.0.1:{relay.admin_port}"
    await sign_in(page, base)
    await page.goto(f"{base}/ui/quarantine/{qid}")
    frame_box = page.frame_locator("iframe.html")
    await expect(frame_box.locator("h1")).to_have_text("Spring sale: 20% off everything")
    await expect(frame_box.locator("a", has_text="Shop the sale")).to_be_visible()
    # What review needs survives the sanitizer: the inline-styled layout, and where the link pointed
    # (listed under the frame, as text, instead of being followable in it).
    banner = frame_box.locator("table").first
    assert await banner.evaluate("t => getComputedStyle(t).backgroundColor") == "rgb(154, 52, 18)"
    assert await frame_box.locator("a", has_text="Shop the sale").evaluate("a => getComputedStyle(a).backgroundColor") == "rgb(234, 88, 12)"
    await expect(frame_box.locator("[href], [src^=http], [srcset], script, iframe, link, meta[http-equiv]")).to_have_count(0)
    await expect(page.locator("details.links li")).to_have_text([f"{remote.base}/click?u=anna"])
    await page.wait_for_load_state("networkidle")
    await page.locator("iframe.html").click(position={"x": 5, "y": 5})  # a click must not navigate either

    title = await page.title()
    assert "pwned" not in title and title.startswith("Wat een klote weer!")
    frame = next(f for f in page.frames if f.url.endswith(f"/ui/quarantine/{qid}/html"))
    assert await frame.evaluate("typeof window.pwned") == "undefined"
    assert await frame.evaluate("document.title") != "pwned"
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert not [u for u in requested if u.startswith(remote.base) or "localhost" in u], requested
    assert remote.hits == []
    await expect(page.locator("iframe.html")).to_have_attribute("sandbox", "")
    await expect(page.locator("section.card", has_text="HTML, as sent")).to_contain_text("Not loaded:")

    # Even opened directly, the HTML endpoint has a CSP that forbids scripts and remote content.
    response = await page.goto(f"{base}/ui/quarantine/{qid}/html")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src data:" in csp and "sandbox" in csp
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert remote.hits == []
    await context.close()


async def test_signed_out_pages_redirect_and_sign_out_ends_the_session(relay: Any, browser: Browser) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    base = f"http://127.0.0.1:{relay.admin_port}"
    await page.goto(base + "/ui/audit")
    await expect(page).to_have_url(re.compile(r"/ui/login\?next=(%2F|/)ui(%2F|/)audit"))
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/ui/audit$"))  # back where the admin was going
    (cookie,) = [c for c in await context.cookies() if c["name"] == "relay_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    await page.click(".who button")
    await expect(page).to_have_url(re.compile(r"/ui/login"))
    await page.goto(base + "/ui/quarantine")
    await expect(page).to_have_url(re.compile(r"/ui/login"))
    await context.close()


def with_attachments(subject: str, attachments: list[tuple[str, str, bytes]]) -> bytes:
    """A plain order mail from Shop with base64 attachments (name, content type, bytes)."""
    import base64

    parts = "".join(
        f"--mix\r\nContent-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{base64.encodebytes(data).decode().replace(chr(10), chr(13) + chr(10))}"
        for name, ctype, data in attachments
    )
    return (
        f"From: Shop <orders@shop.example>\r\nTo: <anna@example.nl>\r\nSubject: {subject}\r\n"
        "Date: Tue, 10 Mar 2026 09:30:00 +0100\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
        "--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe catalogue is attached.\r\n\r\n"
        f"{FOOTER}\r\n{parts}--mix--\r\n"
    ).encode("utf-8")


async def test_rule_filter_bulk_release_and_the_attachments_table(
    relay: Any, upstream: RecordingUpstream, browser: Browser
) -> None:
    offensive = [
        await hold(relay, plain("orders@shop.example", "Shop", f"Wat een klote weer! Deal {n}", FOOTER, "Twintig procent korting."))
        for n in range(2)
    ]
    # policy: clang E-misleiden — a fake reply held by content.misleading_subject
    misleading = await hold(relay, plain("orders@shop.example", "Shop", "Re: your order 1234", FOOTER, "It ships tomorrow."))
    # policy: mailpro M-code-of-conduct — an executable in a zip, held (by this config) by content.malware
    pdf = b"%PDF-1.7\n" + b"catalogue " * 300
    malware = await hold(
        relay,
        with_attachments("Your catalogue", [
            ("catalogus.pdf", "application/pdf", pdf),
            ("tools.zip", "application/zip", zipped({"readme.txt": b"hi", "bin/setup.exe": b"MZ" + b"\0" * 200})),
        ]),
    )
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    base = f"http://127.0.0.1:{relay.admin_port}"
    await sign_in(page, base)
    rows = page.locator("table.list tbody tr[data-id]")
    await expect(rows).to_have_count(4)

    async def shown() -> list[str]:
        return sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.id)"))

    # The rule filter: each rule shows only what it held, and the select keeps the choice.
    for rule, expected in (
        ("content.misleading_subject", [misleading]),
        ("content.malware", [malware]),
        ("content.offensive_subject", offensive),
    ):
        await page.select_option("select[name=rule]", rule)
        await page.click("form.filters button[type=submit]")
        await expect(page).to_have_url(re.compile(r"rule=" + re.escape(rule)))
        await expect(rows).to_have_count(len(expected))
        assert await shown() == sorted(expected), rule
        await expect(page.locator("select[name=rule]")).to_have_value(rule)
        await expect(page.locator("td .badge", has_text=rule).first).to_be_visible()
    # A rule chip filters the same way.
    await page.click("text=Reset")
    await page.locator(".chips a", has_text="content.malware").click()
    await expect(rows).to_have_count(1)
    assert await shown() == [malware]

    # The attachments table of the held message: name, type, size and what was found inside.
    await page.click(f"tr[data-id='{malware}'] td.subject a")
    table = page.locator("section.card", has=page.locator("h2", has_text="Attachments")).locator("table")
    lines = table.locator("tbody tr")
    await expect(lines).to_have_count(2)
    await expect(lines.nth(0)).to_contain_text("catalogus.pdf")
    await expect(lines.nth(0)).to_contain_text("application/pdf")
    await expect(lines.nth(0).locator("td.num")).to_have_text(f"{len(pdf) / 1024:.1f} KB")
    await expect(lines.nth(1)).to_contain_text("tools.zip")
    await expect(lines.nth(1)).to_contain_text("⚠ executable in bin/setup.exe")
    await expect(page.locator(".findings .evidence")).to_contain_text("tools.zip/bin/setup.exe")

    # Bulk release from the list: the two offensive ones, with a note; the others stay held.
    await page.goto(base + "/ui/quarantine?rule=content.offensive_subject")
    for qid in offensive:
        await page.check(f"input[name=ids][value='{qid}']")
    await page.fill(".bulkbar input[name=note]", "jokes, fine")
    await page.click("button[value=release]")
    await expect(page.locator(".flash")).to_contain_text("Released 2 messages: delivered to 2 recipients")
    await expect(page).to_have_url(re.compile(r"rule=content.offensive_subject"))  # back to the filtered list
    await expect(rows).to_have_count(0)
    assert sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in upstream.messages) == [
        b"Wat een klote weer! Deal 0", b"Wat een klote weer! Deal 1"
    ]
    await page.goto(base + "/ui/quarantine")
    await expect(rows).to_have_count(2)
    assert await shown() == sorted([misleading, malware])
    entries = await relay.services.store.audit.list(limit=10)
    assert sorted((e.target, e.action, e.actor, e.note) for e in entries) == sorted(
        (qid, "quarantine.release", "alice", "jokes, fine") for qid in offensive
    )
    await context.close()
