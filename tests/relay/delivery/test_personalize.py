"""Per-recipient copies: list headers replaced, placeholder filled, the rest untouched."""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
import re
from email.message import EmailMessage

import pytest

from relay.delivery.personalize import personalize, prepare, strip_header

PLACEHOLDER = "{{unsubscribe_url}}"
# Real tokens are base64url; this one has the characters HTML must escape.
URL = "https://relay.example.com/u/AbC_12-3?x=1&y=2"
URL_HTML = "https://relay.example.com/u/AbC_12-3?x=1&amp;y=2"
LIST_HEADERS = [
    (
        "List-Unsubscribe",
        "<https://relay.example.com/u/AbC_12-3xyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyz>, "
        "<mailto:unsubscribe+mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpi@relay.example.com>",
    ),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("List-Id", "<weekly.acct42.relay.example.com>"),
]

TOP_HEADERS = (
    b"From: Shop <news@shop.example>\r\n"
    b"To: bob@example.org\r\n"
    b"list-unsubscribe: <https://app.example/unsub/1>,\r\n"
    b"\t<mailto:unsub@app.example>\r\n"
    b"Subject: Weekly\r\n"
    b"LIST-UNSUBSCRIBE-POST: List-Unsubscribe=One-Click\r\n"
    b"List-Id: App list\r\n"
    b" <app.example>\r\n"
    b"X-CSA-Complaints: old@example\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
)

QP_BODY = quopri.encodestring(
    ("Hallo Bob, café = goed.\r\n"
     "Afmelden: " + PLACEHOLDER + "\r\n"
     "Nog eens, midden in een hele lange regel die zeker langer is dan zesenzeventig tekens: "
     + PLACEHOLDER + " einde.\r\n").encode("utf-8")
)
HTML = (
    '<html><body><p>Zo&euml; &amp; co</p>\r\n'
    '<a href="' + PLACEHOLDER + '">Afmelden</a></body></html>\r\n'
).encode("utf-8")
HTML_B64 = base64.encodebytes(HTML).replace(b"\n", b"\r\n").rstrip(b"\r\n")
PDF = base64.encodebytes(b"%PDF-1.4 " + bytes(range(256)) * 4 + PLACEHOLDER.encode()).replace(b"\n", b"\r\n").rstrip(b"\r\n")
TXT_ATTACHMENT = b"The attached file mentions " + PLACEHOLDER.encode() + b" verbatim.\r\n"

# The message as segments: the two text bodies are the only ones that may change.
BEFORE_QP = (
    b"\r\n"
    b"This is a preamble with " + PLACEHOLDER.encode() + b" in it.\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
)
BETWEEN = (
    b"\r\n--inner\r\n"
    b"Content-Type: text/html; charset=\"UTF-8\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
)
AFTER_HTML = (
    b"\r\n--inner--\r\n"
    b"\r\n--outer\r\n"
    b"Content-Type: application/pdf; name=\"a.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
    b"\r\n" + PDF + b"\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"Content-Disposition: attachment; filename=\"notes.txt\"\r\n"
    b"\r\n" + TXT_ATTACHMENT +
    b"--outer--\r\n"
    b"Epilogue " + PLACEHOLDER.encode() + b"\r\n"
)
MIXED = TOP_HEADERS + BEFORE_QP + QP_BODY.rstrip(b"\r\n") + BETWEEN + HTML_B64 + AFTER_HTML


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def header_block(raw: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]


