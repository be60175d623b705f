"""Per-recipient copies: list headers swapped and the unsubscribe placeholder filled in.

Works on byte ranges of the original message, so every byte outside the replaced
headers and the text parts that contain the placeholder stays exactly as it was.
The structure is policies.mime's, the one the rules read: the placeholder is filled in
exactly the body text parts (plain and HTML) the rules saw, never inside an attached
message or an attachment. `prepare()` parses once per message (CopyTemplates: the body once
for the messages that share it); `CopyTemplate.render()` is the cheap per-copy step.
"""

from __future__ import annotations

import base64
import binascii
import functools
import html
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from policies import mime
from relay.delivery.smtp_client import wire_ready

__all__ = ["LIST_HEADERS", "CopyTemplate", "CopyTemplates", "Rendered", "personalize", "prepare", "strip_header"]

# An application's own copies of these are dropped; the relay sets exactly one each.
LIST_HEADERS: frozenset[str] = frozenset(
    {"list-unsubscribe", "list-unsubscribe-post", "list-id", "x-csa-complaints"}
)

_LINE_WIDTH = 78
_HEADER_NAME = re.compile(r"[!-9;-~]+")
# Charsets in which ASCII bytes only ever mean ASCII characters: a byte search for the
# placeholder cannot match inside a multi-byte character, so no decoding is needed.
_ASCII_SAFE = ("ascii", "utf-8", "iso8859", "latin", "cp125", "koi8", "euc", "mac-", "tis-620", "cp874")


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
    original: bytes  # the part's body as it came
    delimiters: tuple[tuple[bytes, int], ...]  # the enclosing "--boundary" lines, each with its count in `original`
    # Quoted-printable only, when the pieces allow it (_qp_lines): the part's lines encoded once,
    # a tuple of raw pieces for each line the URL goes into (joined by it and encoded per copy).
    qp_lines: tuple[bytes | tuple[bytes, ...], ...] | None = None
    # qp_lines with the message's line ends, when no line without the URL holds a delimiter (else
    # _no_leading_dashes must see the whole part): a copy joins them as they are.
    qp_wire: tuple[bytes | tuple[bytes, ...], ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.qp_lines is None or self.transfer_encoding != "quoted-printable":
            return
        fixed = [line for line in self.qp_lines if isinstance(line, bytes)]
        if not any(delimiter in line for line in fixed for delimiter, _ in self.delimiters):
            # The lines between two with the URL joined: a copy joins a few runs, not every line, and
            # each run is one object copy after copy (the DKIM signer canonicalises it once).
            wire: list[bytes | tuple[bytes, ...]] = []
            for line in self.qp_lines:
                if isinstance(line, bytes):
                    line = line.replace(b"\n", self.eol)
                    if wire and isinstance(wire[-1], bytes):
                        line = wire.pop() + line  # type: ignore[operator]
                wire.append(line)
            object.__setattr__(self, "qp_wire", tuple(wire))

    def render_parts(self, url: str, *, wire: bool = False) -> tuple[list[bytes], bool]:
        """The part's body for this URL, in pieces: the part's fixed runs of lines are the same objects
        in every copy (quoted-printable with qp_wire), else one piece. With `wire` (the fixed runs are
        wire_ready: fixed_ready), also whether every piece is smtp_client.wire_ready (False without)."""
        if self.qp_wire is not None:
            encoded = self._encode_parts(url, wire)
            if encoded is not None:
                return encoded
        out = self._render(url)
        if not wire:
            return [out], False
        if self.transfer_encoding == "base64":
            # Base64 lines joined by the line end: nothing but the alphabet, '=' and CRLFs (or LFs).
            return [out], self.eol == b"\r\n"
        return [out], wire_ready(out)

    def fixed_ready(self) -> bool:
        """Whether the runs of qp_wire, the same in every copy, are smtp_client.wire_ready (a part
        rendered whole is checked copy by copy)."""
        return self.qp_wire is None or all(wire_ready(line) for line in self.qp_wire if isinstance(line, bytes))

    def _render(self, url: str) -> bytes:
        out = self._encode(url)
        # A URL next to "--" in unencoded text must not make a line a delimiter of an enclosing
        # multipart: the recipient would see other parts than the rules did. Then the part stays.
        if not self.transfer_encoding:
            for delimiter, count in self.delimiters:
                if out.count(delimiter) != count:
                    return self.original
        return out

    def _encode(self, url: str) -> bytes:
        """The whole part encoded again (render_parts has tried the quicker way, where it applies)."""
        return self._encode_whole(html.escape(url, quote=True) if self.html else url)

    def _encode_parts(self, url: str, wire: bool) -> tuple[list[bytes], bool] | None:
        """What _encode_whole gives, in pieces (qp_wire's runs as they are, the URL's lines encoded):
        a delimiter never spans lines, so only the URL's lines need a look. None when this way does
        not apply (a URL with a line break, a URL's line that makes a delimiter). With `wire` (the
        fixed runs are wire_ready), whether the URL's lines are too; else False."""
        assert self.qp_wire is not None
        value = html.escape(url, quote=True) if self.html else url
        if "\r" in value or "\n" in value:
            return None
        url_bytes = value.encode(self.charset, "strict")
        out = []
        ready = wire and self.eol == b"\r\n"
        for line in self.qp_wire:
            if not isinstance(line, bytes):
                line = binascii.b2a_qp(url_bytes.join(line), istext=True)
                # Every delimiter starts "--": a line without one needs no look at each.
                if b"--" in line and any(delimiter in line for delimiter, _ in self.delimiters):
                    return None
                # A '.' of the URL may start a line (after a soft line break). No CR to look for:
                # b2a_qp writes none without one in its input, and neither the pieces (_qp_lines)
                # nor the value (above) has one.
                ready = ready and not line.startswith(b".") and b"\n." not in line
                line = line.replace(b"\n", self.eol)
            out.append(line)
        return out, ready

    def _encode_whole(self, value: str) -> bytes:
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
            if self.qp_lines is not None and "\r" not in value and "\n" not in value:
                # The lines without the URL were encoded once (b2a_qp encodes each line on its own).
                url_bytes = value.encode(self.charset, "strict")
                encoded = b"".join(
                    line if isinstance(line, bytes) else binascii.b2a_qp(url_bytes.join(line), istext=True)
                    for line in self.qp_lines
                )
            else:
                lf = data.replace(b"\r\n", b"\n")
                encoded = binascii.b2a_qp(lf, istext=True)
            if any(delimiter in encoded for delimiter, _ in self.delimiters):
                encoded = _no_leading_dashes(encoded)
            return encoded.replace(b"\n", self.eol)
        return data


class Rendered(NamedTuple):
    """A copy as CopyTemplate.render_split makes it: its bytes and, without a second parse, what a
    reader of its header block finds (policies.mime.read_head): every named field in order as (lower-case
    name, its bytes with line ends), and where its body starts. `fields` is None when the template
    cannot vouch for that (a header block without a line end at its end)."""

    message: bytes
    fields: list[tuple[str, bytes]] | None
    body_start: int
    eol: bytes
    # message[body_start:] in pieces, the parts no copy changes the same objects in every copy (for
    # the DKIM signer's body hash); None with `fields`.
    body_parts: tuple[bytes, ...] | None = None


class _Wire:
    """What a body (or a template's head) has found out about its pieces and smtp_client.wire_ready:
    looked at once, when first wanted (the owners are frozen)."""

    __slots__ = ("copies", "ready")

    def __init__(self) -> None:
        self.copies = 0  # copies asked for before `ready` was found out
        self.ready: bool | None = None


@dataclass(frozen=True, slots=True)
class _Body:
    """What a message holds from the end of its header block on, parsed: the blank line and body as
    constant segments around the slots (offsets from the end of the header block). The same for
    every message with the same MIME fields and body, so CopyTemplates parses it once for them all."""

    segments: tuple[bytes, ...]  # one more than slots: the bytes before, between and after them
    slots: tuple[_Slot, ...]
    blank: int  # length of the empty line that ends the header block
    first: bytes = b""  # segments[0] without that empty line: where the body proper starts
    wire: _Wire = field(default_factory=_Wire, compare=False, repr=False)  # wire_ready()'s

    def wire_ready(self) -> bool:
        """Whether the pieces every copy has (the segments, the slots' fixed runs) are all
        smtp_client.wire_ready: then a copy checks only what it puts in. Not looked at for a body's
        first copy: the scan costs what dot-stuffing one copy does, so it pays from the second copy on
        (of a message to several recipients, or of a campaign's next message)."""
        wire = self.wire
        if wire.ready is None:
            wire.copies += 1
            if wire.copies < 2:
                return False
            wire.ready = all(map(wire_ready, self.segments)) and all(slot.fixed_ready() for slot in self.slots)
        return wire.ready


@dataclass(frozen=True, slots=True)
class CopyTemplate:
    """A message parsed once; `render` makes each recipient's copy."""

    head: bytes  # header fields without the list headers
    needs_eol: bool  # the header block did not end with a line end
    eol: bytes
    body: _Body
    fields: tuple[tuple[str, bytes], ...]  # the named fields of `head`: (lower-case name, bytes)
    wire: _Wire = field(default_factory=_Wire, compare=False, repr=False)  # of `head`, for render_wire

    def render(self, *, headers: Sequence[tuple[str, str]], url: str) -> bytes:
        return self.render_split(headers=headers, url=url).message

    def render_split(self, *, headers: Sequence[tuple[str, str]], url: str) -> Rendered:
        return self._render(headers, url, False)[0]

    def render_wire(self, *, headers: Sequence[tuple[str, str]], url: str) -> tuple[Rendered, bool]:
        """render_split's copy, and whether smtp_client.wire_ready holds of it and it ends with CRLF:
        dot-stuffing would change nothing. False says only that its pieces could not tell (the sender
        looks then)."""
        return self._render(headers, url, True)

    def _render(self, headers: Sequence[tuple[str, str]], url: str, wire: bool) -> tuple[Rendered, bool]:
        formatted = [_format_header(name, value, self.eol) for name, value in headers]
        # wire_ready holds of a join when it holds of each piece: the fixed ones are checked once, a
        # field _format_header writes in CRLF lines is unless its name starts with '.'.
        ready = (
            wire
            and self.eol == b"\r\n"
            and not self.needs_eol
            and self.body.wire_ready()
            and self._head_ready()
            and not any(name.startswith(".") for name, _ in headers)
        )
        out = [self.head]
        if self.needs_eol and headers:
            out.append(self.eol)
        out.extend(formatted)
        body = self.body
        segments = body.segments
        out.append(segments[0])
        parts = [body.first]
        for slot, after in zip(body.slots, segments[1:]):
            slot_parts, slot_ready = slot.render_parts(url, wire=ready)
            ready = slot_ready
            parts.extend(slot_parts)
            parts.append(after)
        out.extend(parts[1:])
        message = b"".join(out)
        if self.needs_eol:
            return Rendered(message, None, 0, self.eol), False
        fields = list(self.fields)
        fields.extend((name.lower(), line) for (name, _), line in zip(headers, formatted))
        body_start = len(self.head) + sum(map(len, formatted)) + body.blank
        return Rendered(message, fields, body_start, self.eol, tuple(parts)), ready and message.endswith(b"\r\n")

    def _head_ready(self) -> bool:
        wire = self.wire
        if wire.ready is None:
            wire.ready = wire_ready(self.head)
        return wire.ready


class CopyTemplates:
    """prepare() for the messages of one relay: the body's parse (its text parts, their pieces and
    quoted-printable lines) is kept for the last few bodies, so a campaign's messages, the same body
    for thousands of messages, parse it once. Only bodies up to MAX_BODY bytes are kept."""

    MAX_BODY = 128 * 1024  # a newsletter's size (Gmail clips beyond 102 KB); a kept body holds a few times it
    MAX_ENTRIES = 16

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, bytes, tuple[bytes, ...], bytes], _Body] = {}

    def prepare(
        self, raw: bytes, *, placeholder: str, first: tuple[str, str] | None = None, drop: Collection[str] = ()
    ) -> CopyTemplate:
        return prepare(raw, placeholder=placeholder, bodies=self, first=first, drop=drop)

    def _body(self, raw: bytes, top: mime.Head, placeholder: str, eol: bytes) -> _Body:
        rest = raw[top.end :]
        if len(rest) > self.MAX_BODY:
            return _parse_body(raw, top, placeholder, eol)
        # What the parse reads: the body, and of the header block only its MIME fields (part_head).
        mime_fields = tuple(raw[f.start : f.end] for f in top.fields if f.name in _MIME_FIELDS)
        key = (placeholder, eol, mime_fields, rest)
        body = self._bodies.pop(key, None)
        if body is None:
            body = _parse_body(raw, top, placeholder, eol)
            if len(self._bodies) >= self.MAX_ENTRIES:
                del self._bodies[next(iter(self._bodies))]  # the least recently used
        self._bodies[key] = body
        return body


