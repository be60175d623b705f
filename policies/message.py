"""Parse raw message bytes once into what the rules read: headers, decoded text, links, attachments.

Nothing here raises on garbage: broken MIME, charsets, base64 or archives degrade to less text.
"""

from __future__ import annotations

import binascii
import codecs
import email.header
import email.parser
import email.policy
import functools
import io
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from typing import Any, Iterable, Iterator, NamedTuple

from policies._passes import passes as _speedups

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)

# Bounds that keep a hostile message cheap: MIME nesting, number of leaf parts, archive
# nesting and the total bytes we are willing to decompress out of archives.
MAX_MIME_DEPTH = 12
MAX_PARTS = 1000
MAX_ARCHIVE_DEPTH = 3
MAX_ARCHIVE_MEMBERS = 2000
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
# What archives may inflate to is also bounded by the message's own size (see archive_budget): a
# zip bomb costs memory and time in proportion to what was sent, whatever its compression ratio.
ARCHIVE_EXPANSION = 2
ARCHIVE_MIN_BYTES = 1024 * 1024

# Attachment kinds, from harmless to worst; an archive takes the worst kind found inside it.
KIND_OTHER = "other"
KIND_ARCHIVE = "archive"
KIND_TORRENT = "torrent"
KIND_MACRO_OFFICE = "macro_office"
KIND_SCRIPT = "script"
KIND_EXECUTABLE = "executable"
KIND_EICAR = "eicar"
_SEVERITY = {
    KIND_OTHER: 0,
    KIND_ARCHIVE: 1,
    KIND_TORRENT: 2,
    KIND_MACRO_OFFICE: 3,
    KIND_SCRIPT: 4,
    KIND_EXECUTABLE: 5,
    KIND_EICAR: 6,
}
DANGEROUS_KINDS = frozenset({KIND_MACRO_OFFICE, KIND_SCRIPT, KIND_EXECUTABLE, KIND_EICAR})

EICAR_MARK = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
_EICAR_TEXT = EICAR_MARK.decode("ascii")

_EXECUTABLE_EXT = frozenset(
    "exe dll scr com pif cpl msi msp sys drv ocx apk app dmg elf bin_exe".split()
)
_SCRIPT_EXT = frozenset(
    "js jse vbs vbe vb wsf wsh wsc ps1 psm1 psd1 bat cmd sh bash csh ksh zsh hta sct "
    "lnk jar py pyw pl rb php reg inf scf url iqy slk application gadget msc".split()
)
_MACRO_EXT = frozenset("docm dotm xlsm xltm xlam xlsb pptm potm ppsm ppam sldm".split())
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE_VBA = "_VBA_PROJECT".encode("utf-16-le")
_MACHO_MAGICS = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")


class Link(NamedTuple):
    """A link as the reader sees it: target (stripped of surrounding whitespace), anchor text,
    and its place in ParsedMessage.text."""

    href: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Attachment:
    """A non-text part: declared name and type, decoded size, and what its content really is."""

    filename: str
    content_type: str
    size: int
    kind: str = KIND_OTHER
    # Inside an archive: the member path ("a.zip/b.exe") where `kind` was found.
    found_in: str = ""

    @property
    def dangerous(self) -> bool:
        return self.kind in DANGEROUS_KINDS


@dataclass(frozen=True)
class _Body:
    text_parts: tuple[str, ...]
    html_parts: tuple[str, ...]
    text: str
    hidden_text: str
    links: tuple[Link, ...]
    attachments: tuple[Attachment, ...]
    eicar: bool


