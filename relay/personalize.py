"""Per-recipient copies: list headers swapped and the unsubscribe placeholder filled in.

Works on byte ranges of the original message, so every byte outside the replaced
headers and the text parts that contain the placeholder stays exactly as it was.
`prepare()` parses once per message; `CopyTemplate.render()` is the cheap per-copy step.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value

__all__ = ["LIST_HEADERS", "CopyTemplate", "personalize", "prepare", "strip_header"]

# An application's own copies of these are dropped; the relay sets exactly one each.
LIST_HEADERS: frozenset[str] = frozenset(
    {"list-unsubscribe", "list-unsubscribe-post", "list-id", "x-csa-complaints"}
)

_LINE_WIDTH = 78
_MAX_DEPTH = 32  # nesting beyond this is abuse, not mail; leave it alone
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_BASE64_WHITESPACE = re.compile(rb"[\r\n \t]")
# Charsets in which ASCII bytes only ever mean ASCII characters: a byte search for the
# placeholder cannot match inside a multi-byte character, so no decoding is needed.
_ASCII_SAFE = ("ascii", "utf-8", "iso8859", "latin", "cp125", "koi8", "euc", "mac-", "tis-620", "cp874")


@dataclass(frozen=True)
class _Field:
    name: str  # lower-case; "" for a line that is not a header field
    start: int
    end: int  # after the field's last line end


@dataclass(frozen=True)
class _Headers:
    fields: tuple[_Field, ...]
    end: int  # end of the header block (start of the blank line)
    body_start: int  # after the blank line

    def value(self, raw: bytes, name: str) -> str | None:
        for field in self.fields:
            if field.name == name:
                text = raw[field.start : field.end].split(b":", 1)[1]
                return re.sub(rb"\r?\n", b"", text).decode("latin-1").strip()
        return None


@dataclass(frozen=True)
class _Slot:
    """A text part holding the placeholder, split around it, and how to re-encode it."""

    start: int
    end: int
    html: bool
    pieces: tuple[bytes, ...] | tuple[str, ...]  # str when the charset needs decoding
    charset: str
    transfer_encoding: str  # "base64", "quoted-printable" or "" (as is)
    eol: bytes
    line_length: int  # of the original base64 lines
    trailing_eol: bool

    def render(self, url: str) -> bytes:
        value = html.escape(url, quote=True) if self.html else url
        if self.pieces and isinstance(self.pieces[0], str):
            data = value.join(self.pieces).encode(self.charset)  # type: ignore[arg-type]
        else:
            data = value.encode(self.charset, "strict").join(self.pieces)  # type: ignore[arg-type]
        if self.transfer_encoding == "base64":
            encoded = base64.b64encode(data)
            n = self.line_length
            body = self.eol.join(encoded[i : i + n] for i in range(0, len(encoded), n))
            return body + self.eol if self.trailing_eol else body
        if self.transfer_encoding == "quoted-printable":
            lf = data.replace(b"\r\n", b"\n")
            return binascii.b2a_qp(lf, istext=True).replace(b"\n", self.eol)
        return data


@dataclass(frozen=True)
class CopyTemplate:
    """A message parsed once; `render` makes each recipient's copy."""

    head: bytes  # header fields without the list headers
    needs_eol: bool  # the header block did not end with a line end
    eol: bytes
    raw: bytes
    rest_start: int  # the blank line and body follow from here
    slots: tuple[_Slot, ...]

    def render(self, *, headers: Sequence[tuple[str, str]], url: str) -> bytes:
        out = [self.head]
        if self.needs_eol and headers:
            out.append(self.eol)
        out.extend(_format_header(name, value, self.eol) for name, value in headers)
        pos = self.rest_start
        for slot in self.slots:
            out.append(self.raw[pos : slot.start])
            out.append(slot.render(url))
            pos = slot.end
        out.append(self.raw[pos:])
        return b"".join(out)


def personalize(
    raw: bytes, *, headers: Sequence[tuple[str, str]], placeholder: str, url: str
) -> bytes:
    """One recipient's copy: list headers replaced by `headers`, placeholder → url."""
    return prepare(raw, placeholder=placeholder).render(headers=headers, url=url)