_MIME_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})


def personalize(
    raw: bytes, *, headers: Sequence[tuple[str, str]], placeholder: str, url: str
) -> bytes:
    """One recipient's copy: list headers replaced by `headers`, placeholder → url."""
    return prepare(raw, placeholder=placeholder).render(headers=headers, url=url)


def prepare(
    raw: bytes,
    *,
    placeholder: str,
    bodies: CopyTemplates | None = None,
    first: tuple[str, str] | None = None,
    drop: Collection[str] = (),
) -> CopyTemplate:
    """The template of `raw`; with `drop` and `first`, of prepend_header(strip_header(raw, *drop),
    *first) (the relay id of relay.engine.copies.with_relay_id), from one reading of the header block."""
    top = mime.read_head(raw)
    fields = top.fields
    wanted = {name.lower() for name in drop}
    if wanted:
        if wanted & _MIME_FIELDS:
            raise ValueError("the MIME fields of a template's message cannot be dropped")
        fields = tuple(f for f in fields if f.name not in wanted)
    if len(fields) == len(top.fields):
        eol = mime.eol_of(raw)
    else:  # strip_header's message starts with its first field kept, or with the empty line
        eol = mime.eol_of(b"".join(raw[f.start : f.end] for f in fields[:1]) + raw[top.end : top.end + 2])
    kept = [f for f in fields if f.name not in LIST_HEADERS]
    head = b"".join(raw[f.start : f.end] for f in kept)
    named = [(f.name, raw[f.start : f.end]) for f in kept if f.name]
    if first is not None:
        name, value = first
        if not _HEADER_NAME.fullmatch(name) or "\r" in value or "\n" in value:
            raise ValueError(f"invalid header field {name!r}")
        line = f"{name}: {value}".encode("ascii") + eol
        head = line + head
        named.insert(0, (name.lower(), line))
    body = _parse_body(raw, top, placeholder, eol) if bodies is None else bodies._body(raw, top, placeholder, eol)
    return CopyTemplate(
        head=head,
        needs_eol=bool(head) and not head.endswith(b"\n"),
        eol=eol,
        body=body,
        fields=tuple(named),
    )