class ParsedMessage:
    """One message, read-only. Headers are parsed at once; the body on first use of a body field."""

    __slots__ = (
        "headers",
        "from_addresses",
        "from_name",
        "subject",
        "raw",
        "reply_to",
        "in_reply_to",
        "references",
        "_body_offset",
        "_body",
        "_folded",
        "_folded_visible",
        "_words",
        "_hrefs",
        "_hosts",
    )

    headers: Message
    from_addresses: tuple[str, ...]
    from_name: str
    subject: str
    raw: bytes
    reply_to: tuple[str, ...]
    in_reply_to: str
    references: tuple[str, ...]

    def __init__(
        self,
        *,
        headers: Message,
        from_addresses: tuple[str, ...],
        from_name: str,
        subject: str,
        raw: bytes,
        reply_to: tuple[str, ...] = (),
        in_reply_to: str = "",
        references: tuple[str, ...] = (),
        body_offset: int | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "headers", headers)
        init(self, "from_addresses", from_addresses)
        init(self, "from_name", from_name)
        init(self, "subject", subject)
        init(self, "raw", raw)
        init(self, "reply_to", reply_to)
        init(self, "in_reply_to", in_reply_to)
        init(self, "references", references)
        init(self, "_body_offset", _body_start(raw) if body_offset is None else body_offset)
        init(self, "_body", None)
        init(self, "_folded", None)
        init(self, "_folded_visible", None)
        init(self, "_words", None)
        init(self, "_hrefs", None)
        init(self, "_hosts", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ParsedMessage is immutable (tried to set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ParsedMessage is immutable (tried to delete {name})")

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Pickled as its bytes (parsing is cheap; the body walk happens where it is used): the
        # relay hands messages to its helper process this way.
        return parse_message, (self.raw,)

    def __repr__(self) -> str:
        return f"ParsedMessage(from={self.from_addresses!r}, subject={self.subject!r}, size={len(self.raw)})"

    def header(self, name: str) -> str:
        value = self.headers.get(name)
        return "" if value is None else str(value)

    # The body is walked once, on first use, and cached: the relay parses every message but
    # a transactional message under a lenient profile may never need it.
    def _walked(self) -> _Body:
        body = self._body
        if body is None:
            body = _walk_body(self.headers, self.raw, self._body_offset)
            object.__setattr__(self, "_body", body)
        return body

    @property
    def text_parts(self) -> tuple[str, ...]:
        """Every inline text/plain part, decoded."""
        return self._walked().text_parts

    @property
    def html_parts(self) -> tuple[str, ...]:
        """Every inline text/html part, decoded but still HTML (for placeholders inside href)."""
        return self._walked().html_parts

    @property
    def text(self) -> str:
        """What a reader sees: the plain parts and the visible text of the HTML parts."""
        return self._walked().text

    @property
    def hidden_text(self) -> str:
        """HTML text styled invisible (display:none, visibility:hidden), kept for content checks."""
        return self._walked().hidden_text

    @property
    def links(self) -> tuple[Link, ...]:
        return self._walked().links

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        return self._walked().attachments

    @property
    def has_eicar(self) -> bool:
        """The EICAR test signature anywhere: raw bytes, decoded parts or inside archives."""
        return self._walked().eicar

    @property
    def folded_visible(self) -> str:
        """The visible text (no subject, no hidden text), case- and accent-folded: identity checks."""
        folded = self._folded_visible
        if folded is None:
            folded = fold(self.text)
            object.__setattr__(self, "_folded_visible", folded)
        return folded

    @property
    def folded_text(self) -> str:
        """Subject, visible and hidden text, case- and accent-folded: the content word lists."""
        folded = self._folded
        if folded is None:
            folded = "\n".join((fold(self.subject), self.folded_visible, fold(self.hidden_text)))
            object.__setattr__(self, "_folded", folded)
        return folded

    @property
    def hrefs_lower(self) -> str:
        """Every link's target, lower-cased, each after a "\\n": one string for the link rules to search."""
        hrefs = self._hrefs
        if hrefs is None:
            hrefs = ("\n" + "\n".join(link.href for link in self.links)).lower()  # hrefs come stripped
            object.__setattr__(self, "_hrefs", hrefs)
        return hrefs

    @property
    def link_hosts(self) -> tuple[str, ...]:
        """The distinct hosts of the links, lower-cased, in order (a newsletter: hundreds of links, few hosts)."""
        hosts = self._hosts
        if hosts is None:
            hosts = tuple(dict.fromkeys(_LINK_HOST.findall(self.hrefs_lower)))
            object.__setattr__(self, "_hosts", hosts)
        return hosts

    @property
    def words(self) -> frozenset[str]:
        """The distinct folded words of folded_text: word lists test membership, not regexes."""
        words = self._words
        if words is None:
            words = split_words(self.folded_text)
            object.__setattr__(self, "_words", words)
        return words


# The host of each line of lower-cased hrefs: after the scheme (or a bare www.), past any
# user:password@, up to the port, path, query or fragment.
# Each line is found by its leading "\n" (a literal the regex engine skips to), not by ^ and re.M,
# which it tests at every character; the runs are possessive (*+), as no backtracking into a run
# that excludes the next literal can find it.
_LINK_HOST = re.compile(r"\n(?:[a-z][a-z0-9+.\-]*+://(?:[^@/\n?#]*+@)?|(?=www\.))([^/:?#\s\\]+)")


# --- text folding ---------------------------------------------------------------------------

_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
# UTF-8 prefixes covering those ranges (U+0300-037F, U+1A80-1AFF, U+1DC0-1DFF, U+20C0-20FF,
# U+FE00-FE3F): a superset, so finding none proves there is nothing to remove.
_ASCII_BYTES = bytes(range(128))
_COMBINING_UTF8_LEADS = (b"\xcc", b"\xcd", b"\xe1\xaa", b"\xe1\xab", b"\xe1\xb7", b"\xe2\x83", b"\xef\xb8")


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded."""
    if text.isascii():
        return text.lower()
    # A page of text is mostly ASCII between a few accented letters, signs and dashes: the C pass
    # lower-cases the ASCII and folds each distinct non-ASCII run once, here (the same result:
    # ASCII characters are starters, which no decomposition reorders across).
    if len(text) > 64:
        return _speedups.fold(text, _fold_run)
    return _fold_run(text)


def _fold_run(text: str) -> str:
    if not unicodedata.is_normalized("NFKD", text):  # the check is cheaper than normalizing
        text = unicodedata.normalize("NFKD", text)
    # sre scans a wide string at ~8 ns a character even when nothing matches; the UTF-8 lead
    # bytes of the combining ranges are found far faster, and most text has none.
    # Only the non-ASCII bytes are searched (bytes.translate drops the rest in one C pass); a
    # multi-byte character's bytes stay adjacent, so no false match and no missed one.
    encoded = text.encode("utf-8", "surrogatepass").translate(None, _ASCII_BYTES)
    if any(lead in encoded for lead in _COMBINING_UTF8_LEADS):
        text = _COMBINING.sub("", text)
    return text.casefold()


def split_words(folded: str) -> frozenset[str]:
    """The distinct \\w+ words (one C pass: _speedups.words)."""
    return _speedups.words(folded)


# --- headers ----------------------------------------------------------------------------------

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_MSG_ID = re.compile(r"<[^<>\s]*>")


def _body_start(raw: bytes | memoryview) -> int:
    """Offset of the body: after the first empty line (or 0 when the message starts with one)."""
    if raw[:1] == b"\n":
        return 1
    if raw[:2] == b"\r\n":
        return 2
    match = _HEAD_END.search(raw)
    return match.end() if match else len(raw)


def _decoded(value: object) -> str:
    if value is None:
        return ""
    try:
        parts = email.header.decode_header(str(value))
        return str(email.header.make_header(parts))
    except Exception:  # malformed encoded-words or unknown charsets: keep the raw text
        return str(value)


def _addresses(headers: Message, name: str) -> tuple[tuple[str, str], ...]:
    try:
        values = headers.get_all(name) or []
        return tuple(getaddresses([str(v) for v in values]))
    except Exception:  # getaddresses can trip on pathological input; no address then
        return ()


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse headers now and the body lazily. Never raises, whatever the bytes."""
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    offset = _body_start(raw)
    try:
        headers = _HEADER_PARSER.parsebytes(raw[:offset])
    except Exception:  # the compat32 parser is lenient; this is a last resort
        headers = Message()
    pairs = _addresses(headers, "From")
    addresses = tuple(addr for _, addr in pairs if addr)
    name = _decoded(pairs[0][0]) if pairs else ""
    reply_to = tuple(addr for _, addr in _addresses(headers, "Reply-To") if addr)
    in_reply_to = " ".join(str(v) for v in (headers.get_all("In-Reply-To") or [])).strip()
    references = tuple(_MSG_ID.findall(" ".join(str(v) for v in (headers.get_all("References") or []))))
    return ParsedMessage(
        headers=headers,
        from_addresses=addresses,
        from_name=name,
        subject=_decoded(headers.get("Subject")),
        raw=raw,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=references,
        body_offset=offset,
    )


# --- MIME walk --------------------------------------------------------------------------------

_HEADER_LINE = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.M)
_PARAM = re.compile(r";\s*([^\s;=]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"?|[^;]*)")


@dataclass(frozen=True)
class _PartHead:
    content_type: str
    params: dict[str, str]
    encoding: str
    disposition: str
    disposition_params: dict[str, str]


def _params(value: str) -> tuple[str, dict[str, str]]:
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for key, val in _PARAM.findall(";" + rest):
        val = val.strip()
        if val.startswith('"'):
            val = val[1:-1] if val.endswith('"') and len(val) > 1 else val[1:]
            val = val.replace('\\"', '"').replace("\\\\", "\\")
        params.setdefault(key.lower(), val)
    return main.strip().lower(), params


def _part_head(block: bytes) -> _PartHead:
    """The few MIME headers of a part, parsed by hand: email.parser costs 10x more per part."""
    fields: dict[str, str] = {}
    for name, value in _HEADER_LINE.findall(block):
        key = name.decode("ascii", "replace").lower()
        if key not in fields:
            fields[key] = re.sub(r"\r?\n[ \t]", " ", value.decode("utf-8", "replace")).strip()
    ctype, params = _params(fields.get("content-type", ""))
    disposition, dparams = _params(fields.get("content-disposition", ""))
    return _PartHead(
        content_type=ctype if "/" in ctype else "",
        params=params,
        encoding=fields.get("content-transfer-encoding", "").strip().lower(),
        disposition=disposition,
        disposition_params=dparams,
    )


def _head_from_message(headers: Message) -> _PartHead:
    """The top-level headers were parsed by email.parser already; reuse them."""
    try:
        ctype, params = _params(str(headers.get("Content-Type", "")))
        disposition, dparams = _params(str(headers.get("Content-Disposition", "")))
        encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    except Exception:  # headers holding undecodable values: treat as plain text
        return _PartHead("", {}, "", "", {})
    return _PartHead(ctype if "/" in ctype else "", params, encoding, disposition, dparams)


def _filename(head: _PartHead) -> str:
    for params in (head.disposition_params, head.params):
        for key in ("filename", "name"):
            if key in params:
                return _decoded(params[key])
        # RFC 2231: filename*=utf-8''a%20b.exe, or continuations filename*0*=, filename*1=
        for key in ("filename", "name"):
            pieces = sorted(
                (k for k in params if k.startswith(key + "*")),
                key=lambda k: int(re.sub(r"\D", "", k) or 0),
            )
            if pieces:
                return _rfc2231(pieces, params)
    return ""


def _rfc2231(keys: list[str], params: dict[str, str]) -> str:
    try:
        encoded = any(k.endswith("*") for k in keys)
        value = "".join(params[k] for k in keys)
        if not encoded:
            return value
        charset, _, rest = value.partition("'")
        _, _, text = rest.partition("'")
        if not rest:
            text = value
        from urllib.parse import unquote_to_bytes

        return _decode_bytes(unquote_to_bytes(text), charset or "utf-8")
    except Exception:  # a broken RFC 2231 value: its raw characters are still a name
        return "".join(params.get(k, "") for k in keys)


def _transfer_decode(data: memoryview | bytes, encoding: str) -> bytes:
    try:
        if encoding == "base64":
            try:
                return binascii.a2b_base64(data)
            except binascii.Error:
                cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", bytes(data))
                return binascii.a2b_base64(cleaned[: len(cleaned) - len(cleaned) % 4])
        if encoding == "quoted-printable":
            return _speedups.qp_decode(data)  # binascii.a2b_qp's bytes
    except (binascii.Error, ValueError):
        return bytes(data)
    return bytes(data)


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.I)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Declared charset if Python knows it as a text codec; else UTF-8, else Windows-1252."""
    if charset:
        name = charset.strip().strip("\"'").lower()
        if name in ("us-ascii", "ascii", "7bit", "unknown-8bit", "x-unknown"):
            name = ""  # mislabelled 8-bit text is common; UTF-8 first then
        if name:
            try:
                if codecs.lookup(name)._is_text_encoding:  # type: ignore[attr-defined]
                    return data.decode(name, "replace")
            except Exception:  # unknown or broken codec: fall through to the guesses
                pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _split_multipart(buf: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of the parts between `--boundary` lines; preamble and epilogue dropped.

    bytes.find over the buffer: no copy of a 20 MB body, and far faster than a regex.
    """
    delimiter = b"--" + boundary
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while len(parts) < MAX_PARTS:
        at = buf.find(delimiter, pos, end)
        if at < 0:
            break
        after = at + len(delimiter)
        pos = after
        if at != start and buf[at - 1 : at] != b"\n":
            continue  # not at the start of a line
        closing = buf[after : after + 2] == b"--"
        line_end = buf.find(b"\n", after, end)
        line_end = end if line_end < 0 else line_end
        if not closing and buf[after:line_end].strip():
            continue  # a longer boundary that merely starts with ours
        if part_start is not None:
            part_end = at - 1 if at > part_start else at
            if part_end > part_start and buf[part_end - 1 : part_end] == b"\r":
                part_end -= 1
            parts.append((part_start, max(part_start, part_end)))
        if closing:
            return parts
        part_start = min(line_end + 1, end)
        pos = part_start
    if part_start is not None and len(parts) < MAX_PARTS:  # no closing delimiter: runs to the end
        parts.append((part_start, end))
    return parts


