"""What the rules saw is what was sent: generated messages go through the relay's rewrite path (relay id,
per-recipient list headers and unsubscribe URL, DKIM signature) and the copy, parsed again as the rules
parse, has the same parts, text, links and attachments as the original. The documented rewrites
(docs/SPEC.md: the placeholder becomes the URL in text and HTML parts, HTML-escaped there; the list
headers are the relay's) are the only differences allowed."""

from __future__ import annotations

import base64
import html
import quopri
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies.message import ParsedMessage, parse_message
from relay.delivery.dkim import DkimKey, DkimSigner
from relay.delivery.personalize import prepare
from relay.engine.copies import RELAY_ID_HEADER, with_relay_id
from relay.engine.pipeline import STREAM_HEADER

PH = "{{unsubscribe_url}}"
URL = "https://relay.example/u/T0k-en_1?a=1&b=2"
LIST_HEADERS = [
    ("List-Unsubscribe", f"<{URL}>, <mailto:unsubscribe+abc@relay.example>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("List-Id", "<weekly.shop.relay.example>"),
]
SIGNER = DkimSigner([DkimKey("shop.example", "s1", ed25519.Ed25519PrivateKey.generate(), "ed25519-sha256")])

# Boundaries that trip parsers: a prefix of another, quoted with a space, long, punctuation, and one
# that the URL itself would complete ("--" + placeholder on a line of its own).
BOUNDARIES = ["b", "b-1", "==_Part_1_==", "a b", "x" * 70, "'()+_,-./:=?", "https://relay.example/u/T0k-en_1?a=1&b=2"]
WORDS = st.sampled_from(
    ["Hallo", "café", "=", "==", "visit", "https://shop.example/p?a=1", "www.shop.example", f" {PH} ", "--b",
     "--b--", "-- ", ".", "From me", "\t", "Zoë", "€", "=2D"]
)
LINES = st.lists(
    st.one_of(WORDS, st.just(f"--{PH}"), st.sampled_from([f"--{b}" for b in BOUNDARIES[:-1]])), min_size=1, max_size=8
).map(" ".join)
TEXT = st.lists(LINES, min_size=1, max_size=6).map("\n".join)
HTML_TEXT = st.lists(
    st.one_of(
        LINES.map(html.escape),
        st.just(f'<a href="{PH}">Afmelden</a>'),
        st.just('<a href="https://shop.example/x">shop</a>'),
        st.just(f'<div style="display:none">hidden {PH} </div>'),
        st.just(f"<p>{PH}</p>"),
    ),
    min_size=1,
    max_size=6,
).map(lambda bits: "<html><body>\n" + "\n".join(bits) + "\n</body></html>")


@dataclass(frozen=True)
class Built:
    text: str  # the entity, lines ending in "\n"
    attached: bool = False  # holds an attached message (message/rfc822)
    url_boundary: bool = False  # a multipart whose boundary is the URL


@st.composite
def text_leaf(draw: st.DrawFn) -> Built:
    is_html = draw(st.booleans())
    body = draw(HTML_TEXT if is_html else TEXT)
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "windows-1252", "us-ascii", "utf-16", ""]))
    encoding = draw(st.sampled_from(["", "7bit", "8bit", "quoted-printable", "base64"]))
    if charset == "utf-16":
        encoding = "base64"  # never bare UTF-16 on a line-ending-converted wire
    codec = {"": "utf-8", "us-ascii": "utf-8"}.get(charset, charset)
    data = body.encode(codec, "replace" if codec != "utf-16" else "strict")
    if encoding == "base64":
        encoded = base64.encodebytes(data).decode("ascii")
    elif encoding == "quoted-printable":
        encoded = quopri.encodestring(data).decode("ascii")
        if draw(st.booleans()):  # "=2D-b": a delimiter-looking line hidden by the encoding
            encoded = re.sub(r"(?m)^-", "=2D", encoded)
    else:
        encoded = data.decode("latin-1")
    ctype = "text/html" if is_html else "text/plain"
    head = f"Content-Type: {ctype}" + (f'; charset="{charset}"' if charset else "") + "\n"
    if draw(st.booleans()):  # a duplicated field: the first counts, for every reader
        head += "Content-Type: application/octet-stream\n"
    if encoding:
        head += f"Content-Transfer-Encoding: {encoding}\n"
    return Built(head + "\n" + encoded.rstrip("\n") + "\n")


@st.composite
def other_leaf(draw: st.DrawFn) -> Built:
    kind = draw(st.sampled_from(["pdf", "notes", "forward"]))
    if kind == "pdf":
        payload = base64.encodebytes(b"%PDF-1.4 " + PH.encode() + bytes(range(40))).decode()
        return Built('Content-Type: application/pdf; name="a.pdf"\nContent-Transfer-Encoding: base64\n'
                     'Content-Disposition: attachment; filename="a.pdf"\n\n' + payload)
    if kind == "notes":
        return Built(f'Content-Type: text/plain; name="notes.txt"\n\nThe file says {PH} verbatim.\n')
    inner = draw(text_leaf())
    return Built("Content-Type: message/rfc822\n\nFrom: x@y.example\nSubject: fwd\n" + inner.text, attached=True)


