"""The web UI at the HTTP level: sessions, cookie flags, CSRF on every form, redirects that stay on /ui,
security headers, escaping, and the inert HTML of quarantined messages."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from conftest import no_readiness, serving

from relay.config import build_config
from relay.routes import build_admin_app
from relay.passwords import hash_password
from relay.services import Clock, Services
from relay.store.records import QuarantineItem
from relay.web.safe_html import make_inert
from relay.web.ui import MESSAGE_CSP, Sessions

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
TOKEN = "ui-token-0123456789abcdef"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def hostile_item() -> QuarantineItem:
    raw = (
        'From: "<script>alert(1)</script>" <news@shop.example>\r\nSubject: <img src=x onerror=alert(1)>\r\n'
        'Content-Type: text/html; charset=utf-8\r\n\r\n<p onclick="x()">Hi <img src="https://evil.test/p.gif"></p><script>alert(2)</script>\r\n'
    ).encode()
    return QuarantineItem(
        id="Q1", relay_id="1", account="shop", stream="news", mail_from="news@shop.example", rcpt_tos=("anna@example.nl",),
        subject="<img src=x onerror=alert(1)>", rules=("content.adult",),
        findings=({"rule": "content.adult", "action": "quarantine", "detail": "<b>bold</b>", "evidence": "<script>e</script>", "recipient": None},),
        size=len(raw), received_at=NOW, content=raw,
    )


class Browserless:
    """A cookie-keeping HTTP client: what a browser does with forms, without the browser."""

    def __init__(self, session: aiohttp.ClientSession, base: str, services: Services) -> None:
        self.session, self.base, self.services = session, base, services

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        async with self.session.get(self.base + path, allow_redirects=False, **kwargs) as r:
            await r.read()
            return r

    async def post(self, path: str, data: dict[str, Any], **kwargs: Any) -> aiohttp.ClientResponse:
        async with self.session.post(self.base + path, data=data, allow_redirects=False, **kwargs) as r:
            await r.read()
            return r

    async def text(self, path: str) -> str:
        async with self.session.get(self.base + path) as r:
            return await r.text()

    async def sign_in(self) -> str:
        page = await self.text("/ui/login")
        csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
        r = await self.post("/ui/login", {"csrf": csrf, "token": TOKEN, "next": "/ui/audit"})
        assert r.status == 303 and r.headers["Location"] == "/ui/audit"
        return CSRF.search(await self.text("/ui/quarantine")).group(1)  # type: ignore[union-attr]


@pytest.fixture
async def ui(tmp_path: Path) -> AsyncIterator[Browserless]:
    data = {
        "store": {"url": f"sqlite:///{tmp_path}/relay.db"},
        "http": {"admin_tokens": [{"label": "dana", "hash": hash_password(TOKEN)}]},
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"]},
        "accounts": [{"id": "shop", "domains": ["shop.example"], "default_stream": "news", "streams": [{"id": "news", "kind": "marketing"}]}],
    }
    services = Services.build(build_config(data, tmp_path / "config.toml"), clock=Clock(now=lambda: NOW))
    await services.store.open()
    await services.store.quarantine.hold(hostile_item())

    app = build_admin_app(services, no_readiness)
    cookies = aiohttp.CookieJar(unsafe=True)
    async with serving(app) as base, aiohttp.ClientSession(cookie_jar=cookies) as session:
        yield Browserless(session, base, services)
    await services.store.close()


async def test_pages_need_a_session(ui: Browserless) -> None:
    for path in ("/ui/quarantine", "/ui/quarantine/Q1", "/ui/quarantine/Q1/html", "/ui/quarantine/Q1/raw", "/ui/audit", "/ui/accounts", "/ui/consent"):
        r = await ui.get(path)
        assert r.status == 303 and r.headers["Location"].startswith("/ui/login?next="), path
    r = await ui.post("/ui/quarantine/Q1/act", {"action": "delete"})
    assert r.status == 403
    # A bearer token is for /api, not a way into the UI.
    r = await ui.get("/ui/quarantine", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 303
    assert await ui.services.store.quarantine.get("Q1") is not None


async def test_login_sets_a_strict_httponly_cookie_and_needs_the_form_token(ui: Browserless) -> None:
    r = await ui.post("/ui/login", {"token": TOKEN})  # no login CSRF token / cookie
    assert r.status == 403 and "relay_session" not in r.cookies
    page = await ui.text("/ui/login")
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    r = await ui.post("/ui/login", {"csrf": csrf, "token": "wrong"})
    assert r.status == 401
    page = await ui.text("/ui/login")
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    r = await ui.post("/ui/login", {"csrf": csrf, "token": TOKEN, "next": "//evil.test/x"})
    assert r.status == 303 and r.headers["Location"] == "/ui/quarantine"  # never off-site
    cookie = r.cookies["relay_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ui" and not cookie["secure"]
    assert len(cookie.value) >= 40


async def test_every_post_needs_the_session_csrf_token(ui: Browserless) -> None:
    csrf = await ui.sign_in()
    for path, form in (
        ("/ui/quarantine/Q1/act", {"action": "delete", "note": "x"}),
        ("/ui/quarantine/bulk", {"action": "delete", "ids": "Q1"}),
        ("/ui/accounts/shop", {"action": "suspend", "reason": "x"}),
        ("/ui/logout", {}),
    ):
        r = await ui.post(path, {**form, "csrf": "forged"})
        assert r.status == 403, path
        r = await ui.post(path, form)
        assert r.status == 403, path
    assert await ui.services.store.quarantine.get("Q1") is not None
    assert (await ui.services.store.accounts.get("shop")).state == "active"
    r = await ui.post("/ui/quarantine/Q1/act", {"action": "delete", "note": "spam", "csrf": csrf})
    assert r.status == 303
    assert await ui.services.store.quarantine.get("Q1") is None
    (entry,) = await ui.services.store.audit.list(target="Q1")
    assert (entry.actor, entry.action, entry.note) == ("dana", "quarantine.delete", "spam")


async def test_pages_escape_message_data_and_send_security_headers(ui: Browserless) -> None:
    await ui.sign_in()
    for path in ("/ui/quarantine", "/ui/quarantine/Q1"):
        async with ui.session.get(ui.base + path) as r:
            page = await r.text()
            assert "default-src 'none'" in r.headers["Content-Security-Policy"] and "script-src" not in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
        assert "<img src=x" not in page and "<script>" not in page, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
    page = await ui.text("/ui/quarantine/Q1")
    assert "&lt;script&gt;e&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert '<iframe class="html" sandbox=""' in page
    async with ui.session.get(ui.base + "/ui/quarantine/Q1/html") as r:
        body = await r.text()
        assert r.headers["Content-Security-Policy"] == MESSAGE_CSP
    assert "evil.test" not in body and "<script" not in body and "onclick" not in body and "Hi" in body


async def test_account_state_change_from_the_ui_is_audited(ui: Browserless) -> None:
    csrf = await ui.sign_in()
    r = await ui.post("/ui/accounts/shop", {"action": "suspend", "reason": "", "csrf": csrf})
    assert r.status == 303 and (await ui.services.store.accounts.get("shop")).state == "active"  # a reason is needed
    r = await ui.post("/ui/accounts/shop", {"action": "suspend", "reason": "complaints", "csrf": csrf})
    assert r.status == 303 and (await ui.services.store.accounts.get("shop")).state == "suspended"
    assert "is now suspended" in await ui.text("/ui/accounts")
    entries = await ui.services.store.audit.list()
    assert any(e.actor == "dana" and e.target == "shop" and e.note == "complaints" for e in entries)


def test_sessions_expire_when_idle_and_ids_are_random() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    a, b = sessions.create("alice"), sessions.create("alice")
    assert a.id != b.id and a.csrf != b.csrf
    now[0] = 3600
    assert sessions.get(a.id) is a
    now[0] = 3600 * 4
    assert sessions.get(a.id) is None and sessions.get("guess") is None


def test_inert_html_removes_scripts_handlers_and_remote_references() -> None:
    inert = make_inert(
        '<html><head><base href="https://evil.test/"><link rel=stylesheet href="https://evil.test/s.css">'
        '<meta http-equiv="refresh" content="0;url=https://evil.test/"><style>@import "https://evil.test/i.css";'
        "p{background:url('https://evil.test/b.png')} h1{background:url(data:image/png;base64,AAAA)}</style></head>"
        '<body onload="x()" background="https://evil.test/bg.png"><script>alert(1)</script>'
        '<p style="background-image:url(https://evil.test/c.png);color:red" onclick="alert(3)">Hi <a href="https://shop.example/sale">sale</a></p>'
        '<img src="https://evil.test/p.gif"><img src="data:image/png;base64,AAAA"><img srcset="https://evil.test/x 2x">'
        '<iframe src="https://evil.test/f"></iframe><object data="https://evil.test/o"></object>'
        '<svg><image href="https://evil.test/s.png"/></svg><video poster="https://evil.test/v.png"></video></body></html>'
    )
    assert "evil.test" not in inert.html
    assert "<script" not in inert.html and "onload" not in inert.html and "alert" not in inert.html
    assert "href" not in inert.html and "<a>sale</a>" in inert.html  # the text stays, the link cannot be followed
    assert inert.links == ["https://shop.example/sale"]  # the target is listed for the reviewer instead
    assert "data:image/png;base64,AAAA" in inert.html and "color:red" in inert.html
    assert inert.scripts == 2 and inert.blocked >= 10


@pytest.mark.parametrize(
    "hostile",
    [
        '<a href="javascript:alert(1)">x</a>',
        '<a href="JaVaScRiPt&colon;alert(1)">x</a>',
        '<a href="/ui/logout">x</a>',  # a path would point into the admin UI itself
        '<img src="data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=">',
        '<p style="background:u\\72l(https://evil.test/e)">x</p>',  # a CSS escape spelling url(
        "<p style=\"background-image:image-set('https://evil.test/i.png' 1x)\">x</p>",
        '<p style="width:expression(alert(1))">x</p>',
        '<p style="background:#fff url(https://evil.test/b.png)">x</p>',
        '<form action="https://evil.test/f"><input name=a><button formaction="https://evil.test/g">go</button></form>',
        '<div><style>*{background:url(https://evil.test/s)}</style></div>',
        '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>',  # mutation-XSS shape
        '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
        '<table background="https://evil.test/t.png"><tr><td>x</td></tr></table>',
    ],
)
def test_inert_html_keeps_nothing_that_runs_or_loads(hostile: str) -> None:
    html = make_inert(hostile).html
    assert not re.search(r"(?i)javascript|evil\.test|onerror|alert|expression|href|<style|<form|<input|svg", html), html


def test_inert_html_keeps_the_layout_of_a_newsletter() -> None:
    inert = make_inert(
        '<table width="100%" cellpadding="24" bgcolor="#9a3412" style="background:#9a3412;color:#fff"><tr>'
        '<td align="center" valign="top"><h1 style="margin:0;font-size:28px">Sale</h1>'
        '<font face="Georgia" color="#fff">20% off</font><img src="data:image/png;base64,AAAA" width="1" alt="dot">'
        '<p style="color:rgb(120, 113, 108);font-family:Georgia, serif;background:#fff url(data:image/png;base64,AAAA)">Footer</p>'
        "</td></tr></table>"
    )
    for kept in (
        'width="100%"', 'cellpadding="24"', 'bgcolor="#9a3412"', "background:#9a3412", 'align="center"', 'valign="top"',
        "font-size:28px", '<font face="Georgia" color="#fff">', 'src="data:image/png;base64,AAAA"', 'alt="dot"',
        "color:rgb(120, 113, 108)", "font-family:Georgia, serif", "url(data:image/png;base64,AAAA)",
    ):
        assert kept in inert.html, kept
    assert (inert.blocked, inert.scripts) == (0, 0)


async def test_consent_lookup_shows_the_proof(ui: Browserless) -> None:
    from policies.facts import ConsentRecord

    await ui.services.store.consent.upsert_consents(
        [ConsentRecord(
            email="anna@example.nl", scope="shop", basis="double_opt_in", source="signup_form",
            collected_at=datetime(2026, 1, 10, 9, tzinfo=timezone.utc), confirmed_at=datetime(2026, 1, 10, 9, 3, tzinfo=timezone.utc),
            source_url="https://shop.example/signup", source_ip="198.51.100.4", statement_text="Yes, <send> me the newsletter",
            frequency_disclosed=True,
        )],
        now=NOW,
    )
    await ui.sign_in()
    page = await ui.text("/ui/consent?email=Anna%40Example.nl&account=shop")
    assert "Consents of anna@example.nl at shop" in page
    assert "https://shop.example/signup" in page and "198.51.100.4" in page
    assert "Yes, &lt;send&gt; me the newsletter" in page and "double_opt_in" in page
    assert "When was the address collected?" in page  # the plain-language proof for a complaints desk
    page = await ui.text("/ui/consent?email=not-an-address&account=shop")
    assert 'class="flash error"' in page


def attachment_item() -> QuarantineItem:
    import base64
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bin/setup.exe", b"MZ" + b"\0" * 100)
    zipped = base64.b64encode(archive.getvalue()).decode()
    raw = (
        "From: Shop <news@shop.example>\r\nSubject: Catalogue\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n'
        '--b\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename="<b>tools</b>.zip"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{zipped}\r\n--b--\r\n"
    ).encode()
    return QuarantineItem(
        id="Q2", relay_id="2", account="shop", stream="news", mail_from="news@shop.example", rcpt_tos=("anna@example.nl",),
        subject="Catalogue", rules=("content.malware",),
        findings=({"rule": "content.malware", "action": "quarantine", "detail": "dangerous", "evidence": "tools.zip/bin/setup.exe", "recipient": None},),
        size=len(raw), received_at=NOW, content=raw,
    )


async def test_rule_filter_and_the_attachments_table(ui: Browserless) -> None:
    await ui.services.store.quarantine.hold(attachment_item())
    await ui.sign_in()
    rows = re.compile(r'<tr data-id="([^"]+)"')
    assert sorted(rows.findall(await ui.text("/ui/quarantine"))) == ["Q1", "Q2"]
    page = await ui.text("/ui/quarantine?rule=content.malware")
    assert rows.findall(page) == ["Q2"]
    assert '<option value="content.malware" selected>' in page  # the filter shows what it filters on
    assert rows.findall(await ui.text("/ui/quarantine?rule=content.adult")) == ["Q1"]
    assert rows.findall(await ui.text("/ui/quarantine?rule=content.hateful")) == []
    page = await ui.text("/ui/quarantine/Q2")
    attachments = page.split("<h2>Attachments</h2>", 1)[1].split("</section>", 1)[0]
    assert "&lt;b&gt;tools&lt;/b&gt;.zip" in attachments and "<b>tools" not in attachments
    assert "<code>application/zip</code>" in attachments and "⚠ executable in bin/setup.exe" in attachments
    assert "No attachments." in (await ui.text("/ui/quarantine/Q1")).split("<h2>Attachments</h2>", 1)[1]


def test_inert_html_of_the_real_corpus_loads_nothing_and_lists_the_links() -> None:
    from policies.message import parse_message

    corpus = sorted((Path(__file__).parents[2] / "corpus").rglob("*.eml"))
    documents = [m.html_parts for m in (parse_message(p.read_bytes()) for p in corpus) if m.html_parts]
    assert len(documents) > 20
    loading = re.compile(r"(?i)\b(src|href|srcset|background|action|poster)\s*=(?!\"data:image/)|url\((?!data:image/)|<(script|style|link|iframe|meta|base)\b|\son[a-z]+=")
    listed = 0
    for parts in documents:
        inert = make_inert("\n".join(parts))
        assert not loading.search(inert.html), loading.search(inert.html)
        listed += len(inert.links)
    assert listed > 100  # newsletters link a lot: their targets are listed, not followable
