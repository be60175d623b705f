"""Issue 20: a copy rendered from a template goes on the wire without the dot-stuffing scans when its
pieces tell that they would change nothing (smtp_client.wire_ready). Whenever a copy says so, the
bytes sent are what dot_stuffed gives: the flag may only be False too often, never True wrongly."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.facts import AccountFacts, MessageFacts, StreamFacts
from policies.message import parse_message
from policies.profiles import load_profile
from relay.delivery.dkim import DkimKey, DkimSigner
from relay.delivery.personalize import CopyTemplate, CopyTemplates, Rendered
from relay.delivery.smtp_client import dot_stuffed, wire_ready
from relay.engine.copies import RELAY_ID_HEADER, CopyMaker
from relay.engine.pipeline import STREAM_HEADER
from relay.engine.signing import CopySigner
from relay.engine.transaction import Transaction
from relay.unsubscribe.links import CopyLinks
from relay.unsubscribe.tokens import TokenCodec
from tests.relay.delivery.test_mime_differential import PH, messages

BENCH = (Path(__file__).resolve().parents[3] / "bench" / "message.eml").read_bytes()
CRLF_BENCH = BENCH.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
HEADERS = [
    ("List-Unsubscribe", "<https://relay.example/u/T0k-en_1>, <mailto:unsubscribe+abc@relay.example>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("List-Id", "<weekly.shop.relay.example>"),
]
# URLs whose '.' may start a quoted-printable line (a soft break before it), or a line of its own.
URLS = st.sampled_from([
    "https://relay.example/u/T0k-en_1?a=1&b=2",
    "https://relay.example/u/" + "A" * 49 + "." + "B" * 60,
    "." * 200,
    ".",
    ".x",
    "https://r.example/u/" + ".A" * 80,
])

_wire_bits = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"a", b" ", b"\r\n.", b".\r\n"])


@settings(max_examples=1000)
@given(pieces=st.lists(st.lists(_wire_bits, max_size=8).map(b"".join), max_size=6))
def test_wire_ready_holds_of_a_join_of_ready_pieces_and_means_nothing_to_stuff(pieces: list[bytes]) -> None:
    joined = b"".join(pieces)
    if all(wire_ready(piece) for piece in pieces):
        assert wire_ready(joined)
    if wire_ready(joined) and joined.endswith(b"\r\n"):
        assert dot_stuffed(joined) == joined + b".\r\n" == dot_stuffed(joined, ready=True)
    elif joined.endswith(b"\r\n"):
        assert dot_stuffed(joined) != joined + b".\r\n"  # not ready: stuffing changes something


def _edges(raw: bytes, kind: int) -> bytes:
    """Lines starting with '.' where a copy's pieces meet: before and after the placeholder, at the
    start of a body, and a message in LF line ends."""
    ph = PH.encode()
    return [
        raw,
        raw.replace(ph, b"\r\n." + ph + b".\r\n.x", 1),
        raw.replace(ph, ph + b"\r\n.", 1),
        raw.replace(ph, b"." + ph, 1),
        raw.replace(b"\r\n\r\n", b"\r\n\r\n.dot\r\n", 1),
        raw.replace(b"\r\n", b"\n"),
    ][kind]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=messages(), kind=st.integers(0, 5), url=URLS)
def test_a_copy_said_ready_is_its_own_dot_stuffed_form(case: tuple[bytes, object], kind: int, url: str) -> None:
    raw = _edges(case[0], kind)
    template = CopyTemplates().prepare(raw, placeholder=PH, first=(RELAY_ID_HEADER, "relay-1"), drop=(RELAY_ID_HEADER, STREAM_HEADER))
    for _ in range(2):  # a body's pieces are looked at from its second copy on
        copy, ready = template.render_wire(headers=HEADERS, url=url)
        assert copy == template.render_split(headers=HEADERS, url=url)
        if ready:
            assert dot_stuffed(copy.message) == copy.message + b".\r\n"


def _second(template: CopyTemplate, url: str) -> tuple[Rendered, bool]:
    template.render_wire(headers=HEADERS, url=url)  # a body's first copy: not looked at (the scan would not pay)
    return template.render_wire(headers=HEADERS, url=url)


def test_a_crlf_newsletter_is_ready_and_a_dot_the_url_puts_at_a_line_start_is_seen() -> None:
    templates = CopyTemplates()
    template = templates.prepare(CRLF_BENCH, placeholder="{{unsubscribe_url}}")
    assert not template.render_wire(headers=HEADERS, url="https://relay.example/u/T0k-en_1")[1]
    copy, ready = template.render_wire(headers=HEADERS, url="https://relay.example/u/T0k-en_1")
    assert ready and dot_stuffed(copy.message) == copy.message + b".\r\n"
    # The next message of the campaign (its body kept): ready from its first copy.
    again = templates.prepare(CRLF_BENCH.replace(b"Subject:", b"Subject: again", 1), placeholder="{{unsubscribe_url}}")
    assert again.render_wire(headers=HEADERS, url="https://relay.example/u/T0k-en_2")[1]
    # A quoted-printable soft line break right before a '.' of the URL: that line starts with '.'.
    qp = (
        b"From: a@shop.example\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nAfmelden: {{unsubscribe_url}}\r\n"
    )
    url = "https://relay.example/u/" + "A" * (75 - len("Afmelden: https://relay.example/u/")) + ".B"
    copy, ready = _second(CopyTemplates().prepare(qp, placeholder="{{unsubscribe_url}}"), url)
    assert b"\r\n.B" in copy.message and not ready
    copy, ready = _second(CopyTemplates().prepare(qp, placeholder="{{unsubscribe_url}}"), url[:-2])
    assert ready
    # An LF message is not: the upstream makes its line ends CRLF.
    assert not _second(CopyTemplates().prepare(BENCH.replace(b"\r\n", b"\n"), placeholder="x"), "u")[1]


def test_copymaker_marks_its_signed_copies_ready_only_when_they_are() -> None:
    config: Any = SimpleNamespace(
        unsubscribe=SimpleNamespace(placeholder="{{unsubscribe_url}}", mailto_domain="relay.example", csa_complaints=""),
        bounces=SimpleNamespace(verp=True, verp_transactional=False),
        http=SimpleNamespace(public_base_url="https://relay.example/"),
    )
    account = AccountFacts(id="shop", name="Shop", domains=frozenset({"shop.example"}))
    stream = StreamFacts("newsletter", "marketing", "newsletter")

    class Ids:
        next = 0

        async def take(self) -> int:
            self.next += 1
            return self.next

    signer = CopySigner(DkimSigner([DkimKey("shop.example", "s1", ed25519.Ed25519PrivateKey.generate(), "ed25519-sha256")]))
    maker = CopyMaker(config, CopyLinks(config, TokenCodec([b"a test secret of 32 bytes ......"])), signer, Ids())  # type: ignore[arg-type]
    dotted = CRLF_BENCH.replace(b"{{unsubscribe_url}}", b"\r\n.{{unsubscribe_url}}", 1)
    # A body's first copy is not looked at; the next ones are when nothing in them needs stuffing.
    for raw, expected in ((CRLF_BENCH, [False, True]), (dotted, [False, False]), (BENCH.replace(b"\r\n", b"\n"), [False, False])):
        facts = MessageFacts(account, "news@shop.example", datetime.now(timezone.utc), load_profile("strict").params, stream, message=parse_message(raw))

        async def made() -> list[Any]:
            return [c async for c in maker(Transaction("01JTEST", "192.0.2.1", "news@shop.example"), facts, {}, raw, ["a@example.net", "b@example.net"])]

        copies = asyncio.run(made())
        assert [c.wire_ready for c in copies] == expected
        for c in copies:
            assert c.content.startswith(b"DKIM-Signature:")
            if c.wire_ready:
                assert dot_stuffed(c.content) == dot_stuffed(c.content, ready=True)


@settings(max_examples=500)
@given(
    name=st.from_regex(r"\A[!-9;-~]{1,20}\Z"),
    value=st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=200),
)
def test_a_list_header_field_is_ready_unless_its_name_starts_with_a_dot(name: str, value: str) -> None:
    from relay.delivery.personalize import _format_header

    assert wire_ready(_format_header(name, value, b"\r\n")) == (not name.startswith("."))
