"""One-click URLs that do not show the address (issue 15): what a link scanner, a proxy log or a
forwarded mail sees in List-Unsubscribe names nobody; URLs in mail sent before still unsubscribe;
a repeated one-click POST counts once. Real relay, real SMTP, real upstream, real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp

from policies.facts import ConsentRecord
from tests.conftest import UNSUBSCRIBE_SECRET as SECRET
from tests.conftest import asend, make_config, message

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def relay_config(tmp_path: Path, upstream_port: int) -> Any:
    return make_config(
        tmp_path, upstream_port,
        http={"admin_listen": "127.0.0.1:0", "public_listen": "127.0.0.1:0", "public_base_url": "https://unsub.test"},
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
    )


def consent(email: str) -> ConsentRecord:
    then = datetime.now(timezone.utc) - timedelta(days=30)
    return ConsentRecord(
        email=email, scope="shop", topic="*", basis="double_opt_in", source="signup_form",
        collected_at=then, confirmed_at=then, source_url="https://shop.example/signup", source_ip="192.0.2.10",
        statement_text="Ja, stuur mij de wekelijkse nieuwsbrief van Shop", frequency_disclosed=True,
    )


def newsletter(to: str) -> bytes:
    return message(sender="news@shop.example", to=to, subject="Nieuwe collectie", stream="newsletter", body="Nieuw. Afmelden: {{unsubscribe_url}}")


def one_click_url(raw: bytes) -> str:
    value = re.sub(r"\s+", " ", str(message_from_bytes(raw)["List-Unsubscribe"]))
    return re.findall(r"<([^>]+)>", value)[0]


def token_of(url: str) -> str:
    return url.rsplit("/u/", 1)[1]


def legacy_token(secret: bytes, scope: str, topic: str, recipient: str, issued_at: int) -> str:
    """A version 1 URL token as the relay issued them before issue 15 (claims in clear + HMAC)."""
    s, t, r = (x.encode() for x in (scope, topic, recipient))
    payload = b"\x01" + issued_at.to_bytes(5, "big") + bytes((len(s),)) + s + bytes((len(t),)) + t + r
    mac = hmac.new(secret, b"consent-relay unsubscribe url v1\x00" + payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()


def test_the_legacy_helper_makes_what_the_old_relay_issued() -> None:
    # Issued by relay.unsubscribe.tokens before issue 15 (tests/relay/test_unsubscribe_tokens.py).
    token = legacy_token(b"old-secret-0123456789abcdef", "shop", "newsletter", "anna@example.nl", 1764892800)
    assert token == "AQBpMiCABHNob3AKbmV3c2xldHRlcmFubmFAZXhhbXBsZS5ubNBjlB8xKIaS_ALLe9mTZXc"


async def _metric(relay: Any, http: aiohttp.ClientSession, method: str) -> float:
    async with http.get(f"http://127.0.0.1:{relay.admin_port}/metrics") as r:
        text = await r.text()
    found = re.search(rf'^consent_relay_unsubscribes_total\{{method="{method}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def _mailed_url(tmp_path: Path, upstream: Any, start_relay: Any) -> tuple[Any, str]:
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    await relay.services.store.consent.upsert_consents([consent("anna.de.vries@example.nl")], now=datetime.now(timezone.utc))
    out = await asend(relay.smtp_port, newsletter(to="anna.de.vries@example.nl"), mail_from="news@shop.example", rcpts=["anna.de.vries@example.nl"])
    assert out.code == 250, out.text
    url = one_click_url(upstream.messages[0].content)
    return relay, url


async def test_the_url_in_the_mail_does_not_show_the_address(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    _, url = await _mailed_url(tmp_path, upstream, start_relay)
    token = token_of(url)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for secret_part in ("anna.de.vries@example.nl", "anna.de.vries", "example.nl"):
        assert secret_part not in url and secret_part.encode() not in raw, secret_part


async def test_a_repeated_one_click_post_counts_once(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay, url = await _mailed_url(tmp_path, upstream, start_relay)
    token = token_of(url)
    async with aiohttp.ClientSession() as http:
        target = f"http://127.0.0.1:{relay.public_port}/u/{token}"
        for _ in range(3):  # the mailbox provider's POST, a retry, a scanner replaying it
            async with http.post(target, data=ONE_CLICK, allow_redirects=False) as r:
                assert r.status == 200 and "Location" not in r.headers
        assert await _metric(relay, http, "one_click") == 1
    suppressed = await relay.services.store.consent.list_suppressions("shop")
    assert [s.email for s in suppressed] == ["anna.de.vries@example.nl"]


async def test_a_url_from_mail_sent_before_the_change_still_unsubscribes(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    await relay.services.store.consent.upsert_consents([consent("bob@example.nl")], now=datetime.now(timezone.utc))
    token = legacy_token(SECRET.encode(), "shop", "*", "bob@example.nl", 1764892800)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{relay.public_port}/u/{token}", data=ONE_CLICK) as r:
            assert r.status == 200
        async with http.post(f"http://127.0.0.1:{relay.public_port}/u/{token[:-2]}xx", data=ONE_CLICK) as r:
            assert r.status in (400, 404)  # altered: refused
        assert await _metric(relay, http, "one_click") == 1
    suppressed = await relay.services.store.consent.list_suppressions("shop")
    assert [s.email for s in suppressed] == ["bob@example.nl"]