def multipart(children: st.SearchStrategy[list[Built]]) -> st.SearchStrategy[Built]:
    @st.composite
    def build(draw: st.DrawFn) -> Built:
        boundary = draw(st.sampled_from(BOUNDARIES))
        parts = draw(children)
        sub = draw(st.sampled_from(["alternative", "mixed", "related"]))
        body = "".join(f"--{boundary}\n{p.text}" for p in parts)
        if draw(st.booleans()):
            body += f"--{boundary}--\n"
        preamble = draw(st.sampled_from(["", f"Preamble {PH}\n"]))
        return Built(
            f'Content-Type: multipart/{sub}; boundary="{boundary}"\n\n{preamble}{body}',
            attached=any(p.attached for p in parts),
            url_boundary=boundary == BOUNDARIES[-1] or any(p.url_boundary for p in parts),
        )

    return build()


ENTITY = st.recursive(st.one_of(text_leaf(), other_leaf()), lambda inner: multipart(st.lists(inner, min_size=1, max_size=3)), max_leaves=6)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, Built]:
    entity = draw(ENTITY)
    head = "From: Shop <news@shop.example>\nTo: bob@example.org\nSubject: Weekly\nMIME-Version: 1.0\n"
    for extra in draw(st.lists(st.sampled_from([
        "List-Unsubscribe: <https://app.example/unsub>\n", "List-Id: app\n list\n", f"{STREAM_HEADER}: newsletter\n",
        f"{RELAY_ID_HEADER}: forged\n", "X-Mailer: app\n",
    ]), max_size=4)):
        head += extra
    text = head + entity.text
    eol = draw(st.sampled_from(["\r\n", "\n", "mixed"]))
    if eol == "mixed":  # CRLF header, bare LF body and every other line of it
        lines = text.split("\n")
        text = "".join(line + ("\r\n" if i % 2 == 0 or i < 4 else "\n") for i, line in enumerate(lines[:-1])) + lines[-1]
    elif eol == "\r\n":
        text = text.replace("\n", "\r\n")
    return text.encode("latin-1", "replace"), entity


def rewrite(raw: bytes) -> bytes:
    """The relay's path for one marketing copy (relay/engine/copies.py CopyMaker)."""
    raw = with_relay_id(raw, "relay-1", STREAM_HEADER)
    copy = prepare(raw, placeholder=PH).render(headers=LIST_HEADERS, url=URL)
    return SIGNER.sign(copy, now=1_700_000_000)


def unsent(text: str, escaped: bool = False) -> str:
    """A part of the copy with the documented rewrite undone, line endings as the rules compare them."""
    text = text.replace("\r\n", "\n")
    return text.replace(html.escape(URL) if escaped else URL, PH)


def other_links(message: ParsedMessage) -> list[tuple[str, str]]:
    return [(link.href, link.text) for link in message.links if PH not in link.href and URL not in link.href]


def check(raw: bytes, built: Built) -> None:
    before = parse_message(raw)
    copy = rewrite(raw)
    after = parse_message(copy)
    # Same structure: the same text parts, the same attachments (name, type, decoded size, kind).
    assert len(after.text_parts) == len(before.text_parts)
    assert len(after.html_parts) == len(before.html_parts)
    assert after.attachments == before.attachments
    assert after.has_eicar == before.has_eicar
    # Same text but for the URL where the placeholder was. Both sides are read with the URL as the
    # placeholder: an original may hold the URL itself (a nested multipart whose boundary it is,
    # which an outer part shows as text), and the copy keeps that as it came.
    for old, new in zip(before.text_parts, after.text_parts):
        assert unsent(new) == unsent(old)
    for old, new in zip(before.html_parts, after.html_parts):
        assert unsent(new, escaped=True) == unsent(old, escaped=True)
    assert unsent(after.text) == unsent(before.text)
    assert unsent(after.hidden_text) == unsent(before.hidden_text)
    # Same links, but for those to the placeholder (now the URL).
    assert other_links(after) == other_links(before)
    if not built.attached and not built.url_boundary:
        # Every placeholder the rules saw was filled in.
        assert PH not in after.text and PH not in after.hidden_text
        assert all(PH not in part for part in (*after.text_parts, *after.html_parts))
    # The headers: the relay's list headers once each, its relay id, no stream header, signed.
    for name, value in LIST_HEADERS:
        assert [re.sub(r"\s+", " ", v) for v in after.headers.get_all(name) or []] == [value]
    assert after.headers.get_all(RELAY_ID_HEADER) == ["relay-1"]
    assert after.headers.get_all(STREAM_HEADER) is None
    assert after.header("DKIM-Signature")
    for name in ("From", "Subject", "Content-Type", "MIME-Version"):
        assert after.headers.get_all(name) == before.headers.get_all(name)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages())
# A quoted-printable line "=2D-b" is no delimiter; re-encoded as "--b" it would be one, and the
# recipient would see a part the rules never read.
@example((
    b"From: news@shop.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Afmelden: {{unsubscribe_url}}\r\n=2D-b\r\nContent-Type: text/html\r\n\r\n<a href=3D\"https://evil.example\">x</a>\r\n"
    b"--b--\r\n",
    Built(""),
))
def test_what_the_rules_saw_is_what_was_sent(case: tuple[bytes, Built]) -> None:
    check(*case)


def test_a_url_completing_a_boundary_leaves_the_part_as_it_came() -> None:
    boundary = URL
    raw = (
        f'From: news@shop.example\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'
        f"--{boundary}\nContent-Type: text/plain\n\nSee below\n--{PH}\nContent-Type: text/html\n\n"
        f'<a href="https://evil.example">x</a>\n--{boundary}--\n'
    ).encode()
    copy = rewrite(raw)
    assert parse_message(copy).html_parts == parse_message(raw).html_parts == ()
    assert f"--{PH}".encode() in copy
