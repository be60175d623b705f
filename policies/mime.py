"""The one reading of MIME structure that the rules, the per-recipient rewriter and the report parsers
share: where a header block ends, its fields, their parameters, multipart boundaries, nesting limits,
transfer decoding and charsets.

Works on byte offsets into the message (nothing is copied until a part is decoded), accepts CRLF, bare
LF and any mix of them, and never raises on garbage: what cannot be read is less structure, not an
error. A checker and a rewriter that read one message two ways is the classic filter bypass; here
there is one way.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple
from urllib.parse import unquote_to_bytes

from policies._passes import passes as _speedups

__all__ = [
    "ATTACHMENT",
    "HTML",
    "MAX_MIME_DEPTH",
    "MAX_PARTS",
    "MESSAGE",
    "OTHER_TEXT",
    "PLAIN",
    "Field",
    "Head",
    "Part",
    "PartHead",
    "as_text",
    "decode_text",
    "decode_with",
    "eol_of",
    "field_value",
    "mime_fields",
    "param",
    "parse_params",
    "part_head",
    "read_head",
    "split_head",
    "split_multipart",
    "text_charset",
    "transfer_decode",
    "walk",
]

# Bounds that keep a hostile message cheap: MIME nesting and the number of parts (containers too).
MAX_MIME_DEPTH = 12
MAX_PARTS = 1000

# What a leaf part is to a reader: body text (plain or HTML), text not shown as body (text/calendar,
# text/css…), an attached message (message/rfc822), or an attachment.
PLAIN = "plain"
HTML = "html"
OTHER_TEXT = "other_text"
MESSAGE = "message"
ATTACHMENT = "attachment"

# One field: its first line (a name of RFC 5322 ftext, printable ASCII but ':', then ':'; or no name)
# and every continuation line (starting with a space or tab), line ends included. One C pass a block.
_FIELD = re.compile(rb"(?:([!-9;-~]+)[ \t]*:)?[^\n]*(?:\n[ \t][^\n]*)*\n?")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_PARAM = re.compile(r";\s*([^\s;=]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"?|[^;]*)")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.I)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_WHITESPACE = re.compile(rb"\s+")


# --- the header block -------------------------------------------------------------------------


def split_head(buf: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(end of the header block, start of the body) in buf[start:end]: the block ends at the first
    empty line, whether written CRLF or LF (or CR LF LF, LF CR LF); a block may be empty (the entity
    starts with its empty line), and without an empty line everything is header."""
    if end is None:
        end = len(buf)
    if buf.startswith(b"\r\n", start, end):
        return start, start + 2
    if buf.startswith(b"\n", start, end):
        return start, start + 1
    # bytes.find, not a regex: sre scanning a whole message costs more than the rest of the parse.
    crlf_blank = buf.find(b"\n\r\n", start, end)
    # Bound the second search: scanning a CRLF body for "\n\n" would cost more than the rest.
    lf_blank = buf.find(b"\n\n", start, crlf_blank + 2 if crlf_blank >= 0 else end)
    if crlf_blank < 0 and lf_blank < 0:
        return end, end
    blank = lf_blank if crlf_blank < 0 or 0 <= lf_blank < crlf_blank else crlf_blank
    block_end = blank + 1
    return block_end, block_end + (2 if buf[block_end] == 0x0D else 1)


class Field(NamedTuple):
    name: str  # lower-case; "" for a line that is not a header field
    start: int
    end: int  # after the field's last line end


@dataclass(frozen=True, slots=True)
class Head:
    """One entity's header block: its fields in order and where the body starts."""

    fields: tuple[Field, ...]
    end: int  # end of the header block (start of the empty line)
    body_start: int

    def value(self, buf: bytes, name: str) -> str | None:
        """The first field called `name` (lower-case), unfolded; bytes as Latin-1 (lossless)."""
        for field in self.fields:
            if field.name == name:
                return field_value(buf, field)
        return None

    def values(self, buf: bytes) -> Iterator[tuple[bytes, str]]:
        """(name as written, unfolded value) of every field, in order."""
        for field in self.fields:
            if field.name:
                raw = buf[field.start : field.end]
                name, _, value = raw.partition(b":")
                yield name.rstrip(b" \t"), _FOLD.sub("", value.decode("latin-1")).strip()


