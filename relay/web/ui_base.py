"""What every admin UI page shares: server-side sessions, the signed_in guard (session and CSRF token),
the security headers, same-site redirects and the page layout. relay/web/ui.py and ui_complaints.py
build on it; it imports neither, so the pages have no import circle."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from relay.errors import NotFound, UsageError
from relay.http.common import form_body
from relay.templating import render

SESSION_COOKIE = "relay_session"
LOGIN_COOKIE = "relay_login"
SESSION_IDLE_SECONDS = 2 * 3600
SESSION_MAX_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
MAX_NOTE = 2000

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
NAVIGATION = (
    ("/ui/quarantine", "Quarantine"), ("/ui/complaints", "Complaints"), ("/ui/audit", "Audit log"),
    ("/ui/accounts", "Accounts"), ("/ui/consent", "Consent lookup"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    id: str
    label: str
    csrf: str
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)


class Sessions:
    """Server-side sessions of this process: the cookie carries only a random id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_id: dict[str, Session] = {}
        self._clock = clock

    def create(self, label: str) -> Session:
        now = self._clock()
        if len(self._by_id) >= MAX_SESSIONS:
            oldest = min(self._by_id.values(), key=lambda s: s.seen)
            self._by_id.pop(oldest.id, None)
        session = Session(secrets.token_urlsafe(32), label, secrets.token_urlsafe(32), now, now)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > SESSION_IDLE_SECONDS or now - session.created > SESSION_MAX_SECONDS:
            self._by_id.pop(session_id, None)
            return None
        session.seen = now
        return session

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)


SESSIONS: web.AppKey[Sessions] = web.AppKey("ui_sessions", Sessions)


def current_session(request: web.Request) -> Session | None:
    return request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE))


def secure_headers(response: web.StreamResponse, csp: str = PAGE_CSP) -> None:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    if "frame-ancestors 'none'" in csp:
        response.headers["X-Frame-Options"] = "DENY"


def same_ui_path(target: str | None, default: str = "/ui/quarantine") -> str:
    """Redirects only to our own pages: a path under /ui/, never //host or a scheme."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def signed_in(handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]) -> Handler:
    """Pages need a session; POSTs also need the session's CSRF token."""

    @wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        session = current_session(request)
        if session is None:
            if request.method != "GET":
                raise web.HTTPForbidden(text="Your session has ended; sign in again.")
            query = urlencode({"next": request.path_qs})
            raise web.HTTPSeeOther(f"/ui/login?{query}")
        if request.method == "POST":
            form = await form_body(request)
            sent = str(form.get("csrf", ""))
            if not sent or not hmac.compare_digest(sent, session.csrf):
                raise web.HTTPForbidden(text="The form's security token is missing or stale; reload the page and try again.")
        try:
            response = await handler(request, session)
        except (UsageError, NotFound) as exc:
            session.flash.append(("error", str(exc)))
            raise web.HTTPSeeOther("/ui/quarantine") from None
        if "Content-Security-Policy" not in response.headers:
            secure_headers(response)
        return response

    return run


def page(request: web.Request, session: Session | None, template: str, title: str, *, status: int = 200, **values: Any) -> web.Response:
    """templates/<template> (which extends layout.html) with the navigation, who is signed in and the
    session's flash messages, which are shown once."""
    flash = list(session.flash) if session is not None else []
    if session is not None:
        session.flash.clear()
    html = render(
        template, title=title, path=request.path, session=session, navigation=NAVIGATION if session else (),
        flash=flash, ago=ago, query=query, **values,
    )
    response = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    secure_headers(response)
    return response


def query(**params: str) -> str:
    clean = {k: v for k, v in params.items() if v}
    return "?" + urlencode(clean) if clean else ""


def ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"
