"""The OpenAPI 3.1 document of the admin API (relay/http/openapi.py) against the real handlers of a real
`consent-relay serve` process: every route documented and every documented route served, the
responses of a walk through every operation valid against their schemas (openapi-core), and
every operation fuzzed from the document with schemathesis (no 5xx, documented statuses, content
types and bodies)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.http.openapi import OPENAPI_PATH, build_document
from tests.conftest import (
    PASSWORD,
    PASSWORD_HASH,
    config_dict,
    free_port,
    send,
    until_sync,
    write_config,
)
from tests.relay.feedback.test_complaints import arf

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
AUTH = {"Authorization": f"Bearer {PASSWORD}"}
DOCUMENT = build_document()
# The web UI is HTML for people, not part of the API (documented in the README and docs/design.md).
UNDOCUMENTED_PREFIXES = ("/ui",)
FUZZ_EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "15"))  # per operation; raise it for a deeper run


class RelayUnderTest:
    def __init__(self, base: str, smtp: int, workdir: Path) -> None:
        self.base, self.smtp, self.workdir = base, smtp, workdir

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayUnderTest]:
    """`consent-relay serve --sink` in a subprocess: an admin token, and a capture upstream so that
    releases deliver."""
    workdir = tmp_path_factory.mktemp("openapi")
    admin, smtp = free_port(), free_port()
    data = config_dict(
        workdir,
        free_port(),
        smtp={"listen": f"127.0.0.1:{smtp}"},
        http={"admin_listen": f"127.0.0.1:{admin}", "admin_tokens": [{"label": "tester", "hash": PASSWORD_HASH}]},
        unsubscribe={"mailto_domain": "relay.test"},
    )
    config = write_config(workdir, data)
    stderr = (workdir / "stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli.main", "serve", "--sink", "-c", str(config)],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=stderr,
    )
    base = f"http://127.0.0.1:{admin}"

    def ready() -> bool:
        assert proc.poll() is None, (workdir / "stderr").read_text()
        try:
            return requests.get(base + "/readyz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        until_sync(ready, timeout=30, what="the relay's /readyz")
        yield RelayUnderTest(base, smtp, workdir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr.close()


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }


async def served_operations(relay: Any) -> set[tuple[str, str]]:
    """The operations of a started Relay's admin listener, its features' routes included."""
    (admin,) = [r.app for r in relay._runners if any(x.resource and x.resource.canonical == "/readyz" for x in r.app.router.routes())]
    routes = set()
    for route in admin.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or path.startswith(UNDOCUMENTED_PREFIXES):
            continue
        routes.add((route.method, path))
    return routes


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate_spec(DOCUMENT)


async def test_every_route_is_documented_and_every_documented_route_exists(relay: Any) -> None:
    served, documented = await served_operations(relay), documented_operations()
    assert served - documented == set(), "routes the document does not describe"
    assert documented - served == set(), "documented operations no handler serves"


def test_the_document_is_served_without_a_token(live: RelayUnderTest) -> None:
    response = requests.get(live.base + OPENAPI_PATH, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.json() == json.loads(json.dumps(DOCUMENT))
    assert requests.get(live.base + "/api/quarantine", timeout=10).status_code == 401  # the rest still needs one


def test_a_request_that_is_not_valid_http_gets_the_documented_400(live: RelayUnderTest) -> None:
    """A Content-Length that is no number (schemathesis sends such headers) is answered by the HTTP
    parser before any route: 400 text/plain, documented for every operation so a client generated
    from the document knows it."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(live.base)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(b"GET /api/quarantine HTTP/1.1\r\nHost: relay\r\nContent-Length: >K\r\n\r\n")
        head = sock.recv(4096).split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert head.startswith("http/1.0 400") or head.startswith("http/1.1 400"), head
    assert "content-type: text/plain" in head, head
    for item in build_document()["paths"].values():
        for method, op in item.items():
            if method != "parameters":
                assert "text/plain" in op["responses"]["400"]["content"], op["operationId"]