_new_field = functools.partial(tuple.__new__, Field)  # Field(…) without NamedTuple's Python-level __new__


def field_value(buf: bytes, field: Field) -> str:
    value = buf[buf.find(b":", field.start, field.end) + 1 : field.end].decode("latin-1").strip()
    return _FOLD.sub("", value) if "\n" in value else value


def read_head(buf: bytes, start: int = 0, end: int | None = None) -> Head:
    """The header fields of the entity at buf[start:end]. A line that starts with a space or tab
    continues the field before it; any other line without a field name is kept as a nameless field
    (so a rewriter keeps its bytes) and read by nobody."""
    if end is None:
        end = len(buf)
    block_end, body_start = split_head(buf, start, end)
    fields = [
        _new_field((name.lower().decode("ascii") if name else "", match.start(), match.end()))
        for match in _FIELD.finditer(buf, start, block_end)
        for name in (match.group(1),)
        if match.end() > match.start()
    ]
    return Head(tuple(fields), block_end, body_start)


def eol_of(buf: bytes) -> bytes:
    """The line ending of the message, by its first line."""
    lf = buf.find(b"\n")
    return b"\r\n" if lf > 0 and buf[lf - 1] == 0x0D else b"\n"


# --- parameters ---------------------------------------------------------------------------------


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """`type/subtype; key=value; …` → lower-case type and the parameters (first of a name wins)."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    if not rest:
        return main.strip().lower(), params
    for key, val in _PARAM.findall(";" + rest):
        val = val.strip()
        if val.startswith('"'):
            val = val[1:-1] if val.endswith('"') and len(val) > 1 else val[1:]
            val = val.replace('\\"', '"').replace("\\\\", "\\")
        params.setdefault(key.lower(), val)
    return main.strip().lower(), params


def param(params: dict[str, str], key: str) -> str | None:
    """A parameter by name, RFC 2231 forms included (key*=utf-8''…, key*0=, key*1*=); as Latin-1."""
    if key in params:
        return params[key]
    prefix = key + "*"
    pieces = [k for k in params if k.startswith(prefix)]
    if not pieces:
        return None
    pieces.sort(key=lambda k: int(re.sub(r"\D", "", k) or 0))
    try:
        value = "".join(params[k] for k in pieces)
        if not any(k.endswith("*") for k in pieces):
            return value
        charset, _, rest = value.partition("'")
        _, _, text = rest.partition("'")
        if not rest:
            text = value
        data = unquote_to_bytes(text.encode("latin-1"))
        if charset and charset.lower() not in ("utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1"):
            data = decode_text(data, charset).encode("utf-8")
        return data.decode("latin-1")
    except Exception:  # a broken RFC 2231 value: its raw characters are still a value
        return "".join(params.get(k, "") for k in pieces)


def as_text(value: str) -> str:
    """A Latin-1 header string (raw bytes) read as UTF-8 where it is, for names shown to people."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return value


@dataclass(frozen=True, slots=True)
class PartHead:
    """The MIME fields of one entity, parsed."""

    content_type: str  # "" when missing or not type/subtype
    params: dict[str, str]
    encoding: str  # Content-Transfer-Encoding, lower-case
    disposition: str
    disposition_params: dict[str, str]

    @property
    def boundary(self) -> bytes:
        value = param(self.params, "boundary") or ""
        return value[:200].encode("latin-1", "replace")

    @property
    def filename(self) -> str:
        """The declared file name, else "" (filename or name; RFC 2231 and RFC 2047 forms)."""
        for params in (self.disposition_params, self.params):
            if not params:  # param() finds nothing in no parameters; every leaf asks
                continue
            for key in ("filename", "name"):
                value = param(params, key)
                if value is not None:
                    return _decoded_words(as_text(value))
        return ""


_NO_HEAD = PartHead("", {}, "", "", {})