class _Collector:
    def __init__(self, archive_bytes: int = MAX_ARCHIVE_BYTES) -> None:
        self.archive_budget = [archive_bytes]  # shared by every attachment of the message
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []
        self.eicar = False
        self.parts = 0


def _walk_body(headers: Message, raw: bytes, offset: int) -> _Body:
    out = _Collector(archive_budget(len(raw)))
    try:
        _walk(_head_from_message(headers), raw, offset, len(raw), 0, out)
    except Exception:  # a bug or a pathological input must not stop delivery decisions
        pass
    text, hidden, links = _render(out.plain, out.html)
    return _Body(
        text_parts=tuple(out.plain),
        html_parts=tuple(out.html),
        text=text,
        hidden_text=hidden,
        links=links,
        attachments=tuple(out.attachments),
        eicar=out.eicar or raw.find(EICAR_MARK, offset) >= 0 or any(a.kind == KIND_EICAR for a in out.attachments),
    )


def _head_end(buf: bytes, start: int, end: int) -> int:
    """Offset of a part's body within buf[start:end] (after its header block)."""
    if buf[start : start + 1] == b"\n":
        return start + 1
    if buf[start : start + 2] == b"\r\n":
        return start + 2
    match = _HEAD_END.search(buf, start, end)
    return match.end() if match else end


