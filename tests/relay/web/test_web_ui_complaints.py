"""The admin UI's complaints page over real HTTP: signed-in only, newest first, the open-only and
account filters, the acknowledge form (CSRF token and a note required, audited as the admin)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from conftest import no_readiness, serving

from relay.config import build_config
from relay.routes import build_admin_app
from relay.passwords import hash_password
from relay.services import Clock, Services
from relay.store.complaints_base import INFORMATIONAL, OPEN, Complaint

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
TOKEN = "ui-token-complaints-0123456789"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ROW = re.compile(r'<tr data-complaint="(\d+)">')


class Browser:
    """A cookie-keeping HTTP client: what a browser does with links and forms."""

    def __init__(self, session: aiohttp.ClientSession, base: str, services: Services, clock: list[datetime]) -> None:
        self.session, self.base, self.services, self.clock = session, base, services, clock

    async def get(self, path: str) -> tuple[int, str, Any]:
        async with self.session.get(self.base + path, allow_redirects=False) as r:
            return r.status, await r.text(), r.headers

    async def post(self, path: str, data: dict[str, Any]) -> tuple[int, str]:
        async with self.session.post(self.base + path, data=data, allow_redirects=False) as r:
            await r.read()
            return r.status, r.headers.get("Location", "")

    async def text(self, path: str) -> str:
        status, body, _ = await self.get(path)
        assert status == 200, (path, status)
        return body

    async def sign_in(self) -> str:
        csrf = CSRF.search(await self.text("/ui/login")).group(1)  # type: ignore[union-attr]
        status, location = await self.post("/ui/login", {"csrf": csrf, "token": TOKEN, "next": "/ui/complaints"})
        assert (status, location) == (303, "/ui/complaints")
        return CSRF.search(await self.text("/ui/complaints")).group(1)  # type: ignore[union-attr]


def complaint(n: int, account: str, email: str, **fields: Any) -> Complaint:
    defaults: dict[str, Any] = {
        "feedback_type": "abuse", "status": OPEN, "source": "mail", "received_at": NOW - timedelta(hours=10 - n),
        "report_key": f"arf:{n}", "deadline": NOW + timedelta(hours=14 + n), "mapped_by": "mailto_token",
        "stream": "news", "forwarded_to": "abuse@shop.example",
    }
    return Complaint(account=account, email=email, **{**defaults, **fields})


@pytest.fixture
async def ui(tmp_path: Path) -> AsyncIterator[Browser]:
    data = {
        "store": {"url": f"sqlite:///{tmp_path}/relay.db"},
        "http": {"admin_tokens": [{"label": "dana", "hash": hash_password(TOKEN)}]},
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"]},
        "accounts": [
            {"id": id_, "domains": [f"{id_}.example"], "default_stream": "news", "streams": [{"id": "news", "kind": "marketing"}]}
            for id_ in ("shop", "bakery")
        ],
    }
    clock = [NOW]
    services = Services.build(build_config(data, tmp_path / "config.toml"), clock=Clock(now=lambda: clock[0]))
    await services.store.open()
    for item in (
        complaint(1, "shop", "anna@example.nl"),
        complaint(2, "bakery", "bob@example.nl", mapped_by="message_id"),
        complaint(3, "shop", "carl@example.nl", feedback_type="not-spam", status=INFORMATIONAL, deadline=None, forwarded_to=""),
        complaint(4, "shop", "dora@example.nl", feedback_type="<script>alert(1)</script>"),
    ):
        await services.store.complaints.add(item, b"report")

    app = build_admin_app(services, no_readiness)
    cookies = aiohttp.CookieJar(unsafe=True)
    async with serving(app) as base, aiohttp.ClientSession(cookie_jar=cookies) as session:
        yield Browser(session, base, services, clock)
    await services.store.close()


async def test_the_page_needs_a_session(ui: Browser) -> None:
    status, _, headers = await ui.get("/ui/complaints")
    assert status == 303 and headers["Location"] == "/ui/login?next=/ui/complaints"
    assert (await ui.post("/ui/complaints/1/ack", {"note": "done"}))[0] == 403
    assert (await ui.services.store.complaints.get(1)).status == OPEN  # type: ignore[union-attr]


async def test_list_newest_first_with_the_open_and_account_filters(ui: Browser) -> None:
    await ui.sign_in()
    status, page, headers = await ui.get("/ui/complaints")
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    assert ROW.findall(page) == ["4", "3", "2", "1"]
    assert '<a href="/ui/complaints" class="active">Complaints</a>' in page  # in the navigation
    assert "anna@example.nl" in page and "told abuse@shop.example" in page and "nothing to answer" in page
    assert "respond before 2026-03-16 03:00 UTC" in page  # complaint 1's deadline
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    assert ROW.findall(await ui.text("/ui/complaints?open=1")) == ["4", "2", "1"]  # not the not-spam report
    assert ROW.findall(await ui.text("/ui/complaints?open=1&account=shop")) == ["4", "1"]
    assert ROW.findall(await ui.text("/ui/complaints?account=bakery")) == ["2"]
    assert ROW.findall(await ui.text("/ui/complaints?account=nobody")) == ["4", "3", "2", "1"]  # unknown: no filter

    ui.clock[0] = NOW + timedelta(hours=15, minutes=30)  # past complaint 1's deadline only
    page = await ui.text("/ui/complaints?open=1")
    row_1 = page[page.index('<tr data-complaint="1">'):]
    assert '<span class="state suspended">overdue</span>' in row_1
    assert "overdue" not in page[: page.index('<tr data-complaint="1">')]


async def test_acknowledge_with_a_note_from_the_form(ui: Browser) -> None:
    csrf = await ui.sign_in()
    page = await ui.text("/ui/complaints?open=1")
    assert page.count('action="/ui/complaints/') == 3  # one form per open complaint
    back = "/ui/complaints?open=1"

    # The session's form token is required; a forged one or none changes nothing.
    for form in ({"note": "x", "back": back}, {"note": "x", "back": back, "csrf": "forged"}):
        assert (await ui.post("/ui/complaints/1/ack", form))[0] == 403
    # A note is required: the form comes back with the reason.
    assert await ui.post("/ui/complaints/1/ack", {"csrf": csrf, "note": "  ", "back": back}) == (303, back)
    assert "Say what was found and done about complaint 1" in await ui.text(back)
    assert (await ui.services.store.complaints.get(1)).status == OPEN  # type: ignore[union-attr]

    note = "Double opt-in added to the form <b>now</b>"
    assert await ui.post("/ui/complaints/1/ack", {"csrf": csrf, "note": note, "back": back}) == (303, back)
    page = await ui.text(back)
    assert "Complaint 1 (shop) acknowledged." in page and ROW.findall(page) == ["4", "2"]
    stored = await ui.services.store.complaints.get(1)
    assert stored is not None and (stored.status, stored.acknowledged_by, stored.ack_note) == ("acknowledged", "dana", note)
    (entry,) = [a for a in await ui.services.store.audit.list(target="complaint:1") if a.action == "complaint.acknowledged"]
    assert entry.actor == "dana"
    everything = await ui.text("/ui/complaints")
    assert "Double opt-in added to the form &lt;b&gt;now&lt;/b&gt;" in everything and "by dana" in everything

    # Twice, or a complaint with nothing to answer, or none at all: a clear message, no change.
    assert await ui.post("/ui/complaints/1/ack", {"csrf": csrf, "note": "again", "back": back}) == (303, back)
    assert "complaint 1 is acknowledged, not open" in await ui.text(back)
    assert (await ui.post("/ui/complaints/3/ack", {"csrf": csrf, "note": "x", "back": back}))[0] == 303
    assert "complaint 3 is informational, not open" in await ui.text(back)
    assert (await ui.post("/ui/complaints/99/ack", {"csrf": csrf, "note": "x", "back": back}))[0] == 303
    assert "no complaint 99" in await ui.text(back)
    # The form's return address stays inside the UI.
    assert await ui.post("/ui/complaints/2/ack", {"csrf": csrf, "note": "ok", "back": "//evil.test/"}) == (303, "/ui/complaints")


async def test_verify_an_unverified_report_from_the_form(ui: Browser) -> None:
    # docs/SPEC.md §16: a report from no configured feedback loop waits for an admin
    await ui.services.store.complaints.add(complaint(5, "shop", "eve@example.nl", verified=False, deadline=None, forwarded_to=""), b"r")
    csrf = await ui.sign_in()
    back = "/ui/complaints?open=1"
    page = await ui.text(back)
    row_5 = page[page.index('<tr data-complaint="5">'):page.index('<tr data-complaint="4">')]
    assert "unverified" in row_5 and 'action="/ui/complaints/5/verify"' in row_5 and "/ack" not in row_5
    assert (await ui.post("/ui/complaints/5/verify", {"note": "x", "back": back}))[0] == 403  # no form token
    assert await ui.post("/ui/complaints/5/verify", {"csrf": csrf, "note": "from Yahoo's new range", "back": back}) == (303, back)
    page = await ui.text(back)
    assert "Complaint 5 (shop) verified" in page
    row_5 = page[page.index('<tr data-complaint="5">'):page.index('<tr data-complaint="4">')]
    assert "unverified" not in row_5 and 'action="/ui/complaints/5/ack"' in row_5 and "respond before" in row_5
    stored = await ui.services.store.complaints.get(5)
    assert stored is not None and stored.verified and stored.deadline is not None
    (entry,) = [a for a in await ui.services.store.audit.list(target="complaint:5") if a.action == "complaint.verified"]
    assert (entry.actor, entry.note) == ("dana", "from Yahoo's new range")
    assert await ui.post("/ui/complaints/5/verify", {"csrf": csrf, "back": back}) == (303, back)
    assert "complaint 5 is verified already" in await ui.text(back)
