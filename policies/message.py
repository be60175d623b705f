"""Parse raw message bytes once into what the rules read: headers, decoded text, links, attachments.

Nothing here raises on garbage: broken MIME, charsets, base64 or archives degrade to less text.
"""

from __future__ import annotations

import binascii
import email.base64mime
import email.header
import email.parser
import email.policy
import email.quoprimime
import functools
import io
import operator
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from typing import Any, Iterable, Iterator, NamedTuple

from policies import mime
from policies._passes import passes as _speedups

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)

# Bounds that keep a hostile message cheap: MIME nesting and number of parts (policies.mime), archive
# nesting and the total bytes we are willing to decompress out of archives.
MAX_MIME_DEPTH = mime.MAX_MIME_DEPTH
MAX_PARTS = mime.MAX_PARTS
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
        "_folded_subject",
        "_subject_words",
        "_words",
        "_known",
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
        init(self, "_body_offset", mime.split_head(raw)[1] if body_offset is None else body_offset)
        init(self, "_body", None)
        init(self, "_folded", None)
        init(self, "_folded_visible", None)
        init(self, "_folded_subject", None)
        init(self, "_subject_words", None)
        init(self, "_words", None)
        init(self, "_known", None)
        init(self, "_hrefs", None)
        init(self, "_hosts", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ParsedMessage is immutable (tried to set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ParsedMessage is immutable (tried to delete {name})")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled as its bytes and what the header parse made of them, so that the helper process
        # the relay hands messages to does not parse the headers again; the body walk happens
        # where it is used.
        return _unpickled, (
            self.raw, self.headers._headers, self.from_addresses, self.from_name, self.subject,
            self.reply_to, self.in_reply_to, self.references, self._body_offset,
        )

    def __repr__(self) -> str:
        return f"ParsedMessage(from={self.from_addresses!r}, subject={self.subject!r}, size={len(self.raw)})"

    def header(self, name: str) -> str:
        value = self.headers.get(name)
        return "" if value is None else str(value)

    def body_fields(self) -> BodyFields | None:
        """The body fields made so far (the walk and what is derived from it alone), for a message
        with the same body_key to adopt; None while the body has not been walked."""
        if self._body is None:
            return None
        return (self._body, self._folded_visible, self._hrefs, self._hosts)

    def adopt_body_fields(self, fields: BodyFields) -> None:
        """Take the body fields of a message with the same body_key instead of walking this body (a
        campaign's messages share one: the shell keeps the last few). Fields made already stay."""
        for name, value in zip(("_body", "_folded_visible", "_hrefs", "_hosts"), fields):
            if value is not None and getattr(self, name) is None:
                object.__setattr__(self, name, value)

    # The body is walked once, on first use, and cached: the relay parses every message but
    # a transactional message under a lenient profile may never need it.
    def _walked(self) -> _Body:
        body = self._body
        if body is None:
            body = _walk_body(self.raw, self._body_offset)
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
    def folded_subject(self) -> str:
        """The subject, case- and accent-folded: four subject rules read it."""
        folded = self._folded_subject
        if folded is None:
            folded = fold(self.subject)
            object.__setattr__(self, "_folded_subject", folded)
        return folded

    @property
    def subject_words(self) -> frozenset[str]:
        """The distinct words of folded_subject, for the word lists run against the subject alone."""
        words = self._subject_words
        if words is None:
            words = split_words(self.folded_subject)
            object.__setattr__(self, "_subject_words", words)
        return words

    @property
    def folded_text(self) -> str:
        """Subject, visible and hidden text, case- and accent-folded: the content word lists."""
        folded = self._folded
        if folded is None:
            folded = "\n".join((self.folded_subject, self.folded_visible, fold(self.hidden_text)))
            object.__setattr__(self, "_folded", folded)
        return folded

    @property
    def hrefs_lower(self) -> str:
        """Every link's target, lower-cased, each after a "\\n": one string for the link rules to search."""
        hrefs = self._hrefs
        if hrefs is None:
            hrefs = ("\n" + "\n".join(map(_HREF, self.links))).lower()  # hrefs come stripped
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

    def known_words(self, vocabulary: object) -> frozenset[str]:
        """The words of `words` that are in `vocabulary` (a policies.wordlists.Lexicon's table), read off
        folded_text in one pass that makes no str for any other word: a word list whose words the
        vocabulary holds finds in these what it finds in `words`. All of `words` when one of them is
        of a script without spaces: the lists look for such terms inside any word. Kept for the last
        vocabulary asked (one per engine)."""
        known = self._known
        if known is not None and known[0] is vocabulary:
            return known[1]
        found, unspaced = _speedups.known_words(self.folded_text, vocabulary)
        if unspaced:
            found = self.words
        object.__setattr__(self, "_known", (vocabulary, found))
        return found


_HREF = operator.itemgetter(0)  # Link.href, read in C by map()

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
_COMBINING_UTF8_LEAD = re.compile(rb"[\xcc\xcd]|\xe1[\xaa\xab\xb7]|\xe2\x83|\xef\xb8")
_SHORT_RUN = 32


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
    # A short run (an accented letter, a dash, a euro sign: what the C pass mostly hands over) is
    # searched directly. On a long one sre costs ~8 ns a character even when nothing matches; the
    # UTF-8 lead bytes of the combining ranges are found far faster, and most text has none. Only
    # the non-ASCII bytes are searched (bytes.translate drops the rest in one C pass); a multi-byte
    # character's bytes stay adjacent, so no false match and no missed one.
    if len(text) <= _SHORT_RUN or _COMBINING_UTF8_LEAD.search(
        text.encode("utf-8", "surrogatepass").translate(None, _ASCII_BYTES)
    ):
        text = _COMBINING.sub("", text)
    return text.casefold()


def split_words(folded: str) -> frozenset[str]:
    """The distinct \\w+ words (one C pass: _speedups.words)."""
    return _speedups.words(folded)


# --- headers ----------------------------------------------------------------------------------

_MSG_ID = re.compile(r"<[^<>\s]*>")


# The whole value one RFC 2047 encoded word in UTF-8 (what most encoded subjects are), its text
# printable ASCII without "?" or space: decode_header finds just this word in it.
_ONE_UTF8_WORD = re.compile(r"=\?utf-8\?([qb])\?([!->@-~]*)\?=", re.I | re.A)


def _decoded(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if "=?" not in text:  # no encoded word: decode_header and make_header give the text back
        return text
    word = _ONE_UTF8_WORD.fullmatch(text)
    if word is not None:
        # What decode_header and make_header do with one word, without their general machinery:
        # the same decoding calls, then the bytes as UTF-8, strictly (on any error they fail too,
        # and the general path below keeps the raw text).
        encoded = word.group(2)
        try:
            if word.group(1) in "qQ":
                data = email.quoprimime.header_decode(encoded).encode("raw-unicode-escape")
            else:
                data = email.base64mime.decode(encoded + "==="[: (4 - len(encoded) % 4) % 4])
            return data.decode("utf-8")
        except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
            pass
    return _decoded_by_email_header(text)


def _decoded_by_email_header(text: str) -> str:
    """decode_header + make_header, the general way (and the oracle of _decoded's short one)."""
    try:
        parts = email.header.decode_header(text)
        return str(email.header.make_header(parts))
    except Exception:  # malformed encoded-words or unknown charsets: keep the raw text
        return text


def _addresses(headers: Message, name: str) -> tuple[tuple[str, str], ...]:
    try:
        values = headers.get_all(name) or []
        return tuple(getaddresses([str(v) for v in values]))
    except Exception:  # getaddresses can trip on pathological input; no address then
        return ()


# A header field's first line as the stdlib's feed parser takes it: a name of RFC 5322 ftext right
# before the colon.
_FIELD_START = re.compile(rb"[!-9;-~]+:")


def _plain_headers(raw: bytes, block_end: int, body_start: int) -> Message | None:
    """The headers of raw[:body_start] as email.parser.BytesHeaderParser(policy=compat32) reads them,
    when the block is one it reads plainly: ASCII, line ends CRLF or LF, a first line and every
    non-continuation line a field (name, colon), an empty line after it. None otherwise: then the
    stdlib parser itself, with its treatment of defects, 8-bit bytes, lone CRs and mbox From lines.

    The same (name, value) pairs as its feed parser makes (compat32 header_source_parse: the value
    after the colon, leading blanks stripped, continuation lines kept with their line ends), at a
    fraction of the cost: the relay parses every message."""
    if body_start <= block_end:  # no empty line: everything is header
        return None
    block = raw[:block_end]
    if not block.isascii() or block.count(b"\r") != block.count(b"\r\n"):
        return None
    fields: list[list[bytes]] = []
    for line in block.splitlines(keepends=True):  # bytes.splitlines: CRLF, LF (no lone CR here)
        if line[0] in b" \t":
            if not fields:
                return None  # a first line that continues nothing: a defect the stdlib skips
            fields[-1].append(line)
        elif _FIELD_START.match(line):
            fields.append([line])
        else:
            return None
    headers = Message()
    for lines in fields:
        name, _, value = lines[0].decode("ascii").partition(":")
        value = value.lstrip(" \t")
        if len(lines) > 1:
            value += b"".join(lines[1:]).decode("ascii")
        headers.set_raw(name, value.rstrip("\r\n"))
    headers.set_payload("")  # what the header parser leaves as the payload of raw[:body_start]
    return headers


def _unpickled(
    raw: bytes,
    header_items: list[tuple[str, str]],
    from_addresses: tuple[str, ...],
    from_name: str,
    subject: str,
    reply_to: tuple[str, ...],
    in_reply_to: str,
    references: tuple[str, ...],
    body_offset: int,
) -> ParsedMessage:
    headers = Message()
    for name, value in header_items:
        headers.set_raw(name, value)
    headers.set_payload("")
    return ParsedMessage(
        headers=headers, from_addresses=from_addresses, from_name=from_name, subject=subject, raw=raw,
        reply_to=reply_to, in_reply_to=in_reply_to, references=references, body_offset=body_offset,
    )


# ParsedMessage.body_fields: the walked body, folded_visible, hrefs_lower, link_hosts (None: not made yet).
BodyFields = tuple[_Body, "str | None", "str | None", "tuple[str, ...] | None"]
BodyKey = tuple[int, tuple[tuple[bytes, bytes], ...], bytes]


def body_key(raw: bytes) -> BodyKey:
    """Everything a message's body fields (text and HTML parts, visible and hidden text, links,
    attachments, EICAR; their folded forms) are made of: the archive budget of its size, its top
    header block's MIME fields as part_head reads them, and the bytes after the header block. Two
    messages with the same key have the same body fields, whatever their other headers say."""
    block_end, body_start = mime.split_head(raw)
    return (archive_budget(len(raw)), tuple(mime.mime_fields(raw, 0, block_end)), raw[body_start:])


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse headers now and the body lazily. Never raises, whatever the bytes."""
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    block_end, offset = mime.split_head(raw)
    headers = _plain_headers(raw, block_end, offset)
    if headers is None:
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
# The structure is policies.mime's, the one the relay's rewriter reads too; here only what the
# rules make of each leaf.


class _Collector:
    def __init__(self, archive_bytes: int = MAX_ARCHIVE_BYTES) -> None:
        self.archive_budget = [archive_bytes]  # shared by every attachment of the message
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []
        self.eicar = False


def _walk_body(raw: bytes, offset: int) -> _Body:
    out = _Collector(archive_budget(len(raw)))
    try:
        for part in mime.walk(raw):
            _read(part, out)
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


def _read(part: mime.Part, out: _Collector) -> None:
    kind = part.kind
    if kind == mime.MESSAGE:
        if part.inner is not None and EICAR_MARK in part.inner:
            out.eicar = True
        return
    data = part.decoded()
    if kind == mime.ATTACHMENT:
        filename = part.head.filename
        found, found_in = _inspect(data, filename, 0, out.archive_budget)
        out.attachments.append(Attachment(filename, part.content_type, len(data), found, found_in))
        return
    if kind == mime.OTHER_TEXT:  # text/calendar, text/css…: not shown as body text, but may carry EICAR
        out.eicar = out.eicar or EICAR_MARK in data
        return
    text = part.text(data)
    (out.html if kind == mime.HTML else out.plain).append(text)
    if _EICAR_TEXT in text:
        out.eicar = True


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
            links.append(_new_link((text[start:end].rstrip(".,;:!?"), "", offset + start, offset + end)))
        chunks.append(text)
        offset += len(text) + 2
    for page in markup:
        # (href, anchor text, start, end) of each anchor, already offset: Link's fields
        text, hidden_text, anchors = _speedups.html_to_text(page, offset)
        links.extend(map(_new_link, anchors))
        # Bare URLs written as text in HTML (not inside an anchor) are links to the reader too.
        for start, end in _urls(text):
            if not any(s <= offset + start < e for _, _, s, e in anchors):
                links.append(_new_link((text[start:end].rstrip(".,;:!?"), "", offset + start, offset + end)))
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
    "BodyFields",
    "BodyKey",
    "DANGEROUS_KINDS",
    "Link",
    "ParsedMessage",
    "body_key",
    "fold",
    "iter_urls",
    "parse_message",
]