def _walk(head: _PartHead, buf: bytes, start: int, end: int, depth: int, out: _Collector) -> None:
    out.parts += 1
    if out.parts > MAX_PARTS:
        return
    ctype = head.content_type or "text/plain"
    main = ctype.partition("/")[0]
    if main == "multipart" and depth < MAX_MIME_DEPTH:
        boundary = head.params.get("boundary", "")
        if boundary:
            for part_start, part_end in _split_multipart(buf, start, end, boundary[:200].encode("utf-8", "replace")):
                body_at = _head_end(buf, part_start, part_end)
                _walk(_part_head(buf[part_start:body_at]), buf, body_at, part_end, depth + 1, out)
            return
    body = memoryview(buf)[start:end]
    if ctype == "message/rfc822" and depth < MAX_MIME_DEPTH:
        inner = _transfer_decode(body, head.encoding)
        offset = _body_start(inner)
        try:
            inner_headers = _HEADER_PARSER.parsebytes(inner[:offset])
        except Exception:
            inner_headers = Message()
        _walk(_head_from_message(inner_headers), inner, offset, len(inner), depth + 1, out)
        if EICAR_MARK in inner:
            out.eicar = True
        return
    filename = _filename(head)
    inline = head.disposition != "attachment" and not filename
    if (main in ("text", "multipart") and inline) or (ctype in ("text/plain", "text/html") and head.disposition == "inline"):
        data = _transfer_decode(body, head.encoding)
        charset = head.params.get("charset")
        if ctype == "text/html":
            if not charset:
                meta = _META_CHARSET.search(data[:4096])
                charset = meta.group(1).decode("ascii", "replace") if meta else None
            text = _decode_bytes(data, charset)
            out.html.append(text)
        elif ctype in ("text/plain", "text/enriched") or main == "multipart":
            text = _decode_bytes(data, charset)
            out.plain.append(text)
        else:  # text/calendar, text/css…: not shown as body text, but may carry EICAR
            text = ""
            out.eicar = out.eicar or EICAR_MARK in data
        if _EICAR_TEXT in text:
            out.eicar = True
        return
    data = _transfer_decode(body, head.encoding)
    kind, found_in = _inspect(data, filename, 0, out.archive_budget)
    out.attachments.append(Attachment(filename, ctype, len(data), kind, found_in))