def prepare(raw: bytes, *, placeholder: str) -> CopyTemplate:
    eol = _eol_of(raw)
    top = _parse_headers(raw, 0, len(raw))
    head = b"".join(raw[f.start : f.end] for f in top.fields if f.name not in LIST_HEADERS)
    slots: list[_Slot] = []
    if placeholder:
        _walk(raw, top, len(raw), "text/plain", placeholder, eol, slots, 0)
    return CopyTemplate(
        head=head,
        needs_eol=bool(head) and not head.endswith(b"\n"),
        eol=eol,
        raw=raw,
        rest_start=top.end,
        slots=tuple(slots),
    )


def strip_header(raw: bytes, name: str, *more: str) -> bytes:
    """`raw` without any top-level header field called `name` (or one of `more`), case-insensitively."""
    wanted = {n.lower() for n in (name, *more)}
    top = _parse_headers(raw, 0, len(raw))
    if not any(f.name in wanted for f in top.fields):
        return raw
    kept = [raw[f.start : f.end] for f in top.fields if f.name not in wanted]
    return b"".join(kept) + raw[top.end :]


def prepend_header(raw: bytes, name: str, value: str) -> bytes:
    """`raw` with the field `name: value` first, in the message's own line ending."""
    return f"{name}: {value}".encode("ascii") + _eol_of(raw) + raw


def _eol_of(raw: bytes) -> bytes:
    lf = raw.find(b"\n")
    return b"\r\n" if lf > 0 and raw[lf - 1] == 0x0D else b"\n"


def _parse_headers(raw: bytes, start: int, end: int) -> _Headers:
    # The blank line ends the header block; a block may also start with it (no fields).
    if raw.startswith(b"\r\n", start, end) or raw.startswith(b"\n", start, end):
        return _Headers((), start, start + (2 if raw[start] == 0x0D else 1))
    crlf_blank = raw.find(b"\n\r\n", start, end)
    # Bound the second search: scanning a CRLF body for "\n\n" costs more than the rest.
    lf_blank = raw.find(b"\n\n", start, crlf_blank + 2 if crlf_blank >= 0 else end)
    candidates = [i for i in (crlf_blank, lf_blank) if i >= 0]
    if candidates:
        block_end = min(candidates) + 1
        body_start = block_end + (2 if raw[block_end] == 0x0D else 1)
    else:
        block_end = body_start = end
    fields: list[_Field] = []
    field_start = -1
    name = ""
    pos = start
    while pos < block_end:
        lf = raw.find(b"\n", pos, block_end)
        line_end = block_end if lf < 0 else lf + 1
        first = raw[pos]
        if not (first in (0x20, 0x09) and field_start >= 0):  # not a continuation line
            if field_start >= 0:
                fields.append(_Field(name, field_start, pos))
            colon = raw.find(b":", pos, line_end)
            name = raw[pos:colon].rstrip(b" \t").decode("latin-1").lower() if colon > pos else ""
            field_start = pos
        pos = line_end
    if field_start >= 0:
        fields.append(_Field(name, field_start, block_end))
    return _Headers(tuple(fields), block_end, body_start)


def _content(headers: _Headers, raw: bytes, default_type: str) -> Message:
    # The email package parses parameters (quoting, RFC 2231); only the header is given.
    msg = Message()
    ctype = headers.value(raw, "content-type")
    if ctype is not None:
        msg["Content-Type"] = ctype
    else:
        msg.set_default_type(default_type)
    return msg


