"""Whatever body a client sends, every route of the public and admin listeners answers with a status
below 500: malformed multipart, non-UTF-8 forms, unknown charsets and garbage JSON are the client's
mistake (400 with the JSON error), never a traceback. Real relay, real sockets, a real HTTP client."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingUpstream, make_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.passwords import hash_password
from relay.unsubscribe.tokens import TokenCodec
from relay.web.ui import SESSION_COOKIE, SESSIONS

TOKEN = "admin-token-for-body-tests"
TOKEN_HASH = hash_password(TOKEN)
# Requests without a valid credential come from another loopback address, so the lock-out of
# failed attempts (a separate guarantee) never stops the authenticated ones from reaching handlers.
STRANGER = "127.0.0.2"


@dataclass(frozen=True)
class Target:
    port: int
    method: str
    path: str
    listener: str  # admin | public


@dataclass
class Site:
    targets: list[Target]
    token_path: str
    admin_port: int
    public_port: int
    relay: Any

    def session(self) -> tuple[str, str]:
        """A fresh UI session (cookie value, CSRF token) of the running admin app."""
        app = next(r.app for r in self.relay._runners if SESSIONS in r.app)
        session = app[SESSIONS].create("body-tests")
        return session.id, session.csrf


def request(port: int, method: str, path: str, body: bytes, headers: dict[str, str], source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _concrete(path: str, token: str) -> str:
    values = {"token": token, "id": "1", "email": "anna@example.nl"}
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: values.get(m.group(1), "x"), path)


@pytest.fixture
async def site(tmp_path: Path, upstream: RecordingUpstream, start_relay: Any) -> Site:
    config = make_config(
        tmp_path,
        upstream.port,
        http={
            "public_listen": "127.0.0.1:0",
            "admin_tokens": [{"label": "ops", "hash": TOKEN_HASH}],
        },
    )
    relay = await start_relay(config)
    token = TokenCodec(config.unsubscribe.secrets).issue("shop", "newsletter", "anna@example.nl", 1_800_000_000)
    targets: list[Target] = []
    for runner in relay._runners:
        admin = any(resource.canonical == "/healthz" for resource in runner.app.router.resources())
        port, listener = (relay.admin_port, "admin") if admin else (relay.public_port, "public")
        for route in runner.app.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            raw = info.get("path") or info.get("formatter") or info.get("prefix")
            if raw is None or route.method == "HEAD":
                continue
            if "prefix" in info:  # static files
                raw = raw.rstrip("/") + "/style.css"
            targets.append(Target(port, route.method, _concrete(raw, token), listener))
    assert {t.listener for t in targets} == {"admin", "public"}
    assert any(t.path.startswith("/u/") and t.method == "POST" for t in targets)
    assert any(t.path == "/ui/login" and t.method == "POST" for t in targets)
    return Site(targets, f"/u/{token}", relay.admin_port, relay.public_port, relay)


CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded; charset=nope",
        "application/x-www-form-urlencoded; charset=utf-16",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=zz",
        "multipart/form-data; boundary=\"a b\"",
        "multipart/form-data; boundary=" + "b" * 90,
        "multipart/mixed; boundary=zz",
        "multipart/report; report-type=feedback-report; boundary=zz",
        "application/json",
        "application/json; charset=latin-1",
        "application/json; charset=nope",
        "message/rfc822",
        "text/plain; charset=nope",
        "application/octet-stream",
        "*/*",
        ";;;",
    ]
) | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
# (Control characters in a header are bad HTTP framing: aiohttp's parser answers 400 before any route.)


@st.composite
def bodies(draw: st.DrawFn, csrf: str) -> bytes:
    field = st.sampled_from([b"List-Unsubscribe", b"via", b"csrf", b"token", b"next", b"action", b"reason", b"note", b"ids", b"back", b"\xff", b""])
    value = st.sampled_from([b"One-Click", b"page", csrf.encode(), TOKEN.encode(), b"release", b"pause", b"\xff\xfe", b"%ff", b"x"]) | st.binary(max_size=30)
    kind = draw(st.sampled_from(["form", "multipart", "json", "binary"]))
    if kind == "form":
        pairs = draw(st.lists(st.tuples(field, value), max_size=5))
        return b"&".join(k + b"=" + v for k, v in pairs)
    if kind == "multipart":
        parts = []
        for name, data in draw(st.lists(st.tuples(field, value), max_size=4)):
            head = draw(st.sampled_from([
                b'Content-Disposition: form-data; name="' + name + b'"',
                b"Content-Disposition: form-data",
                b'Content-Disposition: form-data; name="' + name + b'"\r\nContent-Transfer-Encoding: base64',
                b'Content-Disposition: form-data; name="' + name + b'"\r\nContent-Encoding: deflate',
                b'Content-Disposition: form-data; name="' + name + b'"; filename="x"',
                b"Content-Type: multipart/mixed; boundary=yy",
                b"\xff: \xfe",
            ]))
            parts.append(b"--zz\r\n" + head + b"\r\n\r\n" + data + b"\r\n")
        return b"".join(parts) + draw(st.sampled_from([b"--zz--\r\n", b"", b"--zz", b"--yy--\r\n"]))
    if kind == "json":
        doc = draw(st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["email", "account", "ids", "note", "topic", "basis", "source", "kind", "feedback_type"]), inner, max_size=4),
            max_leaves=6,
        ))
        return json.dumps(doc).encode()
    return draw(st.binary(max_size=300))


def check(status: int, headers: dict[str, str], data: bytes, target: Target) -> None:
    assert status < 500, (status, target, data[:300])
    if target.path.startswith("/api/") and status >= 400:
        assert headers.get("content-type", "").startswith("application/json"), (status, target, data[:300])
        assert "error" in json.loads(data), (status, target, data[:300])


async def test_every_route_answers_below_500_for_any_body(site: Site) -> None:
    """Hypothesis over every route of both listeners, with and without credentials."""
    session_id, csrf = site.session()
    seen: set[int] = set()

    @settings(max_examples=int(os.environ.get("BODY_EXAMPLES", "400")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        target=st.sampled_from(site.targets),
        method=st.none() | st.sampled_from(["POST", "PUT", "DELETE", "PATCH"]),
        content_type=CONTENT_TYPES,
        body=bodies(csrf),
        signed_in=st.booleans(),
    )
    def run(target: Target, method: str | None, content_type: str | None, body: bytes, signed_in: bool) -> None:
        headers = {"Content-Length": str(len(body))}
        if content_type is not None:
            headers["Content-Type"] = content_type
        source = "127.0.0.1"
        if signed_in:
            headers["Authorization"] = f"Bearer {TOKEN}"
            headers["Cookie"] = f"{SESSION_COOKIE}={session_id}; relay_login={csrf}"
        else:
            source = STRANGER
        status, response_headers, data = request(target.port, method or target.method, target.path, body, headers, source)
        check(status, response_headers, data, target)
        seen.add(status)

    await asyncio.to_thread(run)
    # The run reached handlers (not only the auth check) and fed them bodies they refused.
    assert {200, 400, 401} <= seen, seen
    assert seen & {404, 405, 422}, seen


# The cases the adversarial review found, spelled out (each answered 500 with a traceback before).
REGRESSIONS = [
    ("public", "multipart/form-data", b"List-Unsubscribe=One-Click"),
    ("public", "multipart/form-data; boundary=zz", b"List-Unsubscribe=One-Click"),
    ("public", "multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data\r\n\r\nOne-Click\r\n--zz--\r\n"),
    ("public", "application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click&via=\xff\xfe"),
    ("public", "application/x-www-form-urlencoded; charset=nope", b"List-Unsubscribe=One-Click"),
    ("login", "application/x-www-form-urlencoded", b"csrf=\xff&token=\xfe"),
    ("login", "multipart/form-data", b"token=x"),
]


@pytest.mark.parametrize(("where", "content_type", "body"), REGRESSIONS)
async def test_malformed_bodies_found_by_the_review_get_a_400_json_error(site: Site, where: str, content_type: str, body: bytes) -> None:
    port, path = (site.public_port, site.token_path) if where == "public" else (site.admin_port, "/ui/login")
    headers = {"Content-Type": content_type}
    if where == "login":
        headers["Cookie"] = "relay_login=nonce"
    status, response_headers, data = await asyncio.to_thread(request, port, "POST", path, body, headers, STRANGER)
    assert status == 400, (status, data)
    assert response_headers["content-type"].startswith("application/json")
    assert json.loads(data)["error"] == "invalid_body"
    # The recipient is still subscribed: a body we could not read unsubscribes nobody.
    metrics = await asyncio.to_thread(request, site.admin_port, "GET", "/metrics", b"", {})
    assert b"consent_relay_unsubscribes_total{" not in metrics[2]


async def test_a_request_aiohttp_cannot_parse_is_one_log_line_without_a_traceback(tmp_path: Path, upstream: RecordingUpstream) -> None:
    """Bad HTTP framing (a control character in a header) is answered 400 by aiohttp's parser
    before any route; the process logs it as one JSON line, not a stack trace."""
    import socket

    from conftest import ServeProcess, config_dict, free_port, write_config

    port = free_port()
    data = config_dict(tmp_path, upstream.port, http={"public_listen": f"127.0.0.1:{port}", "public_base_url": "https://u.test"})
    relay = ServeProcess(write_config(tmp_path, data))
    try:
        await relay.start()

        def bad_request() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"POST /u/x HTTP/1.1\r\nHost: x\r\nContent-Type: \x1f\r\nContent-Length: 0\r\n\r\n")
                return sock.recv(1024)

        answer = await asyncio.to_thread(bad_request)
        assert answer.split(b" ", 2)[1] == b"400", answer
        from conftest import until

        await until(lambda: relay.events("http_bad_request"), what="the http_bad_request line")
        assert await relay.stop() == 0
    finally:
        await relay.ensure_stopped()
    assert b"Traceback" not in b"".join(relay.raw)