# --- attachment inspection -----------------------------------------------------------------


def _extension(name: str) -> str:
    base = name.replace("\\", "/").rpartition("/")[2].strip().rstrip(". ")
    return base.rpartition(".")[2].lower() if "." in base else ""


def _worse(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    return b if _SEVERITY[b[0]] > _SEVERITY[a[0]] else a


def _inspect(data: bytes | bytearray, name: str, depth: int, budget: list[int]) -> tuple[str, str]:
    """The worst kind in `data` and, inside archives, where it was found. Never raises."""
    if EICAR_MARK in data:
        return KIND_EICAR, ""
    ext = _extension(name)
    head = data[:8]
    if head[:2] == b"MZ" or head[:4] == b"\x7fELF" or head[:4] in _MACHO_MAGICS or ext in _EXECUTABLE_EXT:
        return KIND_EXECUTABLE, ""
    if ext in _SCRIPT_EXT or head[:2] == b"#!":
        return KIND_SCRIPT, ""
    if ext in _MACRO_EXT or (head == _OLE_MAGIC and _OLE_VBA in data):
        return KIND_MACRO_OFFICE, ""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _inspect_zip(data, depth, budget)
    if head[:6] in (b"Rar!\x1a\x07", b"7z\xbc\xaf\x27\x1c") or head[:2] == b"\x1f\x8b":
        return KIND_ARCHIVE, ""
    if ext == "torrent" or head[:11] == b"d8:announce" or head[:7] == b"d4:info":
        return KIND_TORRENT, ""
    return KIND_OTHER, ""


def archive_budget(message_size: int) -> int:
    """Bytes all archives of one message may inflate to: ARCHIVE_EXPANSION times the message, capped
    at MAX_ARCHIVE_BYTES; a small message still gets ARCHIVE_MIN_BYTES (too little to matter), so a
    zipped Office file in a short mail is read whole."""
    return min(MAX_ARCHIVE_BYTES, max(ARCHIVE_MIN_BYTES, ARCHIVE_EXPANSION * message_size))


_MEMBER_CHUNK = 1 << 16


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, allowance: int) -> bytearray:
    """Up to `allowance` bytes of a member, inflated chunk by chunk into one buffer: ZipExtFile.read(n)
    grows its result by concatenation, which briefly holds twice what it returns."""
    buffer = bytearray(allowance)
    filled = 0
    with archive.open(info) as handle, memoryview(buffer) as view:
        while filled < allowance:
            piece = handle.read(min(_MEMBER_CHUNK, allowance - filled))
            if not piece:
                break
            view[filled : filled + len(piece)] = piece
            filled += len(piece)
    del buffer[filled:]
    return buffer