def _parse_body(raw: bytes, top: mime.Head, placeholder: str, eol: bytes) -> _Body:
    slots: list[_Slot] = []
    if placeholder:
        for part in mime.walk(raw, into_messages=False):
            if part.kind in (mime.PLAIN, mime.HTML) and not part.attached:
                slot = _text_slot(part, placeholder, eol, top.end)
                if slot is not None:
                    slots.append(slot)
    segments = []
    pos = top.end
    for slot in slots:
        segments.append(raw[pos : slot.start + top.end])
        pos = slot.end + top.end
    segments.append(raw[pos:])
    blank = top.body_start - top.end
    return _Body(tuple(segments), tuple(slots), blank, segments[0][blank:])


def strip_header(raw: bytes, name: str, *more: str) -> bytes:
    """`raw` without any top-level header field called `name` (or one of `more`), case-insensitively."""
    wanted = {n.lower() for n in (name, *more)}
    top = mime.read_head(raw)
    if not any(f.name in wanted for f in top.fields):
        return raw
    kept = [raw[f.start : f.end] for f in top.fields if f.name not in wanted]
    return b"".join(kept) + raw[top.end :]


def prepend_header(raw: bytes, name: str, value: str) -> bytes:
    """`raw` with the field `name: value` first, in the message's own line ending."""
    return f"{name}: {value}".encode("ascii") + mime.eol_of(raw) + raw


