"""Fuzzing the MIME path: no input crashes parse_message or the engine's message evaluation."""

from __future__ import annotations

import base64
import quopri

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import evaluate, facts
from policies.findings import Outcome
from policies import message as parsed
from policies import mime
from policies.message import parse_message

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CHARSETS = st.sampled_from(["utf-8", "iso-8859-1", "windows-1252", "utf-16", "x-bogus", "base64", "", '"', "utf-7"])
ENCODINGS = st.sampled_from(["", "7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "BASE64"])
TYPES = st.sampled_from(
    ["text/plain", "text/html", "application/zip", "application/octet-stream", "message/rfc822", "image/png", "text"]
)
HTML_BITS = st.sampled_from(
    ["<a href=", "'x'", '"https://t.example/u"', ">", "</a>", "<script>", "</script>", "<!--", "-->",
     '<div style="display:none">', "</div>", "<img alt=", "&amp;", "&#x", "{{unsubscribe_url}}",
     "magnet:?xt=", "NL91ABNA0417164300", "EICAR-STANDARD-ANTIVIRUS-TEST-FILE", "MZ", "PK\x03\x04", "\x00", "é"]
)
TEXT = st.one_of(st.text(max_size=200), st.lists(HTML_BITS, max_size=30).map("".join))


def encode(payload: bytes, encoding: str) -> bytes:
    if encoding.lower() == "base64":
        return base64.encodebytes(payload)
    if encoding == "quoted-printable":
        return quopri.encodestring(payload)
    return payload


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(TYPES)
    charset = draw(CHARSETS)
    encoding = draw(ENCODINGS)
    payload = draw(st.one_of(TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
    name = draw(st.sampled_from(["", '; name="a.exe"', "; name*=utf-8''%FF%FE.js", '; name="x.zip"']))
    disposition = draw(st.sampled_from(["", "Content-Disposition: attachment\r\n", "Content-Disposition: inline; filename=\"r.txt\"\r\n"]))
    head = f"Content-Type: {ctype}; charset={charset}{name}\r\n{disposition}"
    if encoding:
        head += f"Content-Transfer-Encoding: {encoding}\r\n"
    body = encode(payload, encoding) if draw(st.booleans()) else payload
    return head.encode("utf-8", "surrogatepass") + b"\r\n" + body


def multipart(children: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        boundary = draw(st.sampled_from(["b", "==x==", "(", "a b", "", "x" * 80]))
        parts = draw(children)
        closed = draw(st.booleans())
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
        if closed:
            body += b"--" + boundary.encode() + b"--\r\n"
        sub = draw(st.sampled_from(["mixed", "alternative", "related"]))
        return f'Content-Type: multipart/{sub}; boundary="{boundary}"\r\n\r\n'.encode() + body

    return build()


MIME = st.recursive(leaf(), lambda inner: multipart(st.lists(inner, max_size=4)), max_leaves=8)
HEADERS = st.lists(
    st.sampled_from(
        [b"From: Shop <news@shop.example>", b"From: =?utf-8?b?!!?= <x@y>", b"From: <<@>>", b"Subject: RE: hi",
         b"Subject: =?x-bad?q?=FF?=", b"Reply-To: noreply@shop.example", b"In-Reply-To: <a@b>", b"References: <",
         b"X-Long: " + b"a" * 2000, b" folded continuation", b"\xff\xfe: binary"]
    ),
    max_size=6,
)


def check(raw: bytes) -> None:
    message = parse_message(raw)
    # parse_message keeps a last-resort except around the walk; call the walk itself so
    # the fuzzer sees any exception that safety net would hide.
    collector = parsed._Collector()
    for part in mime.walk(raw):
        parsed._read(part, collector)
    parsed._render(collector.plain, collector.html)
    for value in (message.text, message.hidden_text, message.folded_text, message.subject, message.from_name):
        assert isinstance(value, str)
    assert isinstance(message.words, frozenset)
    for link in message.links:
        assert 0 <= link.start <= link.end <= len(message.text)
    for attachment in message.attachments:
        assert attachment.size >= 0
    assert isinstance(message.has_eicar, bool)
    verdict = evaluate(facts(raw))
    assert verdict.outcome in Outcome


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(HEADERS, MIME)
def test_structured_mime_never_crashes(headers: list[bytes], mime: bytes) -> None:
    check(b"\r\n".join(headers) + (b"\r\n" if headers else b"") + mime)


@FUZZ
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=3000))
def test_truncated_real_corpus_never_crashes(noise: bytes, cut: int) -> None:
    from factories import CORPUS

    for path in sorted(CORPUS.glob("*.eml"))[:4]:
        raw = path.read_bytes()
        check(raw[:cut] + noise + raw[cut + len(noise):])
