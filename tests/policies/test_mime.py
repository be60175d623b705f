"""policies/mime.py: the one header/body split and field reading, for CRLF, bare LF and their mixes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import mime

_LINES = st.sampled_from(
    [b"Content-Type: text/html", b"content-type : multipart/mixed; boundary=b", b"Content-Transfer-Encoding: base64",
     b"Content-Disposition: attachment", b" folded; charset=utf-8", b"\tx", b"X-A: 1", b"not a field", b"Bad Name: v",
     b"", b"\r", b"Content-Type:text/plain"]
)
_EOLS = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def blocks(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_LINES, max_size=10))
    return b"".join(line + draw(_EOLS) for line in lines) + draw(st.sampled_from([b"", b"body\r\n", b"\n\nbody"]))


@settings(max_examples=400)
@given(blocks())
def test_the_mime_fields_are_the_fields_read_head_finds(raw: bytes) -> None:
    # part_head reads the three MIME fields in one regex pass (the rules' hot path); read_head lists
    # every field (the rewriter, DKIM, the report parsers). Both must see the same fields.
    head = mime.read_head(raw)
    found: dict[str, str] = {}
    for field in head.fields:
        if field.name.startswith("content-"):
            found.setdefault(field.name, mime.field_value(raw, field))
    ctype, params = mime.parse_params(found.get("content-type", ""))
    disposition, dparams = mime.parse_params(found.get("content-disposition", ""))
    expected = mime.PartHead(
        ctype if "/" in ctype else "", params, found.get("content-transfer-encoding", "").strip().lower(), disposition, dparams
    )
    assert mime.part_head(raw, 0, head.end) == expected
    assert (head.end, head.body_start) == mime.split_head(raw)


def test_the_empty_line_ends_the_head_in_any_line_ending() -> None:
    for raw, body in [
        (b"A: 1\r\nB: 2\r\n\r\nbody", b"body"),
        (b"A: 1\nB: 2\n\nbody", b"body"),
        (b"A: 1\r\nB: 2\n\nbody", b"body"),
        (b"A: 1\nB: 2\n\r\nbody", b"body"),
        (b"A: 1\r\n\nbody\r\n\r\nmore", b"body\r\n\r\nmore"),
        (b"\r\nbody", b"body"),
        (b"\nbody", b"body"),
        (b"A: 1\r\nB: 2", b""),
    ]:
        end, start = mime.split_head(raw)
        assert raw[start:] == body, raw
        assert raw[end:start] in (b"", b"\r\n", b"\n")


def test_a_continued_field_and_a_line_that_is_no_field() -> None:
    raw = b"Subject: a\r\n b\r\nnot a field\r\n\tcontinued\r\nContent-Type: text/html;\n charset=utf-8\n\nbody"
    head = mime.read_head(raw)
    assert [f.name for f in head.fields] == ["subject", "", "content-type"]
    assert head.value(raw, "subject") == "a b"
    assert mime.part_head(raw, 0, head.end).params == {"charset": "utf-8"}
    assert b"".join(raw[f.start : f.end] for f in head.fields) == raw[: head.end]