# The fields read_head finds, but only the three MIME ones and in one C pass: a line that starts with
# the name is a field's first line (continuation lines start with a space or tab), and the value runs
# over the continuation lines. The rules read every part's head, so this is the hot path.
_MIME_FIELD = re.compile(rb"^content-(type|transfer-encoding|disposition)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.I | re.M)


def mime_fields(buf: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """The MIME fields of the header block buf[start:end] as part_head reads them (name suffix and
    raw value, in order): all part_head takes from a header block."""
    return _MIME_FIELD.findall(buf, start, end)


def part_head(buf: bytes, start: int, end: int) -> PartHead:
    """The MIME fields of the header block buf[start:end] (start at a line start); the first of
    each counts, for every reader here."""
    found: dict[bytes, str] = {}
    for name, value in _MIME_FIELD.findall(buf, start, end):
        name = name.lower()
        if name not in found:
            text = value.decode("latin-1").strip()
            found[name] = _FOLD.sub("", text) if "\n" in text else text
    if not found:
        return _NO_HEAD
    ctype = found.get(b"type")
    disposition = found.get(b"disposition")
    main, params = parse_params(ctype) if ctype else ("", {})
    disp, dparams = parse_params(disposition) if disposition else ("", {})
    encoding = found.get(b"transfer-encoding", "").strip().lower()
    return PartHead(main if "/" in main else "", params, encoding, disp, dparams)


def _decoded_words(value: str) -> str:
    if "=?" not in value:
        return value
    import email.header

    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # malformed encoded-words or unknown charsets: keep the raw text
        return value


# --- multipart ----------------------------------------------------------------------------------


def split_multipart(buf: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of the body parts of buf[start:end] between `--boundary` lines (RFC 2046 §5.1.1);
    preamble and epilogue dropped. A delimiter starts a line and is followed by white space only; a
    close delimiter by "--" and anything. The line end before a delimiter belongs to the delimiter.
    Without a close delimiter the last part runs to the end.

    bytes.find over the buffer: no copy of a 20 MB body, and far faster than a regex.
    """
    delimiter = b"--" + boundary
    parts: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while len(parts) < MAX_PARTS:
        at = buf.find(delimiter, pos, end)
        if at < 0:
            break
        after = at + len(delimiter)
        pos = after
        if at != start and buf[at - 1] != 0x0A:
            continue  # not at the start of a line
        closing = buf.startswith(b"--", after, end)
        line_end = buf.find(b"\n", after, end)
        line_end = end if line_end < 0 else line_end
        if not closing and buf[after:line_end].strip():
            continue  # a longer boundary that merely starts with ours, or text
        if part_start >= 0:
            part_end = at - 1 if at > part_start else at
            if part_end > part_start and buf[part_end - 1] == 0x0D:
                part_end -= 1
            parts.append((part_start, max(part_start, part_end)))
        if closing:
            return parts
        part_start = min(line_end + 1, end)
        pos = part_start
    if part_start >= 0 and len(parts) < MAX_PARTS:
        parts.append((part_start, end))
    return parts


# --- decoding -----------------------------------------------------------------------------------


def transfer_decode(data: memoryview | bytes, encoding: str, *, strict: bool = False) -> bytes:
    """The part's bytes: base64 and quoted-printable decoded, anything else as it is. Lenient by
    default (broken base64 keeps what decodes); strict raises ValueError on invalid base64."""
    if encoding == "base64":
        if strict:
            try:
                return binascii.a2b_base64(_WHITESPACE.sub(b"", bytes(data)), strict_mode=True)
            except binascii.Error as exc:
                raise ValueError("invalid base64") from exc
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            cleaned = _NOT_BASE64.sub(b"", bytes(data))
            try:
                return binascii.a2b_base64(cleaned[: len(cleaned) - len(cleaned) % 4])
            except binascii.Error:
                return bytes(data)
    if encoding == "quoted-printable":
        try:
            return _speedups.qp_decode(data)  # binascii.a2b_qp's bytes
        except (binascii.Error, ValueError):
            return bytes(data)
    return bytes(data)


_MISLABELLED = frozenset(("us-ascii", "ascii", "7bit", "unknown-8bit", "x-unknown"))


def text_charset(declared: str | None, data: bytes, html: bool) -> str | None:
    """The codec a text part is read in: the declared charset if Python knows it as a text codec
    (ASCII labels excepted: mislabelled 8-bit text is common), an HTML part's <meta> charset when it
    declares none; None means UTF-8, else Windows-1252."""
    if not declared and html:
        meta = _META_CHARSET.search(data[:4096])
        declared = meta.group(1).decode("ascii", "replace") if meta else None
    if not declared:
        return None
    name = declared.strip().strip("\"'").lower()
    if not name or name in _MISLABELLED:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    return info.name if info._is_text_encoding else None  # type: ignore[attr-defined]


def decode_text(data: bytes, charset: str | None) -> str:
    """Text in `charset` (a label, read as text_charset reads it); else UTF-8, else Windows-1252."""
    return decode_with(data, text_charset(charset, b"", False) if charset else None)


def decode_with(data: bytes, codec: str | None) -> str:
    """Text in `codec` (from text_charset); None: UTF-8, else Windows-1252. Never raises."""
    if codec:
        return data.decode(codec, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# --- the walk -----------------------------------------------------------------------------------


class Part(NamedTuple):
    """A leaf entity: its MIME fields and the byte range of its (still encoded) body in `buf`."""

    head: PartHead
    content_type: str  # as read: the default applied
    kind: str  # PLAIN, HTML, OTHER_TEXT, MESSAGE or ATTACHMENT
    buf: bytes  # the message, or the decoded attached message the part is in
    start: int
    end: int
    depth: int
    delimiters: tuple[bytes, ...]  # the "--boundary" lines around it, innermost last
    attached: bool  # inside an attached message (message/rfc822): not the message's own bytes
    inner: bytes | None = None  # MESSAGE walked into: the attached message, decoded

    @property
    def body(self) -> memoryview:
        return memoryview(self.buf)[self.start : self.end]

    def decoded(self) -> bytes:
        return transfer_decode(self.body, self.head.encoding)

    def charset(self, data: bytes) -> str | None:
        """The codec of a text part (see text_charset), given its decoded bytes."""
        return text_charset(self.head.params.get("charset"), data, self.kind == HTML)

    def text(self, data: bytes | None = None) -> str:
        data = self.decoded() if data is None else data
        return decode_with(data, self.charset(data))


_new_part = functools.partial(tuple.__new__, Part)  # Part(…) without NamedTuple's Python-level __new__


def walk(raw: bytes, *, into_messages: bool = True) -> Iterator[Part]:
    """Every leaf of the message in order (multiparts opened; attached messages opened too unless
    `into_messages` is false), at most MAX_PARTS entities and MAX_MIME_DEPTH levels deep."""
    block_end, body_start = split_head(raw)
    yield from _walk(part_head(raw, 0, block_end), raw, body_start, len(raw), 0, "text/plain", (), False, into_messages, [0])


def _walk(
    head: PartHead,
    buf: bytes,
    start: int,
    end: int,
    depth: int,
    default_type: str,
    delimiters: tuple[bytes, ...],
    attached: bool,
    into_messages: bool,
    count: list[int],
) -> Iterator[Part]:
    count[0] += 1
    if count[0] > MAX_PARTS:
        return
    ctype = head.content_type or default_type
    main = ctype.partition("/")[0]
    if main == "multipart" and depth < MAX_MIME_DEPTH:
        boundary = head.boundary
        if boundary:
            child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            inside = (*delimiters, b"--" + boundary)
            for part_start, part_end in split_multipart(buf, start, end, boundary):
                block_end, body_start = split_head(buf, part_start, part_end)
                yield from _walk(
                    part_head(buf, part_start, block_end), buf, body_start, part_end, depth + 1,
                    child_default, inside, attached, into_messages, count,
                )
            return
    if ctype == "message/rfc822" and depth < MAX_MIME_DEPTH:
        if not into_messages:
            yield Part(head, ctype, MESSAGE, buf, start, end, depth, delimiters, attached)
            return
        inner = transfer_decode(memoryview(buf)[start:end], head.encoding)
        yield Part(head, ctype, MESSAGE, buf, start, end, depth, delimiters, attached, inner)
        block_end, body_start = split_head(inner)
        yield from _walk(
            part_head(inner, 0, block_end), inner, body_start, len(inner), depth + 1,
            "text/plain", (), True, into_messages, count,
        )
        return
    disposition = head.disposition
    inline = disposition != "attachment" and not head.filename
    if (main in ("text", "multipart") and inline) or (ctype in ("text/plain", "text/html") and disposition == "inline"):
        if ctype == "text/html":
            kind = HTML
        elif ctype in ("text/plain", "text/enriched") or main == "multipart":
            kind = PLAIN
        else:
            kind = OTHER_TEXT
    else:
        kind = ATTACHMENT
    yield _new_part((head, ctype, kind, buf, start, end, depth, delimiters, attached, None))
