"""One-click unsubscribe end to end (docs/SPEC.md §6-7): per-recipient list headers and URL, the public
listener, the mailto address over SMTP, parent scopes, and DKIM checked by Perl's Mail::DKIM."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from policies.facts import ConsentRecord
from relay.config import load_config
from relay.delivery.dkim import dkim_dns_record, load_dkim_key
from tests.conftest import PASSWORD, asend, base_account, config_dict, make_config, message, run_tool, write_config

VERIFIER = Path(__file__).parents[1] / "relay" / "dkim_verify.pl"
SECRET = "unsubscribe-secret-for-tests-0123456789"
NEWS_FOOTER = "Shop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678"


def newsletter(to: str = "anna@example.nl", body: str = "Nieuw deze week. Afmelden: {{unsubscribe_url}}", headers: tuple[str, ...] = ()) -> bytes:
    return message(sender="news@shop.example", to=to, subject="Nieuwe collectie", stream="newsletter", headers=headers, body=body)


def consent(email: str, scope: str = "shop", topic: str = "*") -> ConsentRecord:
    now = datetime.now(timezone.utc)
    return ConsentRecord(
        email=email, scope=scope, topic=topic, basis="double_opt_in", source="signup_form",
        collected_at=now - timedelta(days=30), confirmed_at=now - timedelta(days=30),
        source_url="https://shop.example/signup", source_ip="192.0.2.10",
        statement_text="Ja, stuur mij de wekelijkse nieuwsbrief van Shop", frequency_disclosed=True,
    )


def _pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def dkim_keys(tmp_path: Path) -> dict[str, Path]:
    rsa_path = tmp_path / "rsa.pem"
    ed_path = tmp_path / "ed.pem"
    rsa_path.write_bytes(_pem(rsa.generate_private_key(65537, 2048)))
    ed_path.write_bytes(_pem(ed25519.Ed25519PrivateKey.generate()))
    return {"rsa": rsa_path, "ed": ed_path}


def relay_config(tmp_path: Path, upstream_port: int, **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "http": {"admin_listen": "127.0.0.1:0", "public_listen": "127.0.0.1:0", "public_base_url": "https://unsub.test"},
        "unsubscribe": {"secrets": [SECRET], "mailto_domain": "relay.test"},
    }
    data.update(overrides)
    return make_config(tmp_path, upstream_port, **data)


def list_unsubscribe(raw: bytes) -> tuple[str, str]:
    msg = message_from_bytes(raw)
    value = re.sub(r"\s+", " ", str(msg["List-Unsubscribe"]))
    url, mailto = re.findall(r"<([^>]+)>", value)
    return url, mailto


def token_of(url: str) -> str:
    return url.rsplit("/u/", 1)[1]


def public_url(relay: Any, url: str) -> str:
    return f"http://127.0.0.1:{relay.public_port}/u/{token_of(url)}"


async def test_marketing_copies_get_their_own_list_headers_and_url(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    config = relay_config(tmp_path, upstream.port, unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test", "csa_complaints": "csa-complaints@eco.de"})
    relay = await start_relay(config)
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl"), consent("bob@example.nl")], now=datetime.now(timezone.utc))
    content = newsletter(headers=("List-Unsubscribe: <https://app.example/old>", "List-Unsubscribe-Post: List-Unsubscribe=One-Click"))
    out = await asend(relay.smtp_port, content, mail_from="news@shop.example", rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.code == 250, out.text
    copies = {m.rcpt_tos[0]: m.content for m in upstream.messages}
    assert sorted(copies) == ["anna@example.nl", "bob@example.nl"]
    assert all(len(m.rcpt_tos) == 1 for m in upstream.messages)
    urls = set()
    for rcpt, raw in copies.items():
        msg = message_from_bytes(raw)
        for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "X-CSA-Complaints"):
            assert len(msg.get_all(name) or []) == 1, (name, rcpt)
        assert "X-Relay-Stream" not in msg
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == "<newsletter.shop.relay.test>"
        assert msg["X-CSA-Complaints"] == "csa-complaints@eco.de"
        url, mailto = list_unsubscribe(raw)
        assert url.startswith("https://unsub.test/u/") and "app.example" not in url
        assert re.fullmatch(r"mailto:unsubscribe\+[a-z2-7]+@relay\.test", mailto)
        assert len(mailto.split(":")[1].split("@")[0]) <= 64
        body = msg.get_payload(decode=True).decode()
        assert url in body and "{{unsubscribe_url}}" not in body
        urls.add(url)
    assert len(urls) == 2


async def test_transactional_mail_is_untouched_and_sent_once(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    out = await asend(relay.smtp_port, message(stream="orders"), rcpts=["anna@example.nl", "bob@example.nl"])
    assert out.code == 250, out.text
    (copy,) = upstream.messages
    assert sorted(copy.rcpt_tos) == ["anna@example.nl", "bob@example.nl"]
    assert b"List-Unsubscribe" not in copy.content


async def test_get_does_not_unsubscribe_post_does(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    assert (await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")).code == 250
    url, _ = list_unsubscribe(upstream.messages[-1].content)
    async with aiohttp.ClientSession() as http:
        async with http.get(public_url(relay, url), headers={"Accept-Language": "nl-NL,nl;q=0.9,en;q=0.5"}) as page:
            text = await page.text()
            assert page.status == 200 and "Afmelden" in text and 'method="post"' in text
        # A link scanner's GET changed nothing: the next newsletter still goes out.
        assert (await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")).code == 250
        async with http.post(public_url(relay, url), data={"List-Unsubscribe": "One-Click"}, allow_redirects=False) as done:
            assert done.status == 200
            assert "Location" not in done.headers and "Set-Cookie" not in done.headers
    out = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")
    assert out.code == 550 and "[suppression.unsubscribed]" in out.text
    metrics = relay.services.metrics.registry.get_sample_value("consent_relay_unsubscribes_total", {"method": "one_click"})
    assert metrics == 1.0


def _form_fields(page: str) -> dict[str, str]:
    """The hidden fields the page's one button posts, as a browser would send them."""
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))