def _text_slot(part: mime.Part, placeholder: str, eol: bytes, offset: int = 0) -> _Slot | None:
    """The slot of a text part holding the placeholder, its offsets made relative to `offset`."""
    body = part.buf[part.start : part.end]
    line_length = 76
    encoding = part.head.encoding
    if encoding == "base64":
        lines = body.split(b"\n", 2)
        first_line = lines[0].rstrip(b"\r")
        # Keep the sender's line length when it is visible (a single line is not).
        if len(lines) > 1 and lines[1].strip() and 4 <= len(first_line) <= 76 and len(first_line) % 4 == 0:
            line_length = len(first_line)
    elif encoding != "quoted-printable":
        encoding = ""
    data = mime.transfer_decode(body, encoding)  # the bytes the rules read
    codec = part.charset(data) or "utf-8"  # None: UTF-8 else Windows-1252, both ASCII-safe
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
            return None  # the rules read it with replacement characters; the placeholder stays
        if placeholder not in text:
            return None
        pieces = tuple(text.split(placeholder))
    return _Slot(
        start=part.start - offset,
        end=part.end - offset,
        html=part.kind == mime.HTML,
        pieces=pieces,
        charset=codec,
        transfer_encoding=encoding,
        eol=eol,
        line_length=line_length,
        trailing_eol=body.endswith(b"\n"),
        original=body,
        delimiters=tuple((d, body.count(d)) for d in part.delimiters) if encoding != "base64" else (),
        qp_lines=_qp_lines(pieces) if encoding == "quoted-printable" else None,
    )