def test_nested_multipart_qp_and_base64_parts_get_the_url() -> None:
    out = personalize(MIXED, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    msg = parse(out)
    plain, html_part = (p for p in msg.walk() if p.get_content_type() in ("text/plain", "text/html") and not p.is_attachment())
    plain_text = plain.get_content()
    assert PLACEHOLDER not in plain_text
    assert plain_text.count(URL) == 2
    assert "café = goed" in plain_text
    html_text = html_part.get_content()
    assert f'<a href="{URL_HTML}">' in html_text
    assert "Zo&euml; &amp; co" in html_text
    assert URL not in html_text  # only the escaped form


def test_everything_but_headers_and_the_two_text_bodies_is_byte_identical() -> None:
    out = personalize(MIXED, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    rest = out[out.index(BEFORE_QP) :]
    assert rest.startswith(BEFORE_QP)
    assert rest.endswith(AFTER_HTML)  # attachments, boundaries, epilogue verbatim
    qp_new, html_new = rest[len(BEFORE_QP) : -len(AFTER_HTML)].split(BETWEEN)
    assert quopri.decodestring(qp_new).decode() == quopri.decodestring(QP_BODY).decode().replace(PLACEHOLDER, URL).rstrip("\r\n")
    assert base64.b64decode(html_new) == HTML.replace(PLACEHOLDER.encode(), URL_HTML.encode())
    assert all(len(line) <= 76 for line in qp_new.split(b"\r\n"))
    assert all(len(line) <= 76 for line in html_new.split(b"\r\n"))
    # Untouched pieces with the placeholder: preamble, the .txt and .pdf attachments, epilogue.
    assert out.count(PLACEHOLDER.encode()) == 3
    assert TXT_ATTACHMENT in out and PDF in out


def test_existing_list_headers_are_replaced_by_exactly_one_each() -> None:
    out = personalize(MIXED, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    msg = parse(out)
    for name, value in LIST_HEADERS:
        values = msg.get_all(name)
        assert values is not None and len(values) == 1
        assert re.sub(r"\s+", " ", str(values[0])) == value
    assert msg.get_all("X-CSA-Complaints") is None
    head = header_block(out)
    assert b"app.example" not in head
    # The other headers keep their bytes and order.
    assert head.startswith(b"From: Shop <news@shop.example>\r\nTo: bob@example.org\r\nSubject: Weekly\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"outer\"\r\nList-Unsubscribe: <https:")


def test_long_headers_are_folded_at_spaces() -> None:
    out = personalize(MIXED, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    head = header_block(out)
    field = re.search(rb"List-Unsubscribe: [^\r]*\r\n [^\r]*", head)
    assert field is not None
    # A line is over 78 only when it is one word that cannot be broken (a long URL).
    for line in field[0].split(b"\r\n"):
        assert len(line) <= 78 or b" " not in line.strip().split(b": ", 1)[-1]
        assert len(line) <= 998
    assert field[0].replace(b"\r\n", b"").decode() == f"{LIST_HEADERS[0][0]}: {LIST_HEADERS[0][1]}"


def test_csa_complaints_added_when_given() -> None:
    headers = [*LIST_HEADERS, ("X-CSA-Complaints", "csa-complaints@eco.de")]
    out = personalize(MIXED, headers=headers, placeholder=PLACEHOLDER, url=URL)
    assert parse(out).get_all("X-CSA-Complaints") == ["csa-complaints@eco.de"]


def test_lf_only_input_stays_lf_only() -> None:
    lf = MIXED.replace(b"\r\n", b"\n")
    out = personalize(lf, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    assert b"\r" not in out
    msg = parse(out)
    plain, html_part = (p for p in msg.walk() if p.get_content_type() in ("text/plain", "text/html") and not p.is_attachment())
    assert plain.get_content().count(URL) == 2
    assert f'href="{URL_HTML}"' in html_part.get_content()
    assert out.endswith(AFTER_HTML.replace(b"\r\n", b"\n"))
    assert len(msg.get_all("List-Unsubscribe") or []) == 1


def test_no_placeholder_and_no_list_headers_is_identity() -> None:
    raw = b"From: a@shop.example\r\nSubject: x\r\n\r\nNo link here.\r\n"
    assert personalize(raw, headers=[], placeholder=PLACEHOLDER, url=URL) == raw


def test_no_placeholder_only_headers_change() -> None:
    raw = MIXED.replace(PLACEHOLDER.encode(), b"nothing")
    raw = raw.replace(QP_BODY.rstrip(b"\r\n"), quopri.encodestring(b"plain text").rstrip(b"\r\n"))
    raw = raw.replace(HTML_B64, base64.b64encode(b"<p>no link</p>"))
    out = personalize(raw, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    assert out.endswith(raw[len(TOP_HEADERS) :])


def test_single_part_7bit_is_a_plain_replace() -> None:
    raw = (
        b"From: a@shop.example\r\nContent-Type: text/html\r\n\r\n"
        b"<a href=\"" + PLACEHOLDER.encode() + b"\">x</a> " + PLACEHOLDER.encode() + b"\r\n"
    )
    out = personalize(raw, headers=[("List-Id", "<t.a.example>")], placeholder=PLACEHOLDER, url=URL)
    assert out == (
        b"From: a@shop.example\r\nContent-Type: text/html\r\nList-Id: <t.a.example>\r\n\r\n"
        b"<a href=\"" + URL_HTML.encode() + b"\">x</a> " + URL_HTML.encode() + b"\r\n"
    )


def test_message_without_content_type_is_text_plain_8bit_utf8() -> None:
    raw = "From: a@shop.example\nSubject: Zoë\n\nGroetjes, Zoë — afmelden: {{unsubscribe_url}}\n".encode()
    out = personalize(raw, headers=[], placeholder=PLACEHOLDER, url=URL)
    assert out == raw.replace(PLACEHOLDER.encode(), URL.encode())


def test_placeholder_split_by_a_qp_soft_line_break() -> None:
    body = b"Afmelden: {{unsub=\r\nscribe_url}} nu.\r\n"
    raw = (
        b"From: a@shop.example\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body
    )
    out = personalize(raw, headers=[], placeholder=PLACEHOLDER, url=URL)
    assert quopri.decodestring(out.split(b"\r\n\r\n", 1)[1]) == f"Afmelden: {URL} nu.\r\n".encode()


def test_part_charsets_are_respected() -> None:
    utf16 = base64.b64encode(f"Afmelden: {PLACEHOLDER} — dank".encode("utf-16"))
    latin1_qp = quopri.encodestring(f"Caf\u00e9 {PLACEHOLDER}\r\n".encode("latin-1"))
    raw = (
        b"From: a@shop.example\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + utf16 + b"\r\n"
        b"--b\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + latin1_qp +
        b"--b--\r\n"
    )
    out = personalize(raw, headers=[], placeholder=PLACEHOLDER, url=URL)
    plain, html_part = (p for p in parse(out).walk() if p.get_content_maintype() == "text")
    assert plain.get_content() == f"Afmelden: {URL} — dank"
    # The line end before "--b--" belongs to the delimiter, not to the part.
    assert html_part.get_content() == f"Caf\u00e9 {URL_HTML}"
    assert plain.get_payload(decode=True).startswith(b"\xff\xfe")  # still UTF-16 with its BOM


def test_forwarded_message_and_images_are_left_alone() -> None:
    inner = b"From: x@y\r\nSubject: fwd\r\n\r\n" + PLACEHOLDER.encode() + b"\r\n"
    raw = (
        b"From: a@shop.example\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\nSee " + PLACEHOLDER.encode() + b"\r\n"
        b"--zz\r\nContent-Type: message/rfc822\r\n\r\n" + inner +
        b"--zz\r\nContent-Type: image/svg+xml\r\n\r\n<svg>" + PLACEHOLDER.encode() + b"</svg>\r\n"
        b"--zz--\r\n"
    )
    out = personalize(raw, headers=[], placeholder=PLACEHOLDER, url=URL)
    assert out == raw.replace(b"See " + PLACEHOLDER.encode(), b"See " + URL.encode())


def test_boundary_prefix_of_another_boundary() -> None:
    raw = (
        b"From: a@shop.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: multipart/alternative; boundary=b-1\r\n\r\n"
        b"--b-1\r\nContent-Type: text/plain\r\n\r\n1 " + PLACEHOLDER.encode() + b"\r\n"
        b"--b-1\r\nContent-Type: text/html\r\n\r\n2 " + PLACEHOLDER.encode() + b"\r\n"
        b"--b-1--\r\n"
        b"--b--\r\n"
    )
    out = personalize(raw, headers=[], placeholder=PLACEHOLDER, url="https://r/u/T")
    assert out == raw.replace(PLACEHOLDER.encode(), b"https://r/u/T")


def test_template_renders_many_copies() -> None:
    template = prepare(MIXED, placeholder=PLACEHOLDER)
    first = template.render(headers=LIST_HEADERS, url="https://r.example/u/AAA")
    second = template.render(headers=LIST_HEADERS, url="https://r.example/u/BBB")
    assert b"AAA" not in second
    assert first == personalize(MIXED, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url="https://r.example/u/AAA")


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        personalize(MIXED, headers=[("List-Id", "<a>\r\nBcc: evil@example")], placeholder=PLACEHOLDER, url=URL)
    with pytest.raises(ValueError, match="header name"):
        personalize(MIXED, headers=[("Bad Name", "x")], placeholder=PLACEHOLDER, url=URL)


def test_strip_header_removes_every_folded_instance() -> None:
    raw = (
        b"X-Relay-Stream: marketing\r\n"
        b"From: a@shop.example\r\n"
        b"x-relay-stream: again,\r\n\tfolded\r\n"
        b"Subject: X-Relay-Stream: not a header\r\n"
        b"\r\n"
        b"X-Relay-Stream: in the body stays\r\n"
    )
    assert strip_header(raw, "X-Relay-Stream") == (
        b"From: a@shop.example\r\n"
        b"Subject: X-Relay-Stream: not a header\r\n"
        b"\r\n"
        b"X-Relay-Stream: in the body stays\r\n"
    )
    assert strip_header(raw.replace(b"\r\n", b"\n"), "x-relay-stream") == (
        b"From: a@shop.example\nSubject: X-Relay-Stream: not a header\n\nX-Relay-Stream: in the body stays\n"
    )
    without = b"From: a@shop.example\r\n\r\nbody\r\n"
    assert strip_header(without, "X-Relay-Stream") is without


def test_headers_only_message_without_final_line_end() -> None:
    raw = b"From: a@shop.example\r\nSubject: x"
    out = personalize(raw, headers=[("List-Id", "<t.a.example>")], placeholder=PLACEHOLDER, url=URL)
    assert out == b"From: a@shop.example\r\nSubject: x\r\nList-Id: <t.a.example>\r\n"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_pieces = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: text/html; charset=utf-16\r\n",
        b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"--b\r\n", b"--b--\r\n", b"\r\n", b"\n", b"=\r\n", b"=ZZ", b"QUJD", b"\xff\xfe", b" folded\r\n",
        b"{{unsubscribe_url}}", b"List-Id: x\r\n", b"text ", b":", b"\t",
    ]
)


@settings(max_examples=300)
@given(raw=st.lists(_pieces, max_size=30).map(b"".join) | st.binary(max_size=300))
def test_malformed_input_never_raises(raw: bytes) -> None:
    out = personalize(raw, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    assert out.count(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click") == 1


@settings(max_examples=300)
@given(raw=st.lists(_pieces, max_size=30).map(b"".join) | st.binary(max_size=300))
def test_nothing_to_do_means_identical_bytes(raw: bytes) -> None:
    raw = raw.replace(PLACEHOLDER.encode(), b"").replace(b"List-Id", b"X-Id")
    assert personalize(raw, headers=[], placeholder=PLACEHOLDER, url=URL) == raw


def test_reencoded_quoted_printable_never_writes_a_delimiter_line() -> None:
    # "=2D-b" is text, not a delimiter; written back as "--b" it would end the part and start one
    # the rules never read. Lines starting with "-" are written "=2D…", still at most 76 long.
    body = b"Afmelden: " + PLACEHOLDER.encode() + b"\r\n=2D-b\r\nContent-Type: text/html\r\n\r\n<a href=3D\"https://evil.example\">x</a>\r\n=2D" + b"-" * 80
    raw = (
        b"From: a@shop.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + body + b"\r\n--b--\r\n"
    )
    out = personalize(raw, headers=[], placeholder=PLACEHOLDER, url=URL)
    qp = out.split(b"quoted-printable\r\n\r\n", 1)[1].split(b"\r\n--b--", 1)[0]
    assert quopri.decodestring(qp) == quopri.decodestring(body).replace(PLACEHOLDER.encode(), URL.encode())
    assert not any(line.startswith(b"-") for line in qp.split(b"\r\n"))
    assert all(len(line) <= 76 for line in qp.split(b"\r\n"))
    assert [p.get_content_type() for p in parse(out).walk()] == ["multipart/mixed", "text/plain"]


# Bytes that make quoted-printable interesting: blanks before a line end or the end, a lone dot,
# "=", 8-bit, CR and LF in every combination, and lines long enough for soft line breaks.
_qp_bits = st.sampled_from(
    [b" ", b"\t", b".", b"=", b"-", b"\xc3\xa9", b"\r\n", b"\n", b"\r", b"a", b"x" * 40, b"y" * 73, b"\x00", b"\x7f"]
)


@settings(max_examples=500, deadline=None)
@given(
    pieces=st.lists(st.lists(_qp_bits, max_size=12).map(b"".join), min_size=2, max_size=5),
    url=st.sampled_from([URL, URL_HTML, "https://r.example/u/" + "A" * 90, " ", "."]),
)
def test_quoted_printable_copies_encode_only_the_url_lines_and_match_one_pass(pieces: list[bytes], url: str) -> None:
    """A copy's quoted-printable part is the line-by-line encoding made once per message plus the
    lines the URL is on: byte for byte what encoding the whole part per copy gives."""
    import binascii

    from relay.delivery.personalize import _Slot, _qp_lines

    whole = binascii.b2a_qp(url.encode().join(pieces).replace(b"\r\n", b"\n"), istext=True)
    lines = _qp_lines(tuple(pieces))
    slot = _Slot(0, 0, False, tuple(pieces), "utf-8", "quoted-printable", b"\n", 76, False, b"", (), lines)
    assert slot._encode(url) == whole
    if not any(b"\r" in piece.replace(b"\r\n", b"\n") for piece in pieces):
        assert lines is not None  # the common case takes the line-by-line path


# What CopyMaker does per message and per copy (issue 20): one reading of the header block instead of
# with_relay_id's and prepare's, the body's parse kept for the next message with the same body, the
# copy's fields handed to the signer instead of read again. Each must equal the two-step path.
from hypothesis import HealthCheck  # noqa: E402

from relay.delivery.dkim import DkimSigner, SplitMessage, _split  # noqa: E402
from relay.delivery.personalize import CopyTemplates  # noqa: E402
from relay.engine.copies import RELAY_ID_HEADER, with_relay_id  # noqa: E402
from relay.engine.pipeline import STREAM_HEADER  # noqa: E402
from tests.relay.delivery.test_mime_differential import PH, SIGNER, messages  # noqa: E402

# The header blocks that a shortcut could read otherwise: a first line that continues nothing, no
# header at all, no body (and no line end after the last field), only fields the copy drops, a
# dropped field first in another line ending than the rest.
_HEAD_EDGES = st.sampled_from([
    lambda raw: raw,
    lambda raw: b" folded first line\r\n" + raw,
    lambda raw: b"\r\n" + raw,
    lambda raw: b"\n" + raw,
    lambda raw: re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0],
    lambda raw: re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0] + b"\r\n",
    lambda raw: b"X-Relay-Id: forged\n" + raw,
    lambda raw: b"X-Relay-Stream: news\r\nList-Id: app\r\n\r\n" + raw,
    lambda raw: b"Content-Type: text/plain\r\nX-Relay-Stream: news\r\n\r\nAfmelden: " + PH.encode() + b" \r\n",
    lambda raw: raw.replace(b"Subject: Weekly", b"Subject: Weekly,\r\n\tfolded", 1),
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=messages(), edge=_HEAD_EDGES)
def test_a_template_read_once_makes_the_copy_and_the_fields_of_the_two_step_path(case: tuple[bytes, object], edge) -> None:  # type: ignore[no-untyped-def]
    raw = edge(case[0])
    expected = prepare(with_relay_id(raw, "relay-1", STREAM_HEADER), placeholder=PH).render(headers=LIST_HEADERS, url=URL)
    templates = CopyTemplates()
    fresh = DkimSigner(SIGNER.keys)  # nothing kept from another message
    for message in (raw, raw.replace(b"Subject: Weekly", b"Subject: Weekly too", 1), raw):  # the body kept, then reused
        template = templates.prepare(message, placeholder=PH, first=(RELAY_ID_HEADER, "relay-1"), drop=(RELAY_ID_HEADER, STREAM_HEADER))
        copy = template.render_split(headers=LIST_HEADERS, url=URL)
        assert copy.message == prepare(with_relay_id(message, "relay-1", STREAM_HEADER), placeholder=PH).render(
            headers=LIST_HEADERS, url=URL
        )
        assert template.render(headers=LIST_HEADERS, url=URL) == copy.message
        if copy.fields is None:
            continue
        fields, body_start, eol = _split(copy.message)
        assert (copy.body_start, copy.eol) == (body_start, eol)
        assert copy.body_parts is not None and b"".join(copy.body_parts) == copy.message[body_start:]
        assert [name for name, _ in copy.fields] == [f.name for f in fields]
        if not raw.startswith((b" ", b"\t")):  # else the read joins that line to X-Relay-Id (never signed)
            assert copy.fields == [(f.name, f.raw) for f in fields]
        ours, theirs = SIGNER.prepare_all([SplitMessage(*copy)], now=1_700_000_000)[0], fresh.prepare(copy.message, now=1_700_000_000)
        assert (ours is None) == (theirs is None)
        if ours is not None and theirs is not None:
            assert (ours.unsigned, ours.digests, ours.eol) == (theirs.unsigned, theirs.digests, theirs.eol)
    assert copy.message == expected


def test_a_campaigns_body_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import relay.delivery.personalize as personalize_module

    expected = personalize(MIXED.replace(b"To: bob@", b"To: bob3@"), headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
    calls: list[bytes] = []
    original = personalize_module._parse_body
    monkeypatch.setattr(personalize_module, "_parse_body", lambda raw, *args: calls.append(raw) or original(raw, *args))
    templates = CopyTemplates()
    copies = [
        templates.prepare(MIXED.replace(b"To: bob@", b"To: bob%d@" % i), placeholder=PLACEHOLDER).render(headers=LIST_HEADERS, url=URL)
        for i in range(5)
    ]
    assert len(calls) == 1
    assert copies[3] == expected
    templates.prepare(MIXED.replace(b'boundary="outer"', b'boundary="outer"; x=1'), placeholder=PLACEHOLDER)  # other MIME fields
    templates.prepare(MIXED, placeholder="{{other}}")
    assert len(calls) == 3


def test_a_template_keeps_few_bodies_and_not_a_large_one() -> None:
    templates = CopyTemplates()
    for i in range(CopyTemplates.MAX_ENTRIES + 5):
        templates.prepare(MIXED + b"%d\r\n" % i, placeholder=PLACEHOLDER)
    assert len(templates._bodies) == CopyTemplates.MAX_ENTRIES
    templates.prepare(MIXED + b"x" * CopyTemplates.MAX_BODY, placeholder=PLACEHOLDER)
    assert len(templates._bodies) == CopyTemplates.MAX_ENTRIES
    assert not any(len(key[-1]) > CopyTemplates.MAX_BODY for key in templates._bodies)


def test_a_copys_body_comes_to_the_signer_in_pieces_it_canonicalised_before() -> None:
    """Issue 20: a quoted-printable part's lines without the URL are one run, the same object in
    every copy: the signer canonicalises them once for the campaign, and per copy only the URL's
    lines (bench/message.eml: two parts, the URL in each)."""
    from pathlib import Path

    from relay.delivery.dkim import _relaxed_body, _Shared

    raw = (Path(__file__).parents[3] / "bench" / "message.eml").read_bytes().replace(b"\n", b"\r\n")
    template = CopyTemplates().prepare(raw, placeholder="{{unsubscribe_url}}", first=(RELAY_ID_HEADER, "relay-1"))
    shared = _Shared()
    first, second = (template.render_split(headers=LIST_HEADERS, url=f"{URL}{n}") for n in (1, 2))
    assert first.body_parts is not None and second.body_parts is not None
    assert len(first.body_parts) < 20 < raw.count(b"\n")
    assert sum(a is b for a, b in zip(first.body_parts, second.body_parts)) >= len(first.body_parts) // 2
    for copy in (first, second):
        assert copy.body_parts is not None
        assert shared.relaxed_parts(copy.body_parts) == _relaxed_body(copy.message[copy.body_start :])
    kept = [part for part in second.body_parts if part in shared.body_parts]
    assert sum(map(len, kept)) > len(raw) // 2