def _inspect_zip(data: bytes | bytearray, depth: int, budget: list[int]) -> tuple[str, str]:
    worst = (KIND_ARCHIVE, "")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()[:MAX_ARCHIVE_MEMBERS]
    except Exception:  # corrupt or truncated archive: an archive we cannot look into
        return worst
    for info in members:
        member = info.filename
        if member.replace("\\", "/").rpartition("/")[2].lower() == "vbaproject.bin":
            return KIND_MACRO_OFFICE, member
        found = _by_name(member)
        if found is not None:
            worst = _worse(worst, (found, member))
        if info.is_dir() or info.flag_bits & 0x1 or depth + 1 > MAX_ARCHIVE_DEPTH:
            continue  # encrypted members show only their names
        allowance = min(info.file_size, budget[0])
        if allowance <= 0:
            continue
        try:
            content = _read_member(archive, info, allowance)
        except Exception:  # bad CRC, unsupported compression, truncated: skip the member
            continue
        budget[0] -= len(content)
        kind, inner = _inspect(content, member, depth + 1, budget)
        del content
        if kind != KIND_OTHER and not (kind == KIND_ARCHIVE and not inner):
            worst = _worse(worst, (kind, f"{member}/{inner}" if inner else member))
        if worst[0] == KIND_EICAR:
            break
    return worst