def _qp_lines(pieces: tuple[bytes, ...] | tuple[str, ...]) -> tuple[bytes | tuple[bytes, ...], ...] | None:
    """The text `url.join(pieces)` as _Slot._encode writes it in quoted-printable, in lines: every
    line without the URL encoded now, each line with it as the raw pieces around it.

    binascii.b2a_qp(a + b) == b2a_qp(a) + b2a_qp(b) when `a` ends with a line feed and there is no
    CR anywhere (with none, it writes LF line ends throughout; it reads past a character only to
    see whether a line ends there): so each copy encodes only the lines the URL is on. None when the
    pieces are text (a charset that needs decoding) or hold a CR once CRLFs are made LFs."""
    if not pieces or not isinstance(pieces[0], bytes):
        return None
    lf = [piece.replace(b"\r\n", b"\n") for piece in pieces]  # type: ignore[union-attr]
    if any(b"\r" in piece for piece in lf):
        return None
    lines: list[bytes | tuple[bytes, ...]] = []
    open_line: list[bytes] = []  # the pieces of the line the URL is on, so far
    last = len(lf) - 1
    for i, piece in enumerate(lf):
        if i > 0:  # the URL stands right before this piece: its line goes on
            newline = piece.find(b"\n")
            if newline < 0:
                open_line.append(piece)
                if i == last:
                    lines.append(tuple(open_line))
                continue
            open_line.append(piece[: newline + 1])
            lines.append(tuple(open_line))
            piece = piece[newline + 1 :]
        if i < last:  # the URL follows: this piece's last line is the URL's
            newline = piece.rfind(b"\n")
            if newline >= 0:
                lines.append(binascii.b2a_qp(piece[: newline + 1], istext=True))
            open_line = [piece[newline + 1 :]]
        elif piece:
            lines.append(binascii.b2a_qp(piece, istext=True))
    return tuple(lines)


def _no_leading_dashes(encoded: bytes) -> bytes:
    pieces = (b"\n" + encoded).split(b"\n-")  # each piece after the first: a line that began "-"
    out = [pieces[0]]
    for piece in pieces[1:]:
        end = piece.find(b"\n")
        end = len(piece) if end < 0 else end
        out.append(b"=2D" + piece if end + 3 <= 76 else _no_leading_dash(b"-" + piece[:end]) + piece[end:])
    return b"\n".join(out)[1:]


def _no_leading_dash(line: bytes) -> bytes:
    """A quoted-printable line that starts with "=2D", not "-": re-encoded text must never write a
    line that is a boundary delimiter where the original (say "=2D-b") was none. Still at most 76
    characters: a soft line break where the escape made it longer."""
    out = []
    while line.startswith(b"-"):
        line = b"=2D" + line[1:]
        if len(line) <= 76:
            break
        cut = 75
        while b"=" in line[cut - 2 : cut]:  # never inside an =XX escape
            cut -= 1
        out.append(line[:cut] + b"=")
        line = line[cut:]
    out.append(line)
    return b"\n".join(out)


@functools.lru_cache(maxsize=256)  # List-Id, List-Unsubscribe-Post: the same in every copy
def _format_header(name: str, value: str, eol: bytes) -> bytes:
    """The field in lines ended by `eol`, each but the first starting with a space, and no other CR
    or LF (a value with one is refused): with CRLF, smtp_client.wire_ready unless `name` starts
    with '.' (CopyTemplate.render_wire counts on it)."""
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