@pytest.mark.parametrize(
    ("accept_language", "lang", "ask", "button", "done"),
    [
        ("en-GB,en;q=0.9", "en", "<strong>Shop</strong> sends <strong>newsletter</strong> to", ">Unsubscribe</button>", "You are unsubscribed"),
        ("nl-NL,nl;q=0.9,en;q=0.5", "nl", "<strong>Shop</strong> stuurt <strong>newsletter</strong> naar", ">Afmelden</button>", "U bent afgemeld"),
        # German and French are offered since the recipient's pages grew (issue 22): no more falling back to Dutch.
        ("de-DE,fr;q=0.8,nl;q=0.3,en;q=0.2", "de", "<strong>Shop</strong> sendet <strong>newsletter</strong> an", ">Abmelden</button>", "Sie sind abgemeldet"),
        ("fr-CH,fr;q=0.9,en;q=0.5", "fr", "<strong>Shop</strong> envoie <strong>newsletter</strong> à", ">Se désabonner</button>", "Vous êtes désabonné"),
        ("da,sv;q=0.5", "en", "<strong>Shop</strong> sends <strong>newsletter</strong> to", ">Unsubscribe</button>", "You are unsubscribed"),
    ],
)
async def test_page_in_the_visitors_language_then_its_button_unsubscribes(
    tmp_path: Path, upstream: Any, start_relay: Any, accept_language: str, lang: str, ask: str, button: str, done: str
) -> None:
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    assert (await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")).code == 250
    url, _ = list_unsubscribe(upstream.messages[-1].content)
    headers = {"Accept-Language": accept_language}
    async with aiohttp.ClientSession() as http:
        async with http.get(public_url(relay, url), headers=headers) as r:
            page = await r.text()
            assert r.status == 200 and f'<html lang="{lang}">' in page
            assert ask in page and button in page and 'method="post"' in page
            # Whoever holds the URL sees the address masked only (issue 22).
            assert "a**@example.nl" in page and "anna@example.nl" not in page
        assert await relay.services.store.consent.list_suppressions() == []  # the GET alone changed nothing
        async with http.post(public_url(relay, url), data=_form_fields(page), headers=headers, allow_redirects=False) as r:
            confirmation = await r.text()
            assert r.status == 200 and f'<html lang="{lang}">' in confirmation and done in confirmation
            assert "Location" not in r.headers
    assert [s.via for s in await relay.services.store.consent.list_suppressions()] == ["page"]


def _scraped(metrics: str, method: str) -> float:
    found = re.search(rf'^consent_relay_unsubscribes_total{{method="{method}"}} (\S+)$', metrics, re.MULTILINE)
    return float(found[1]) if found else 0.0


async def test_unsubscribes_total_counts_each_method_on_the_metrics_endpoint(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    config = relay_config(tmp_path, upstream.port, account={"trusted_networks": []}, smtp={"auth_require_tls": False})
    relay = await start_relay(config)
    people = ["anna@example.nl", "bob@example.nl", "carol@example.nl"]
    await relay.services.store.consent.upsert_consents([consent(p) for p in people], now=datetime.now(timezone.utc))
    sent = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=people, login=("shop", PASSWORD))
    assert sent.code == 250, sent.text
    links = {m.rcpt_tos[0]: list_unsubscribe(m.content) for m in upstream.messages}
    async with aiohttp.ClientSession() as http:
        async with http.get(public_url(relay, links["anna@example.nl"][0])) as r:
            page = await r.text()
        async with http.post(public_url(relay, links["anna@example.nl"][0]), data=_form_fields(page)) as r:
            assert r.status == 200
        async with http.post(public_url(relay, links["bob@example.nl"][0]), data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200
    mailto = links["carol@example.nl"][1].removeprefix("mailto:")
    reply = await asend(relay.smtp_port, b"Subject: unsubscribe\r\n\r\nunsubscribe\r\n", mail_from="carol@example.nl", rcpts=mailto)
    assert reply.code == 250, reply.text
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{relay.admin_port}/metrics") as r:
            assert r.status == 200
            metrics = await r.text()
    assert {m: _scraped(metrics, m) for m in ("one_click", "page", "mailto")} == {"one_click": 1.0, "page": 1.0, "mailto": 1.0}


async def test_links_signed_with_a_rotated_out_secret_still_unsubscribe(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # docs/SPEC.md §6: several secrets, the first signs and all verify; a valid token never expires.
    old, new = "the-old-unsubscribe-secret-0123456789", "the-new-unsubscribe-secret-9876543210"
    overrides: dict[str, Any] = {"account": {"trusted_networks": []}, "smtp": {"auth_require_tls": False}}
    before = await start_relay(relay_config(tmp_path, upstream.port, unsubscribe={"secrets": [old], "mailto_domain": "relay.test"}, **overrides))
    await before.services.store.consent.upsert_consents(
        [consent("anna@example.nl"), consent("bob@example.nl")], now=datetime.now(timezone.utc)
    )
    sent = await asend(before.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=["anna@example.nl", "bob@example.nl"], login=("shop", PASSWORD))
    assert sent.code == 250, sent.text
    links = {m.rcpt_tos[0]: list_unsubscribe(m.content) for m in upstream.messages}
    await before.stop(grace=1)

    # The operator rotates: a new first secret signs, the old one is kept to verify.
    after = await start_relay(relay_config(tmp_path, upstream.port, unsubscribe={"secrets": [new, old], "mailto_domain": "relay.test"}, **overrides))
    async with aiohttp.ClientSession() as http:
        async with http.post(public_url(after, links["anna@example.nl"][0]), data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200
    mailto = links["bob@example.nl"][1].removeprefix("mailto:")
    reply = await asend(after.smtp_port, b"Subject: unsubscribe\r\n\r\nunsubscribe\r\n", mail_from="bob@example.nl", rcpts=mailto)
    assert reply.code == 250, reply.text
    suppressions = await after.services.store.consent.list_suppressions()
    assert sorted((s.email, s.via) for s in suppressions) == [("anna@example.nl", "one_click"), ("bob@example.nl", "mailto")]
    for rcpt in ("anna@example.nl", "bob@example.nl"):
        out = await asend(after.smtp_port, newsletter(to=rcpt), mail_from="news@shop.example", rcpts=rcpt, login=("shop", PASSWORD))
        assert out.code == 550 and "[suppression.unsubscribed]" in out.text, out.text

    # A secret that was dropped verifies nothing any more.
    dropped = await start_relay(
        relay_config(tmp_path, upstream.port, unsubscribe={"secrets": [new], "mailto_domain": "relay.test"}, **overrides)
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(public_url(dropped, links["anna@example.nl"][0])) as r:
            assert r.status == 404


async def test_multipart_one_click_and_page_button(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    store = relay.services.store.consent
    await store.upsert_consents([consent("anna@example.nl"), consent("bob@example.nl")], now=datetime.now(timezone.utc))
    await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", rcpts=["anna@example.nl", "bob@example.nl"])
    urls = {m.rcpt_tos[0]: list_unsubscribe(m.content)[0] for m in upstream.messages}
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("List-Unsubscribe", "One-Click")
        form.add_field("extra", b"x", filename="x.bin")  # forces multipart/form-data
        async with http.post(public_url(relay, urls["anna@example.nl"]), data=form) as r:
            assert r.status == 200
        async with http.post(public_url(relay, urls["bob@example.nl"]), data={"List-Unsubscribe": "One-Click", "via": "page"}) as r:
            assert r.status == 200 and "unsubscribed" in (await r.text()).lower()
    suppressed = await store.find_suppressions(["shop"], ["anna@example.nl", "bob@example.nl"])
    assert {s.via for v in suppressed.values() for s in v} == {"one_click", "page"}


async def test_tampered_and_forged_tokens_unsubscribe_nobody(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(relay_config(tmp_path, upstream.port))
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")
    url, _ = list_unsubscribe(upstream.messages[-1].content)
    token = token_of(url)
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    async with aiohttp.ClientSession() as http:
        for bad in (flipped, token + "x", "forged", "A" * 60):
            async with http.post(f"http://127.0.0.1:{relay.public_port}/u/{bad}", data={"List-Unsubscribe": "One-Click"}) as r:
                assert r.status in (400, 404), bad
        # The body must say One-Click: a bare POST is refused too.
        async with http.post(public_url(relay, url), data={"something": "else"}) as r:
            assert r.status == 400
    assert await relay.services.store.consent.list_suppressions() == []
    assert (await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")).code == 250


async def test_mail_to_the_unsubscribe_address_needs_no_auth(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # Nobody is trusted: the sender authenticates, the recipient's mail server does not.
    config = relay_config(tmp_path, upstream.port, account={"trusted_networks": []}, smtp={"auth_require_tls": False})
    relay = await start_relay(config)
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    sent = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", login=("shop", PASSWORD))
    assert sent.code == 250, sent.text
    _, mailto = list_unsubscribe(upstream.messages[-1].content)
    address = mailto.removeprefix("mailto:")
    reply = await asend(relay.smtp_port, b"From: anna@example.nl\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n", mail_from="anna@example.nl", rcpts=address.upper())
    assert reply.code == 250, reply.text
    denied = await asend(relay.smtp_port, b"Subject: x\r\n\r\nx\r\n", mail_from="anna@example.nl", rcpts="someone@example.org")
    assert denied.code == 550 and "[relay.denied]" in denied.text
    forged = await asend(relay.smtp_port, b"Subject: x\r\n\r\nx\r\n", mail_from="anna@example.nl", rcpts="unsubscribe+aaaaaaaaaaaaaaaaaaaaaaaaaaaa@relay.test")
    assert forged.code == 550
    suppressions = await relay.services.store.consent.list_suppressions()
    assert [(s.email, s.via, s.reason) for s in suppressions] == [("anna@example.nl", "mailto", "suppression.unsubscribed")]
    assert len(upstream.messages) == 1  # the unsubscribe mail itself is not relayed


async def test_mailto_withdraws_an_every_topic_consent_for_every_marketing_stream(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: clang E-subscription-level: withdrawn at the level it was given; a '*' consent covers
    # every marketing stream, so its withdrawal stops them all (docs/SPEC.md §6, as the one-click URL does)
    streams = [
        {"id": "orders", "kind": "transactional"},
        {"id": "newsletter", "kind": "marketing", "topic": "newsletter"},
        {"id": "offers", "kind": "marketing", "topic": "offers"},
    ]
    config = relay_config(tmp_path, upstream.port, account={"trusted_networks": [], "streams": streams}, smtp={"auth_require_tls": False})
    relay = await start_relay(config)
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl", topic="*")], now=datetime.now(timezone.utc))
    login = ("shop", PASSWORD)
    offers = message(sender="news@shop.example", to="anna@example.nl", subject="Aanbieding", stream="offers", body="Korting! {{unsubscribe_url}}")
    assert (await asend(relay.smtp_port, offers, mail_from="news@shop.example", login=login)).code == 250
    sent = await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example", login=login)
    assert sent.code == 250, sent.text
    _, mailto = list_unsubscribe(upstream.messages[-1].content)
    reply = await asend(relay.smtp_port, b"Subject: unsubscribe\r\n\r\nunsubscribe\r\n", mail_from="anna@example.nl", rcpts=mailto.removeprefix("mailto:"))
    assert reply.code == 250, reply.text
    suppressions = await relay.services.store.consent.list_suppressions()
    assert [(s.scope, s.topic, s.via) for s in suppressions] == [("shop", "*", "mailto")]
    (record,) = (await relay.services.store.consent.find_consents(["shop"], ["anna@example.nl"]))["anna@example.nl"]
    assert record.revoked_via == "mailto"
    # The newsletter's mailto withdrew the '*' consent: the other marketing stream stops too.
    for content in (offers, newsletter()):
        out = await asend(relay.smtp_port, content, mail_from="news@shop.example", login=login)
        assert out.code == 550 and "[suppression.unsubscribed]" in out.text, out.text
    assert len(upstream.messages) == 2


async def test_parent_scope_unsubscribe_covers_every_account(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: clang E-subscription-level ("op het niveau van het moederbedrijf")
    second = base_account() | {"id": "shop2", "name": "Shop Twee", "domains": ["shop2.example"], "trusted_networks": [], "parent": "holding"}
    data = config_dict(
        tmp_path,
        upstream.port,
        http={"admin_listen": "127.0.0.1:0", "public_listen": "127.0.0.1:0", "public_base_url": "https://unsub.test"},
        unsubscribe={"secrets": [SECRET], "mailto_domain": "relay.test"},
        account={"parent": "holding"},
        smtp={"auth_require_tls": False},
    )
    data["accounts"].append(second)
    config = load_config(write_config(tmp_path, data))
    relay = await start_relay(config)
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl", scope="holding")], now=datetime.now(timezone.utc))
    assert (await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")).code == 250
    url, _ = list_unsubscribe(upstream.messages[-1].content)
    async with aiohttp.ClientSession() as http:
        async with http.post(public_url(relay, url), data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200
    # The consent was the parent's: shop2 (same parent) may not mail anna either.
    from_shop2 = message(sender="news@shop2.example", display="Shop Twee", to="anna@example.nl", stream="newsletter", body="Nieuw: {{unsubscribe_url}}")
    out = await asend(relay.smtp_port, from_shop2, mail_from="news@shop2.example", login=("shop2", PASSWORD))
    assert out.code == 550 and "[suppression.unsubscribed]" in out.text, out.text
    records = await relay.services.store.consent.find_consents(["holding"], ["anna@example.nl"])
    assert records["anna@example.nl"][0].revoked_at is not None


async def test_placeholder_in_base64_html_part(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    import base64

    relay = await start_relay(relay_config(tmp_path, upstream.port))
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    html = f'<p>Nieuw!</p><p><a href="{{{{unsubscribe_url}}}}">Afmelden</a></p><p>{NEWS_FOOTER}</p>'
    encoded = base64.encodebytes(html.encode()).decode().replace("\n", "\r\n")
    raw = (
        "From: Shop <news@shop.example>\r\nTo: anna@example.nl\r\nSubject: Nieuw\r\nMessage-ID: <b64@shop.example>\r\n"
        "X-Relay-Stream: newsletter\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}"
    ).encode()
    out = await asend(relay.smtp_port, raw, mail_from="news@shop.example")
    assert out.code == 250, out.text
    sent = message_from_bytes(upstream.messages[-1].content)
    url, _ = list_unsubscribe(upstream.messages[-1].content)
    assert f'href="{url}"' in sent.get_payload(decode=True).decode()


def perl_verify(raw: bytes, records: list[str], tmp_path: Path) -> str:
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(records))
    done = run_tool(["perl", str(VERIFIER), str(keys)], input=raw)
    return done.stdout.decode().splitlines()[-1].split()[1]


async def test_relayed_copies_verify_with_mail_dkim(tmp_path: Path, upstream: Any, start_relay: Any, dkim_keys: dict[str, Path]) -> None:
    config = relay_config(
        tmp_path,
        upstream.port,
        dkim={"keys": [
            {"domain": "shop.example", "selector": "rsa", "private_key": str(dkim_keys["rsa"])},
            {"domain": "shop.example", "selector": "ed", "private_key": str(dkim_keys["ed"])},
        ]},
    )
    relay = await start_relay(config)
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    assert (await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")).code == 250
    assert (await asend(relay.smtp_port, message(stream="orders"))).code == 250
    records = [
        f"{sel}._domainkey.shop.example {dkim_dns_record(load_dkim_key('shop.example', sel, path))}\n"
        for sel, path in (("rsa", dkim_keys["rsa"]), ("ed", dkim_keys["ed"]))
    ]
    marketing, transactional = upstream.messages
    for copy in (marketing, transactional):
        assert copy.content.count(b"DKIM-Signature:") == 2
        assert perl_verify(copy.content, records, tmp_path) == "pass"
    signature = re.sub(rb"\s+", b"", marketing.content.split(b"\r\n\r\n")[0])
    h = re.search(rb"h=([^;]*);", signature)[1].decode().lower().split(":")  # type: ignore[index]
    for name in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type", "list-id", "list-unsubscribe", "list-unsubscribe-post"):
        assert name in h
    assert h.count("list-unsubscribe") == 2  # over-signed
    tampered = marketing.content.replace(b"Subject: Nieuwe collectie", b"Subject: Nieuwe collectie!")
    assert perl_verify(tampered, records, tmp_path) == "fail"
    added = marketing.content.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example/u/x>\r\n\r\n", 1)
    assert perl_verify(added, records, tmp_path) != "pass"


async def test_proof_shows_when_and_how_the_address_unsubscribed(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    from relay.consent.proof import build_proof

    relay = await start_relay(relay_config(tmp_path, upstream.port))
    await relay.services.store.consent.upsert_consents([consent("anna@example.nl")], now=datetime.now(timezone.utc))
    await asend(relay.smtp_port, newsletter(), mail_from="news@shop.example")
    url, _ = list_unsubscribe(upstream.messages[-1].content)
    async with aiohttp.ClientSession() as http:
        async with http.post(public_url(relay, url), data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200
    await relay.recorder.flush()
    proof = await build_proof(relay.services, "anna@example.nl", "shop")
    assert proof["suppressions"][0]["via"] == "one_click"
    assert proof["consents"][0]["revoked_via"] == "one_click"
    assert len(proof["deliveries"]) == 1