def _by_name(name: str) -> str | None:
    ext = _extension(name)
    if ext in _EXECUTABLE_EXT:
        return KIND_EXECUTABLE
    if ext in _SCRIPT_EXT:
        return KIND_SCRIPT
    if ext in _MACRO_EXT:
        return KIND_MACRO_OFFICE
    return None


# --- HTML to visible text -------------------------------------------------------------------
# policies/_speedups.c: each regex pass of tests/policies/speedups_reference.py as one C loop (a 100 KB
# newsletter has thousands of tags, and the relay parses every message).

# (start, end) of each URL written in text (http(s)://, www., mailto:, magnet:?), case-insensitively:
# the spans of _URL_ANY_CASE.finditer in tests/policies/speedups_reference.py, in one C pass.
_urls = _speedups.urls


_new_link = functools.partial(tuple.__new__, Link)


def _render(plain: list[str], markup: list[str]) -> tuple[str, str, tuple[Link, ...]]:
    chunks: list[str] = []
    hidden: list[str] = []
    links: list[Link] = []
    offset = 0
    for text in plain:
        text = text.replace("\r\n", "\n")
        for start, end in _urls(text):
            links.append(Link(text[start:end].rstrip(".,;:!?"), "", offset + start, offset + end))
        chunks.append(text)
        offset += len(text) + 2
    for page in markup:
        # (href, anchor text, start, end) of each anchor, already offset: Link's fields
        text, hidden_text, anchors = _speedups.html_to_text(page, offset)
        links.extend(map(_new_link, anchors))
        # Bare URLs written as text in HTML (not inside an anchor) are links to the reader too.
        for start, end in _urls(text):
            if not any(s <= offset + start < e for _, _, s, e in anchors):
                links.append(Link(text[start:end].rstrip(".,;:!?"), "", offset + start, offset + end))
        chunks.append(text)
        if hidden_text:
            hidden.append(hidden_text)
        offset += len(text) + 2
    return "\n\n".join(chunks), "\n".join(hidden), tuple(links)


def iter_urls(text: str) -> Iterator[str]:
    """URLs written out in plain text (http, www., mailto:, magnet:)."""
    for start, end in _urls(text):
        yield text[start:end].rstrip(".,;:!?")


__all__ = [
    "Attachment",
    "DANGEROUS_KINDS",
    "Link",
    "ParsedMessage",
    "fold",
    "iter_urls",
    "parse_message",
]