def _walk(
    raw: bytes,
    headers: _Headers,
    body_end: int,
    default_type: str,
    placeholder: str,
    eol: bytes,
    slots: list[_Slot],
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        return
    msg = _content(headers, raw, default_type)
    ctype = msg.get_content_type()
    if msg.get_content_maintype() == "multipart":
        param = msg.get_param("boundary")
        boundary = collapse_rfc2231_value(param) if isinstance(param, tuple) else param
        if not isinstance(boundary, str) or not boundary:
            return
        child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        for part_start, part_end in _split_multipart(raw, headers.body_start, body_end, boundary):
            part = _parse_headers(raw, part_start, part_end)
            _walk(raw, part, part_end, child_default, placeholder, eol, slots, depth + 1)
        return
    if ctype not in ("text/plain", "text/html"):
        return  # attachments, images, forwarded messages: byte-for-byte
    disposition = (headers.value(raw, "content-disposition") or "").split(";", 1)[0]
    if disposition.strip().lower() == "attachment":
        return
    charset = msg.get_content_charset() or "us-ascii"
    cte = (headers.value(raw, "content-transfer-encoding") or "").lower().strip()
    slot = _text_slot(
        raw, headers.body_start, body_end, ctype == "text/html", charset, cte, placeholder, eol
    )
    if slot is not None:
        slots.append(slot)


def _split_multipart(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    # bytes.find instead of a regex: this runs for every copy and must stay cheap.
    needle = b"--" + boundary.encode("latin-1")
    parts: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while True:
        i = raw.find(needle, pos, end)
        if i < 0:
            break
        pos = i + len(needle)
        if i != start and raw[i - 1] != 0x0A:
            continue  # not at the start of a line
        closing = raw.startswith(b"--", pos, end)
        after = pos + 2 if closing else pos
        while after < end and raw[after] in (0x20, 0x09):
            after += 1
        if after < end and raw[after] not in (0x0D, 0x0A):
            continue  # "--boundary" followed by more text: another boundary or content
        if after < end and raw[after] == 0x0D and not raw.startswith(b"\r\n", after, end):
            continue
        # The line end before the delimiter belongs to the delimiter, not the part.
        delimiter_start = i
        if i != start:
            delimiter_start = i - 2 if i - 2 >= start and raw[i - 2] == 0x0D else i - 1
        if part_start >= 0:
            # Two delimiter lines in a row share a line end: an empty part.
            parts.append((part_start, max(part_start, delimiter_start)))
        if closing:
            return parts  # the rest is epilogue
        after += 2 if raw.startswith(b"\r\n", after, end) else 1 if after < end else 0
        part_start = after
        pos = after
    if 0 <= part_start < end:
        parts.append((part_start, end))  # no close delimiter: be lenient
    return parts


def _text_slot(
    raw: bytes,
    start: int,
    end: int,
    is_html: bool,
    charset: str,
    cte: str,
    placeholder: str,
    eol: bytes,
) -> _Slot | None:
    body = raw[start:end]
    line_length = 76
    try:
        if cte == "base64":
            lines = body.split(b"\n", 2)
            first_line = lines[0].rstrip(b"\r")
            # Keep the sender's line length when it is visible (a single line is not).
            if len(lines) > 1 and lines[1].strip() and 4 <= len(first_line) <= 76 and len(first_line) % 4 == 0:
                line_length = len(first_line)
            data = binascii.a2b_base64(_BASE64_WHITESPACE.sub(b"", body))
            encoding = "base64"
        elif cte == "quoted-printable":
            data = binascii.a2b_qp(body)
            encoding = "quoted-printable"
        else:
            data = body
            encoding = ""
    except (binascii.Error, ValueError):
        return None  # undecodable: leave the part exactly as it came
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        codec = "ascii"  # unknown charset: assume ASCII-compatible, as most are
    pieces: tuple[bytes, ...] | tuple[str, ...]
    if codec.startswith(_ASCII_SAFE):
        needle = placeholder.encode("utf-8")
        if needle not in data:
            return None
        pieces = tuple(data.split(needle))
    else:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            return None
        if placeholder not in text:
            return None
        pieces = tuple(text.split(placeholder))
    return _Slot(
        start=start,
        end=end,
        html=is_html,
        pieces=pieces,
        charset=codec,
        transfer_encoding=encoding,
        eol=eol,
        line_length=line_length,
        trailing_eol=body.endswith(b"\n"),
    )


def _format_header(name: str, value: str, eol: bytes) -> bytes:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} must not contain line breaks")
    # Fold at spaces so no line passes 78 characters where a space allows it.
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}: {words[0]}"
    for word in words[1:]:
        if len(line) + 1 + len(word) > _LINE_WIDTH and line.strip():
            lines.append(line)
            line = " " + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return eol.join(s.encode("utf-8") for s in lines) + eol