def test_a_walk_through_every_operation_matches_the_document(live: RelayUnderTest) -> None:
    """Real requests with real data (a held message, consent, a suppression, a complaint); each
    response validated against the document by openapi-core; every operation answered 2xx once."""
    as_text = {t: (lambda raw: raw.decode("utf-8", "replace")) for t in ("message/rfc822", "multipart/report", "text/plain")}
    spec = OpenAPI.from_dict(json.loads(json.dumps(DOCUMENT)), config=Config(extra_media_type_deserializers=as_text))
    succeeded: set[tuple[str, str]] = set()

    def call(method: str, template: str, path: str | None = None, *, expect: int = 200, **kwargs: Any) -> Any:
        response = live.call(method, path or template, **kwargs)
        assert response.status_code == expect, (method, path or template, response.status_code, response.text)
        content_type = response.headers.get("Content-Type", "").split(";")[0]
        body = kwargs.get("json")
        request = MockRequest(
            live.base,
            method.lower(),
            path or template,
            args=kwargs.get("params"),
            data=json.dumps(body).encode() if body is not None else kwargs.get("data"),
            headers={k: v for k, v in {**AUTH, **kwargs.get("headers", {})}.items()},
            content_type="application/json" if body is not None else kwargs.get("headers", {}).get("Content-Type"),
        )
        spec.validate_response(request, MockResponse(response.content, status_code=response.status_code, content_type=content_type))
        if 200 <= response.status_code < 300:
            succeeded.add((method, template))
        return response.json() if content_type == "application/json" else response.content

    # a held message: the corpus's offensive subject on the marketing stream (consent first)
    consent = {
        "account": "shop",
        "email": "anna@example.nl",
        "topic": "newsletter",
        "basis": "double_opt_in",
        "source": "signup_form",
        "collected_at": "2026-01-10T09:00:00Z",
        "confirmed_at": "2026-01-10T09:03:00Z",
        "source_url": "https://shop.example/signup",
        "source_ip": "198.51.100.4",
        "statement_text": "Yes, send me the Shop newsletter every Friday",
        "frequency_disclosed": True,
    }
    call("POST", "/api/consent", json=consent, expect=201)
    held = []
    for _ in range(3):
        out = send(live.smtp, (CORPUS / "bad-content.offensive_subject-1.eml").read_bytes(), mail_from="news@shop.example", rcpts="anna@example.nl")
        assert out.code == 250 and "Held for review as" in out.text, out
        held.append(out.text.split("Held for review as ", 1)[1].split()[0])

    page = call("GET", "/api/quarantine", params={"limit": "2"})
    assert page["next"]
    call("GET", "/api/quarantine", params={"cursor": page["next"], "account": "shop", "since": "7d"})
    call("GET", "/api/quarantine/{id}", f"/api/quarantine/{held[0]}")
    call("GET", "/api/quarantine/{id}/raw", f"/api/quarantine/{held[0]}/raw")
    call("POST", "/api/quarantine/{id}/release", f"/api/quarantine/{held[0]}/release", json={"note": "false positive"})
    call("DELETE", "/api/quarantine/{id}", f"/api/quarantine/{held[1]}", json={"note": "spam"})
    call("POST", "/api/quarantine/release", json={"ids": [held[2], "nope"], "note": "bulk"})
    call("POST", "/api/quarantine/delete", json={"ids": [held[2]]})
    call("GET", "/api/audit", params={"limit": "5"})

    call("GET", "/api/consent/{email}", "/api/consent/anna@example.nl", params={"account": "shop"})
    call("GET", "/api/consent/{email}/proof", "/api/consent/anna@example.nl/proof", params={"account": "shop"})
    call("POST", "/api/interactions", json={"account": "shop", "email": "anna@example.nl", "kind": "click"})
    signup = {"account": "shop", "email": "kees@example.nl", "stream": "newsletter", "statement": "Ja, graag",
              "source_url": "https://shop.example/nieuwsbrief", "ip": "198.51.100.7", "frequency": "wekelijks", "language": "nl"}
    call("POST", "/api/signups", json=signup, expect=202)
    call("POST", "/api/suppressions", json={"account": "shop", "email": "piet@example.net", "note": "asked by phone"}, expect=201)
    call("GET", "/api/suppressions", params={"account": "shop"})
    call("GET", "/api/suppressions", params={"limit": "\u00b2"}, expect=422)
    call("DELETE", "/api/suppressions", params={"account": "shop", "email": "piet@example.net"})
    call("DELETE", "/api/consent/{email}", "/api/consent/anna@example.nl", params={"account": "shop"})

    created = call(
        "POST",
        "/api/complaints",
        json={"account": "shop", "email": "anna@example.nl", "feedback_type": "abuse"},
        expect=201,
    )
    call("GET", "/api/complaints", params={"open": "true"})
    # found by the fuzzing below: a huge negative limit overflowed the store's LIMIT (500)
    call("GET", "/api/complaints", params={"limit": "-1267182223928656824107008"}, expect=422)
    call("GET", "/api/complaints", params={"limit": "-1"}, expect=422)
    call("POST", "/api/complaints/{id}/ack", "/api/complaints/1\u00b2/ack", json={"note": "p"}, expect=404)  # fuzzing: "1²"
    call("GET", "/api/complaints/{id}", "/api/complaints/" + "9" * 40, expect=404)
    call("GET", "/api/complaints/{id}", f"/api/complaints/{created['id']}")
    call("POST", "/api/complaints/{id}/ack", f"/api/complaints/{created['id']}/ack", json={"note": "list cleaned"})
    call("POST", "/api/complaints", data=b"not a report", headers={"Content-Type": "message/rfc822"}, expect=422)
    call("GET", "/api/complaints/rejected")
    # a report by mail from no configured feedback loop (127.0.0.2) about the released copy: unverified
    copy = next(c for c in sorted((live.workdir / "var" / "delivered").glob("*.eml")) if b"X-Envelope-To: <anna@example.nl>" in c.read_bytes())
    out = send(live.smtp, arf(copy.read_bytes(), rcpt_to="anna@example.nl"), mail_from="fbl@isp.example",
               rcpts=["fbl@relay.test"], source="127.0.0.2")
    assert out.code == 250 and out.text.endswith("(open, unverified)"), out
    listed = call("GET", "/api/complaints", params={"account": "shop"})
    (unverified,) = [c for c in listed["items"] if not c["verified"]]
    call("POST", "/api/complaints/{id}/verify", f"/api/complaints/{unverified['id']}/verify", json={"note": "seen"})
    call("GET", "/api/bounces", params={"kind": "hard"})
    page = call("GET", "/api/events", params={"account": "shop", "limit": "5"})
    call("GET", "/api/events", params={"account": "shop", "after": page["next"]})

    for path in ("/healthz", "/readyz", OPENAPI_PATH):
        call("GET", path)
    response = live.call("GET", "/metrics")
    assert response.status_code == 200
    succeeded.add(("GET", "/metrics"))

    missing = documented_operations() - succeeded
    assert missing == set(), "operations the walk never saw succeed"


@schemathesis.serializer("message/rfc822", "multipart/report")
def _raw_report(ctx: Any, value: Any) -> bytes:
    """A raw feedback report as generated: text as UTF-8 (anything else as its JSON text)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(value).encode()


SCHEMA = schemathesis.openapi.from_dict(json.loads(json.dumps(DOCUMENT)))


@pytest.fixture(scope="module")
def fuzz_base(live: RelayUnderTest) -> str:
    return live.base


@SCHEMA.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_fuzzed_from_the_document(case: Any, fuzz_base: str) -> None:
    """schemathesis: any input the document allows (and the shapes around it), never a 5xx, and
    every answer's status, content type and body as documented."""
    case.call_and_validate(
        base_url=fuzz_base,
        headers=AUTH,
        timeout=30,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
