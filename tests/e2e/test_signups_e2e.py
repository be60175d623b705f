"""Hosted double opt-in end to end over real HTTP and a real upstream (docs/SPEC.md §18): the API, the
DKIM-signed confirmation mail through the outbox, the public confirm page, expiry, forgery, replay,
the per-address and per-client limits, suppressed addresses and the proof chain."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from policies.facts import Suppression
from tests.conftest import Clocked, asend, cli_run, message, until
from tests.e2e.signup_support import (
    SIGNUP,
    cli_json,
    confirm_link,
    dkim_records,
    local_url,
    parsed,
    perl_verify,
    post_signup,
    signup_config,
    text_part,
)

START = dt.datetime(2026, 3, 16, 9, 0, tzinfo=dt.timezone.utc)


async def _signed_up(relay: Any, upstream: Any, body: dict[str, Any] | None = None) -> str:
    status, answer = await post_signup(relay.admin_port, body or SIGNUP)
    assert (status, answer["status"]) == (202, "sent"), answer
    await until(lambda: upstream.messages, what="the confirmation mail at the upstream")
    return confirm_link(upstream.messages[-1].content)


async def _get(url: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, allow_redirects=False, **kwargs) as response:
            return response.status, await response.text(), response.headers


async def _post(url: str, data: Any = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=data if data is not None else {"confirm": "yes"}, allow_redirects=False) as response:
            return response.status, await response.text()


async def _consents(relay: Any, email: str = "anna@example.nl") -> list[Any]:
    return (await relay.services.store.consent.find_consents(["shop"], [email])).get(email, [])


async def test_signup_queues_a_dkim_signed_confirmation_mail_with_an_opaque_link(
    tmp_path: Path, upstream: Any, start_relay: Any
) -> None:
    config = signup_config(tmp_path, upstream.port)
    relay = await start_relay(config, background=True)
    link = await _signed_up(relay, upstream)
    mail = upstream.messages[0]
    assert mail.rcpt_tos == ["anna@example.nl"]
    assert mail.mail_from.startswith("bounce+") and mail.mail_from.endswith("@relay.test")  # VERP, as marketing copies
    assert perl_verify(mail.content, dkim_records(config), tmp_path) == "pass"
    tampered = mail.content.replace(b"Subject: ", b"Subject: X", 1)
    assert perl_verify(tampered, dkim_records(config), tmp_path) == "fail"
    msg = parsed(mail.content)
    assert msg["From"] == "Shop <info@shop.example>" and msg["Content-Language"] == "nl"
    assert msg["X-Relay-Id"].startswith("signup-")
    body = text_part(mail.content)
    assert "Ja, stuur mij de wekelijkse nieuwsbrief van Shop" in body and "elke vrijdag" in body
    assert "Keizersgracht 1, 1015 AA Amsterdam" in body and "KvK 12345678" in body
    token = link.rsplit("/", 1)[1]
    assert "anna" not in token.lower() and len(token) < 40  # an id and a MAC, nothing readable
    assert "List-Unsubscribe" not in msg  # a request for consent, not a marketing message
    # The outbox told the signup that the upstream took its mail.
    [signup] = await until(lambda: _delivered_signups(relay), what="the signup's mail marked delivered")
    assert signup.relay_id == msg["X-Relay-Id"] and signup.message_id == msg["Message-ID"]


async def _delivered_signups(relay: Any) -> list[Any]:
    found = await relay.services.store.signups.for_address("anna@example.nl", ["shop"])
    return [s for s in found if s.mail_status == "delivered"]


async def test_the_mail_waits_in_the_outbox_while_the_upstream_is_down(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    upstream.stop()
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    status, answer = await post_signup(relay.admin_port, SIGNUP)
    assert (status, answer["status"]) == (202, "sent")
    assert await relay.services.store.outbox.depth() == 1
    upstream.start()
    await until(lambda: upstream.messages, what="the queued confirmation mail")
    assert upstream.messages[0].rcpt_tos == ["anna@example.nl"]


async def test_get_shows_one_button_and_only_post_confirms_with_every_csa_field(
    tmp_path: Path, upstream: Any, start_relay: Any
) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    link = await _signed_up(relay, upstream)
    url = local_url(relay.public_port, link)
    for _ in range(3):  # link scanners fetch GETs, sometimes several times
        status, page, headers = await _get(url)
        assert status == 200 and page.count("<button") == 1 and 'lang="nl"' in page
        assert headers["Referrer-Policy"] == "no-referrer" and "no-store" in headers["Cache-Control"]
    assert "Ja, stuur mij de wekelijkse nieuwsbrief van Shop" in page
    assert await _consents(relay) == []
    status, page = await _post(url, {})  # a POST without the form's field confirms nothing
    assert status == 400 and await _consents(relay) == []
    status, page = await _post(url)
    assert status == 200 and "Aanmelding bevestigd" in page
    [consent] = await _consents(relay)
    signup = (await relay.services.store.signups.for_address("anna@example.nl", ["shop"]))[0]
    assert consent.basis == "double_opt_in" and consent.source == "signup_form" and consent.topic == "newsletter"
    assert consent.collected_at == signup.requested_at and consent.confirmed_at == signup.confirmed_at
    assert consent.source_url == "https://shop.example/nieuwsbrief" and consent.source_ip == "198.51.100.7"
    assert consent.statement_text == SIGNUP["statement"] and consent.frequency_disclosed and not consent.prechecked
    assert signup.confirm_ip == "127.0.0.1" and consent.confirmed_at >= consent.collected_at
    # Replayed: the same page, nothing new recorded.
    status, page = await _post(url)
    assert status == 200 and "Aanmelding bevestigd" in page
    [again] = await _consents(relay)
    assert again == consent
    assert (await relay.services.store.signups.get(signup.id)).confirmed_at == signup.confirmed_at


async def test_confirmed_consent_lets_the_next_newsletter_through(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    newsletter = message(sender="news@shop.example", to="anna@example.nl", subject="Nieuw", stream="newsletter",
                         body="Nieuw deze week. Afmelden: {{unsubscribe_url}}")
    refused = await asend(relay.smtp_port, newsletter, mail_from="news@shop.example", rcpts=["anna@example.nl"])
    assert refused.code == 550, refused
    link = await _signed_up(relay, upstream)
    assert (await _post(local_url(relay.public_port, link)))[0] == 200
    delivered = await asend(relay.smtp_port, newsletter, mail_from="news@shop.example", rcpts=["anna@example.nl"])
    assert delivered.code == 250, delivered
    assert upstream.messages[-1].rcpt_tos == ["anna@example.nl"] and b"List-Unsubscribe" in upstream.messages[-1].content


async def test_expired_and_forged_tokens_are_404_and_record_nothing(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    clock = Clocked(START)
    config = signup_config(tmp_path, upstream.port, signups={"confirm_ttl_hours": 2})
    relay = await start_relay(config, background=True, clock=clock.clock())
    link = await _signed_up(relay, upstream)
    url = local_url(relay.public_port, link)
    token = url.rsplit("/", 1)[1]
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    other = "A" * len(token)
    for bad in (flipped, other, token[:-2], "not-a-token", token + "x"):
        status, page, _ = await _get(url.replace(token, bad))
        assert status == 404 and "<button" not in page
        assert (await _post(url.replace(token, bad)))[0] == 404
    clock.advance(hours=2)
    assert (await _get(url))[0] == 404
    assert (await _post(url))[0] == 404
    assert await _consents(relay) == []
    [signup] = await relay.services.store.signups.for_address("anna@example.nl", ["shop"])
    assert signup.confirmed_at is None


async def test_a_token_signed_with_another_secret_is_forged_and_rotation_keeps_old_links(
    tmp_path: Path, upstream: Any, start_relay: Any
) -> None:
    from relay.consent.signups import ConfirmTokens

    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    link = await _signed_up(relay, upstream)
    signup_id = int((await relay.services.store.signups.for_address("anna@example.nl", ["shop"]))[0].id)
    forged = ConfirmTokens([b"another-secret-0123456789abcdef"]).issue(signup_id)
    assert (await _post(f"http://127.0.0.1:{relay.public_port}/c/{forged}"))[0] == 404
    assert await _consents(relay) == []
    rotated = ConfirmTokens([b"a-newer-secret-0123456789abcdef", b"unsubscribe-secret-for-tests-0123456789"])
    assert rotated.verify(link.rsplit("/", 1)[1]) == signup_id


async def test_one_mail_per_address_and_account_per_resend_window(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    clock = Clocked(START)
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True, clock=clock.clock())
    await _signed_up(relay, upstream)
    answers = await asyncio.gather(*(post_signup(relay.admin_port, {**SIGNUP, "ip": f"198.51.100.{i}"}) for i in range(10, 18)))
    assert [a for a in answers] == [(202, {"status": "throttled"})] * 8
    clock.advance(hours=23)
    assert (await post_signup(relay.admin_port, {**SIGNUP, "email": "ANNA@example.nl"}))[1] == {"status": "throttled"}
    clock.advance(hours=1, seconds=1)
    assert (await post_signup(relay.admin_port, SIGNUP))[1]["status"] == "sent"
    await until(lambda: len(upstream.messages) == 2, what="the second mail, a day later")
    assert len(upstream.messages) == 2


async def test_client_address_rate_limit_holds_under_a_burst(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    clock = Clocked(START)
    config = signup_config(tmp_path, upstream.port, signups={"client_rate_per_hour": 5})
    relay = await start_relay(config, background=True, clock=clock.clock())
    bodies = [{**SIGNUP, "email": f"user{i}@example.nl"} for i in range(20)]
    answers = await asyncio.gather(*(post_signup(relay.admin_port, b) for b in bodies))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [202] * 5 + [429] * 15
    limited = next(a for s, a in answers if s == 429)
    assert limited["error"] == "rate_limited"
    # Another client address is not affected.
    assert (await post_signup(relay.admin_port, {**SIGNUP, "email": "x@example.nl", "ip": "203.0.113.9"}))[0] == 202
    await until(lambda: len(upstream.messages) == 6, what="six confirmation mails")
    clock.advance(hours=1)
    assert (await post_signup(relay.admin_port, {**SIGNUP, "email": "later@example.nl"}))[0] == 202
    metric = relay.services.metrics.signups
    assert metric.labels("shop", "rate_limited")._value.get() == 15 and metric.labels("shop", "sent")._value.get() == 7


async def test_a_suppressed_address_gets_no_mail(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    store = relay.services.store.consent
    for email, reason, topic in (
        ("gone@example.nl", "suppression.unsubscribed", "*"),
        ("angry@example.nl", "suppression.complaint", "newsletter"),
        ("bounced@example.nl", "suppression.bounced", "*"),
    ):
        await store.add_suppression(Suppression(email, "shop", topic, reason, "test", START))
        status, answer = await post_signup(relay.admin_port, {**SIGNUP, "email": email})
        assert (status, answer) == (202, {"status": "suppressed"})
    assert (await post_signup(relay.admin_port, {**SIGNUP, "email": "fresh@example.nl"}))[1]["status"] == "sent"
    await until(lambda: upstream.messages, what="the one permitted mail")
    assert upstream.recipients() == ["fresh@example.nl"]
    assert await relay.services.store.outbox.depth() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not an address"}, "email"),
        ({"stream": "orders"}, "stream"),
        ({"stream": "nope"}, "stream"),
        ({"statement": ""}, "statement"),
        ({"ip": "999.1.1.1"}, "ip"),
        ({"source_url": ""}, "source_url"),
        ({"language": "fr"}, "language"),
        ({"colour": "red"}, "colour"),
        ({"email": 5}, "email"),
    ],
)
async def test_bad_requests_get_422_naming_the_field(
    tmp_path: Path, upstream: Any, start_relay: Any, change: dict[str, Any], field: str
) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port))
    status, answer = await post_signup(relay.admin_port, {**SIGNUP, **change})
    assert status == 422 and answer["field"] == field, answer
    assert await relay.services.store.outbox.depth() == 0


async def test_auth_and_unknown_account(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port))
    assert (await post_signup(relay.admin_port, SIGNUP, token="wrong"))[0] == 401
    assert (await post_signup(relay.admin_port, {**SIGNUP, "account": "nobody"}))[0] == 404
    status, answer = await post_signup(relay.admin_port, {k: v for k, v in SIGNUP.items() if k != "account"})
    assert status == 422 and answer["field"] == "account"
    status, answer = await post_signup(relay.admin_port, {**SIGNUP, "source_url": "ftp://x"})
    assert status == 422 and answer["field"] == "source_url"


async def test_the_account_template_is_used(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    template = {
        "from": "hallo@shop.example", "subject": "Nog één klik",
        "text": "Klik: {{confirm_url}}\nShop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678",
        "html": "<p><a href=\"{{confirm_url}}\">Bevestig</a></p>",
    }
    relay = await start_relay(signup_config(tmp_path, upstream.port, account={"confirmation": template}), background=True)
    link = await _signed_up(relay, upstream)
    msg = parsed(upstream.messages[0].content)
    assert msg["Subject"] == "Nog één klik" and msg["From"] == "Shop <hallo@shop.example>"
    assert text_part(upstream.messages[0].content).startswith(f"Klik: {link}")


@pytest.mark.parametrize("language", ["nl", "en", "de"])
async def test_default_mails_pass_the_identity_rules(
    tmp_path: Path, upstream: Any, start_relay: Any, capsys: pytest.CaptureFixture[str], language: str
) -> None:
    """`consent-relay explain` on the mail as sent: no rule of the strict profile objects."""
    config = signup_config(tmp_path, upstream.port)
    relay = await start_relay(config, background=True)
    await _signed_up(relay, upstream, {**SIGNUP, "language": language})
    mail = upstream.messages[0]
    assert parsed(mail.content)["Content-Language"] == language
    eml = tmp_path / "confirm.eml"
    eml.write_bytes(mail.content)
    capsys.readouterr()  # the relay's own log lines so far
    code, out, err = await asyncio.to_thread(
        cli_run, 
        ["explain", str(eml), "--account", "shop", "--stream", "orders", "--json", "-c", str(config.path)], capsys
    )
    assert code == 0, out + err
    report = cli_json(out)
    assert "identity.from_name_mismatch" in json.dumps(report)  # the rules ran


async def test_proof_shows_the_chain(tmp_path: Path, upstream: Any, start_relay: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config = signup_config(tmp_path, upstream.port)
    relay = await start_relay(config, background=True)
    link = await _signed_up(relay, upstream)
    await until(lambda: _delivered_signups(relay), what="delivery noted")
    assert (await _post(local_url(relay.public_port, link)))[0] == 200
    capsys.readouterr()  # the relay's own log lines so far
    code, out, err = await asyncio.to_thread(
        cli_run, ["consent", "proof", "anna@example.nl", "--account", "shop", "--format", "json", "-c", str(config.path)], capsys)
    assert code == 0, err
    proof = cli_json(out)
    [chain] = proof["signups"]
    assert chain["request"]["method"] == "web_form" and chain["request"]["ip"] == "198.51.100.7"
    assert chain["request"]["source_url"] == SIGNUP["source_url"] and chain["request"]["statement"] == SIGNUP["statement"]
    assert chain["mail"]["status"] == "delivered" and chain["mail"]["relay_id"].startswith("signup-")
    assert chain["confirmation"]["ip"] == "127.0.0.1" and chain["confirmation"]["opt_in_type"] == "double"
    [consent] = proof["consents"]
    assert consent["confirmed_at"] == chain["confirmation"]["confirmed_at"]
    assert consent["collected_at"] == chain["request"]["requested_at"]
    capsys.readouterr()  # the relay's own log lines so far
    code, out, err = await asyncio.to_thread(
        cli_run, ["consent", "proof", "anna@example.nl", "--account", "shop", "-c", str(config.path)], capsys)
    assert code == 0 and "Double opt-in through the relay" in out and chain["mail"]["relay_id"] in out
    assert "confirmed " in out and "from IP 127.0.0.1" in out
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://127.0.0.1:{relay.admin_port}/api/consent/anna@example.nl/proof?account=shop",
            headers={"Authorization": "Bearer signup-admin-token-0123456789abcdef"},
        ) as response:
            api = await response.json()
    assert api["signups"] == proof["signups"]


async def test_a_signup_whose_consent_the_profile_refuses_sends_nothing(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port))
    status, answer = await post_signup(relay.admin_port, {**SIGNUP, "frequency": ""})
    assert status == 422 and answer["error"] == "refused" and answer["rule"].startswith("consent."), answer
    assert await relay.services.store.outbox.depth() == 0


async def test_the_public_page_answers_503_when_the_store_cannot(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    link = await _signed_up(relay, upstream)
    await relay.services.store.close()
    status, page, _ = await _get(local_url(relay.public_port, link), headers={"Accept-Language": "de"})
    assert status == 503 and "Bitte später erneut versuchen" in page and "Traceback" not in page
    assert (await _post(local_url(relay.public_port, link)))[0] == 503


def _validate(instance: Any, name: str) -> None:
    import jsonschema

    from relay.http.openapi_signups import SCHEMAS

    schema = {"components": {"schemas": SCHEMAS}, "$ref": f"#/components/schemas/{name}"}
    jsonschema.Draft202012Validator(schema).validate(instance)


async def test_answers_match_the_openapi_fragment(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    from relay.consent.proof import build_proof

    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    status, sent = await post_signup(relay.admin_port, SIGNUP)
    _validate(sent, "SignupAccepted")
    _validate((await post_signup(relay.admin_port, SIGNUP))[1], "SignupAccepted")  # throttled
    _validate(SIGNUP, "SignupInput")
    await until(lambda: upstream.messages, what="the mail")
    [pending] = (await build_proof(relay.services, "anna@example.nl", "shop"))["signups"]
    _validate(pending, "SignupChain")
    assert (await _post(local_url(relay.public_port, confirm_link(upstream.messages[0].content))))[0] == 200
    [confirmed] = (await build_proof(relay.services, "anna@example.nl", "shop"))["signups"]
    _validate(confirmed, "SignupChain")
    assert confirmed["confirmation"] is not None


async def test_markup_in_the_statement_stays_text_in_the_mail_and_on_the_page(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    statement = 'Ja <script>alert(1)</script> & "meer"'
    link = await _signed_up(relay, upstream, {**SIGNUP, "statement": statement})
    html_part = next(p for p in parsed(upstream.messages[0].content).walk() if p.get_content_type() == "text/html")
    html_text = html_part.get_content()
    assert "<script>" not in html_text and "Ja &lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;meer&#34;" in html_text
    assert link in html_text
    status, page, _ = await _get(local_url(relay.public_port, link))
    assert status == 200 and "<script>" not in page and "&lt;script&gt;" in page


async def test_a_paused_or_suspended_account_sends_no_confirmation(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    from relay.store.records import AccountState

    relay = await start_relay(signup_config(tmp_path, upstream.port))
    accounts = relay.services.store.accounts
    await accounts.set(AccountState("shop", "paused", "complaint rate"), actor="test", note="")
    status, answer = await post_signup(relay.admin_port, SIGNUP)
    assert status == 409 and answer["error"] == "account_paused" and "complaint rate" in answer["detail"]
    await accounts.set(AccountState("shop", "suspended"), actor="test", note="")
    assert (await post_signup(relay.admin_port, SIGNUP))[1]["error"] == "account_suspended"
    await accounts.set(AccountState("shop", "active", paused_streams=frozenset({"newsletter"})), actor="test", note="")
    assert (await post_signup(relay.admin_port, SIGNUP))[0] == 409
    assert await relay.services.store.outbox.depth() == 0
    await accounts.set(AccountState("shop", "active"), actor="test", note="")
    assert (await post_signup(relay.admin_port, SIGNUP))[1]["status"] == "sent"


async def test_the_whole_flow_on_either_store(tmp_path: Path, upstream: Any, start_relay: Any, store_url: str) -> None:
    from relay.consent.proof import build_proof

    relay = await start_relay(signup_config(tmp_path, upstream.port, store={"url": store_url}), background=True)
    link = await _signed_up(relay, upstream)
    assert (await post_signup(relay.admin_port, SIGNUP))[1] == {"status": "throttled"}
    await until(lambda: _delivered_signups(relay), what="delivery noted")
    url = local_url(relay.public_port, link)
    assert (await _get(url))[0] == 200 and await _consents(relay) == []
    assert (await _post(url))[0] == 200 and (await _post(url))[0] == 200
    [chain] = (await build_proof(relay.services, "anna@example.nl", "shop"))["signups"]
    [consent] = await _consents(relay)
    assert chain["mail"]["status"] == "delivered" and chain["confirmation"]["ip"] == "127.0.0.1"
    assert consent.basis == "double_opt_in" and consent.confirmed_at is not None and consent.source_ip == SIGNUP["ip"]


async def test_a_hard_bounce_of_the_confirmation_mail_suppresses_the_address(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port), background=True)
    await _signed_up(relay, upstream)
    verp = upstream.messages[0].mail_from
    [copy] = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
    assert copy.relay_id.startswith("signup-") and copy.stream == "newsletter"
    await until(lambda: _delivered_signups(relay), what="delivery noted")

    async def delivered_copy() -> Any:
        # noted on the signup first, then on its delivery row (SignupService.outbox_delivered): wait for both
        [copy] = await relay.services.store.decisions.deliveries_to("anna@example.nl", ["shop"])
        return copy if copy.status == "delivered" else None

    await until(delivered_copy, what="the delivery row says delivered")
    dsn = (Path(__file__).parents[1] / "corpus" / "feedback" / "dsn" / "flufl-postfix_01.eml").read_bytes()
    out = await asend(relay.smtp_port, dsn, mail_from="", rcpts=[verp], source="127.0.0.2")
    assert out.code == 250 and out.text.endswith("recorded (hard)"), out
    clock_free = {**SIGNUP, "ip": "203.0.113.50"}
    assert (await post_signup(relay.admin_port, clock_free)) == (202, {"status": "suppressed"})


async def test_without_verp_the_mail_leaves_from_the_account(tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    relay = await start_relay(signup_config(tmp_path, upstream.port, bounces={"verp": False}), background=True)
    await _signed_up(relay, upstream)
    assert upstream.messages[0].mail_from == "info@shop.example"


async def test_an_account_key_signs_up_for_its_own_account_and_the_feed_carries_signup_confirmed(
    tmp_path: Path, upstream: Any, start_relay: Any
) -> None:
    from relay.passwords import hash_password

    key = "shop-app-key-0123456789abcdef"
    config = signup_config(tmp_path, upstream.port, account={"api_keys": [{"label": "app", "hash": hash_password(key)}]})
    relay = await start_relay(config, background=True)
    body = {k: v for k, v in SIGNUP.items() if k != "account"}
    status, answer = await post_signup(relay.admin_port, body, token=key)
    assert (status, answer["status"]) == (202, "sent"), answer
    assert (await post_signup(relay.admin_port, {**body, "account": "other"}, token=key))[0] == 404
    await until(lambda: upstream.messages, what="the mail")
    [signup] = await relay.services.store.signups.for_address("anna@example.nl", ["shop"])
    assert signup.requested_by == "key:shop/app"
    url = local_url(relay.public_port, confirm_link(upstream.messages[0].content))
    assert (await _post(url))[0] == 200 and (await _post(url))[0] == 200  # the replay adds no event
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://127.0.0.1:{relay.admin_port}/api/events?account=shop", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            events = (await response.json())["events"]
    confirmed = [e for e in events if e["type"] == "signup_confirmed"]
    assert len(confirmed) == 1, events
    assert confirmed[0]["recipient"] == "anna@example.nl" and confirmed[0]["relay_id"] == signup.relay_id
    assert confirmed[0]["stream"] == "newsletter"
