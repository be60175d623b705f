"""DKIM signing of outgoing copies (RFC 6376 relaxed/relaxed, RFC 8463 Ed25519).

Canonicalisation is done here on bytes; the signature itself comes from
`cryptography` (dkimpy's pure-Python RSA costs ~9 ms a copy, OpenSSL ~0.5 ms).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from policies import mime

__all__ = [
    "DkimKey",
    "DkimKeyError",
    "DkimSigner",
    "OVERSIGNED_HEADERS",
    "SIGNED_HEADERS",
    "SplitMessage",
    "dkim_dns_record",
    "load_dkim_key",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# Order of the names in h=; only those present are signed, every instance of them.
SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "x-csa-complaints",
)
# Named once more than they occur, so a second copy added downstream breaks the
# signature (and an absent one cannot be added). X-CSA-Complaints only when set.
OVERSIGNED_HEADERS: frozenset[str] = frozenset(
    {"list-id", "list-unsubscribe", "list-unsubscribe-post"}
)
_OVERSIGNED_WHEN_PRESENT: frozenset[str] = frozenset({"x-csa-complaints"})

_MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers must not accept smaller keys
_LINE_WIDTH = 78
_SELECTOR_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")

_EOL = re.compile(rb"\r?\n")
_LONE_LF = re.compile(rb"(?<!\r)\n")


class DkimKeyError(ValueError):
    """A DKIM private key that cannot be read or used; the message names the file."""


@dataclass(frozen=True)
class DkimKey:
    domain: str  # lower-case, as it goes into d=
    selector: str
    private_key: PrivateKey
    algorithm: Algorithm

    def __post_init__(self) -> None:
        expected: Algorithm = (
            "ed25519-sha256"
            if isinstance(self.private_key, ed25519.Ed25519PrivateKey)
            else "rsa-sha256"
        )
        if self.algorithm != expected:
            raise DkimKeyError(f"algorithm {self.algorithm!r} does not match the key type")

    def sign_digest(self, digest: bytes) -> bytes:
        """The b= value for header data whose SHA-256 is `digest`."""
        return sign_digest(self.private_key, digest)

    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8, for the helper process's pipe only."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def sign_digest(private_key: PrivateKey, digest: bytes) -> bytes:
    """A DKIM b= value from the SHA-256 of the header data: RSA PKCS#1 v1.5 over the prehashed
    digest, or Ed25519 over the digest itself (RFC 8463 §3: PureEdDSA over the SHA-256 hash)."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(digest)
    return private_key.sign(digest, _PKCS1V15, _PREHASHED_SHA256)


# Immutable: made once, not per signature.
_PKCS1V15 = padding.PKCS1v15()
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())


def load_dkim_key(domain: str, selector: str, path: str | Path) -> DkimKey:
    """Read a PEM or DER private key (PKCS#1/PKCS#8 RSA, or PKCS#8 Ed25519)."""
    domain = domain.strip().rstrip(".").lower()
    if not _DOMAIN_RE.match(domain):
        raise DkimKeyError(f"DKIM domain {domain!r} is not a valid domain name")
    if not _SELECTOR_RE.match(selector):
        raise DkimKeyError(f"DKIM selector {selector!r} is not a valid selector")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"cannot read DKIM key {path}: {exc.strerror or exc}") from exc
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DkimKeyError(
            f"cannot parse DKIM key {path}: not an unencrypted PEM/DER RSA or Ed25519 private key"
        ) from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise DkimKeyError(
                f"DKIM key {path} is RSA-{key.key_size}; at least {_MIN_RSA_BITS} bits are required"
            )
        return DkimKey(domain, selector, key, "rsa-sha256")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return DkimKey(domain, selector, key, "ed25519-sha256")
    raise DkimKeyError(f"DKIM key {path} is a {type(key).__name__}; only RSA and Ed25519 are supported")


def dkim_dns_record(key: DkimKey) -> str:
    """The TXT value to publish at <selector>._domainkey.<domain>."""
    public = key.private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


class _Field(NamedTuple):  # a tuple: built for every header of every copy
    name: str  # lower-case
    raw: bytes  # the whole field with its continuation lines and line ends


Fields = Sequence[tuple[str, bytes]]  # (lower-case name, the field's bytes with line ends), in order


class SplitMessage(NamedTuple):
    """A message whose header block is read already, as _split reads it (relay.delivery.personalize
    renders copies from one parse of their message): prepare_all takes its fields as they are."""

    message: bytes
    fields: Fields  # every named field
    body_start: int
    eol: bytes
    # message[body_start:] in pieces, those no copy changes the same in copy after copy (a template's
    # runs of lines): their canonical forms are kept (_Shared.relaxed_parts). None: the body as one.
    body_parts: Sequence[bytes] | None = None

# Bounds of what a DkimSigner keeps from one message for the next (_Shared.renewed).
_MEMO_ENTRIES = 1024
_MEMO_FIELD_BYTES = 2048
_LEAD_ENTRIES = 64


class DkimSigner:
    """Signs each copy once per configured key of its From domain."""

    def __init__(self, keys: Sequence[DkimKey]) -> None:
        by_domain: dict[str, list[DkimKey]] = {}
        for key in keys:
            by_domain.setdefault(_domain_key(key.domain), []).append(key)
        self._by_domain = {d: tuple(ks) for d, ks in by_domain.items()}
        self._shared = _Shared()

    def keys_for(self, domain: str) -> tuple[DkimKey, ...]:
        return self._by_domain.get(_domain_key(domain), ())

    def sign(self, message: bytes, *, now: int | None = None) -> bytes:
        """Return `message` with one DKIM-Signature prepended per matching key."""
        job = self.prepare(message, now=now)
        if job is None:
            return message
        return job.finish([key.sign_digest(digest) for key, digest in zip(job.keys, job.digests)])

    def prepare(self, message: bytes, *, now: int | None = None) -> SigningJob | None:
        """Everything but the private-key step, which needs only each field's digest (and may run
        in another process); None when no key covers the From domain."""
        return self.prepare_all((message,), now=now)[0]

    def prepare_all(self, messages: Sequence[bytes | SplitMessage], *, now: int | None = None) -> list[SigningJob | None]:
        """prepare() of each message, for the copies of one message: what they have in common (the
        From field and its keys, the canonical form of every field no copy changes, the start of the
        signature field, a body that is the same in all) is worked out once, not per copy; and what
        the messages of a campaign have in common (the From field's keys, the canonical form of
        fields that repeat, the h= list) once for them all (_Shared.renewed)."""
        if not self._by_domain:
            return [None] * len(messages)
        timestamp = int(time.time()) if now is None else int(now)
        shared = self._shared.renewed(timestamp)
        jobs: list[SigningJob | None] = []
        for item in messages:
            parts = None
            if isinstance(item, SplitMessage):
                message, fields, body_start, eol, parts = item
            else:
                message = item
                fields, body_start, eol = _split(message)
            keys = shared.keys(self, fields)
            if not keys:
                jobs.append(None)
                continue
            body_hash = shared.parts_hash(parts) if parts is not None else None
            if body_hash is None:  # a message in one piece (or pieces that cannot be canonicalised apart)
                body = message[body_start:]
                body_hash = shared.body_hashes.get(body)
                if body_hash is None:
                    body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()
                    shared.body_hashes[body] = body_hash
            names, picks = shared.names(fields)
            signed = _signed_header_data(fields, picks, shared.canonical)
            unsigned = [shared.fold_start(key, timestamp, names).finish(body_hash, eol) for key in keys]
            digests = [hashlib.sha256(signed + _relaxed_header(field)).digest() for field in unsigned]
            jobs.append(SigningJob(message, keys, unsigned, digests, eol))
        return jobs

    @property
    def keys(self) -> tuple[DkimKey, ...]:
        return tuple(k for ks in self._by_domain.values() for k in ks)


class SigningJob:
    """One message's DKIM-Signature fields, short of their b= values."""

    __slots__ = ("message", "keys", "unsigned", "digests", "eol")

    def __init__(self, message: bytes, keys: tuple[DkimKey, ...], unsigned: list[bytes], digests: list[bytes], eol: bytes) -> None:
        self.message = message
        self.keys = keys
        self.unsigned = unsigned
        self.digests = digests
        self.eol = eol

    def finish(self, signatures: Sequence[bytes]) -> bytes:
        """The message with its signature fields on top, the first configured key first."""
        headers = []
        for unsigned, signature in zip(self.unsigned, signatures, strict=True):
            last_line = len(unsigned) - unsigned.rfind(b"\n") - 1
            headers.append(unsigned + _fold_base64(base64.b64encode(signature), _LINE_WIDTH - last_line, self.eol))
        headers.append(self.message)
        return b"".join(headers)  # one copy of the message, not two


def _domain_key(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _split(message: bytes) -> tuple[list[_Field], int, bytes]:
    """Header fields, offset of the body, and the message's line ending: the split of policies.mime,
    the one the rules and the rewriter read."""
    head = mime.read_head(message)
    fields = [_Field(f.name, message[f.start : f.end]) for f in head.fields if f.name]
    return fields, head.body_start, mime.eol_of(message)


def _from_domain(fields: Fields) -> str | None:
    for name, raw in fields:
        if name == "from":
            value = _EOL.sub(b"", raw.split(b":", 1)[1]).decode("utf-8", "replace")
            for _, address in getaddresses([value]):
                if "@" in address:
                    return address.rsplit("@", 1)[1].strip().rstrip(">").lower()
            return None
    return None


def _header_names(fields: Fields) -> list[str]:
    counts: dict[str, int] = {}
    for name, _ in fields:
        counts[name] = counts.get(name, 0) + 1
    names: list[str] = []
    for name in SIGNED_HEADERS:
        n = counts.get(name, 0)
        if name in OVERSIGNED_HEADERS or (name in _OVERSIGNED_WHEN_PRESENT and n):
            n += 1
        names.extend([name] * n)
    return names


def _relaxed_header(raw: bytes) -> bytes:
    name, _, value = raw.partition(b":")
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    # Every run of spaces and tabs to one space, as _relaxed_middle does it: sre over the folded
    # DKIM-Signature field of every copy (tabs after each fold) cost more than the rest of its hash.
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    value = value.strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value


def _picks(fields: Fields, names: list[str]) -> tuple[int, ...]:
    """Which field each name of h= signs, by its index in `fields`: RFC 6376 §5.4.2, repeated names
    take instances from the bottom up; a name with no instance left signs nothing (that is what
    makes over-signing work). The same for every message with the same field names."""
    remaining: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(fields):
        remaining.setdefault(name, []).append(i)
    picks = []
    for name in names:
        stack = remaining.get(name)
        if stack:
            picks.append(stack.pop())
    return tuple(picks)


def _signed_header_data(fields: Fields, picks: tuple[int, ...], canonical: dict[bytes, bytes]) -> bytes:
    # `canonical`: the relaxed form (with CRLF) of fields already seen, by their bytes.
    out: list[bytes] = []
    for i in picks:
        raw = fields[i][1]
        line = canonical.get(raw)
        if line is None:
            line = _relaxed_header(raw) + b"\r\n"
            if len(raw) <= _MEMO_FIELD_BYTES:
                canonical[raw] = line
        out.append(line)
    return b"".join(out)


class _Shared:
    """What the copies of one message have in common, found out once (DkimSigner.prepare_all); kept
    by the signer for its next messages, all but the body hashes (renewed)."""

    __slots__ = ("from_keys", "canonical", "body_parts", "body_hashes", "names_by", "starts", "timestamp", "leads")

    def __init__(self) -> None:
        self.from_keys: dict[bytes | None, tuple[DkimKey, ...]] = {}
        self.canonical: dict[bytes, bytes] = {}
        self.body_parts: dict[bytes, bytes] = {}  # _relaxed_middle of body pieces seen, by their bytes
        self.body_hashes: dict[bytes, str] = {}
        self.names_by: dict[tuple[str, ...], tuple[list[str], tuple[int, ...]]] = {}
        self.starts: dict[tuple[int, int, tuple[str, ...]], _FoldStart] = {}
        self.timestamp: int | None = None
        # SHA-256 states that have hashed a run of canonical pieces that start bodies (parts_hash), with
        # that run joined, by the run's pieces.
        self.leads: dict[tuple[bytes, ...], tuple[Any, bytes]] = {}

    def renewed(self, timestamp: int) -> _Shared:
        """Ready for the next message signed at `timestamp`: the messages of a campaign share their
        From field (and getaddresses is slow), most fields and their h= list. Each table is bounded
        (emptied when it reaches _MEMO_ENTRIES); the fold starts last a second (t= changes), the
        body hashes one message."""
        self.body_hashes = {}
        for table in (self.from_keys, self.canonical, self.body_parts, self.names_by, self.starts):
            if len(table) >= _MEMO_ENTRIES:
                table.clear()
        if len(self.leads) >= _LEAD_ENTRIES:  # each holds a run of body text: fewer (a campaign needs one)
            self.leads.clear()
        if timestamp != self.timestamp:
            self.starts.clear()
            self.timestamp = timestamp
        return self

    def keys(self, signer: DkimSigner, fields: Fields) -> tuple[DkimKey, ...]:
        first_from = next((raw for name, raw in fields if name == "from"), None)
        keys = self.from_keys.get(first_from)
        if keys is None:
            domain = _from_domain(fields)
            keys = signer.keys_for(domain) if domain else ()
            if first_from is None or len(first_from) <= _MEMO_FIELD_BYTES:
                self.from_keys[first_from] = keys
        return keys

    def relaxed_parts(self, parts: Sequence[bytes]) -> bytes | None:
        """_relaxed_body(b"".join(parts)), each piece canonicalised on its own (a piece seen before
        not again): the same bytes when no whitespace run, line end or CRLF spans two pieces, which
        is checked at each seam; None when one might (the caller canonicalises the whole)."""
        found = self._relaxed_pieces(parts)
        return None if found is None else _relaxed_end(b"".join(found[0]))

    def parts_hash(self, parts: Sequence[bytes]) -> str | None:
        """The bh= value of the body relaxed_parts(parts) gives (None where it gives None). The pieces
        it starts with that were seen before (a template's text up to its first URL, the same in
        every copy) are hashed once: their state is kept and resumed, copy after copy."""
        found = self._relaxed_pieces(parts)
        if found is None:
            return None
        pieces, seen = found
        body = _relaxed_end(b"".join(pieces))
        if seen:
            lead = tuple(pieces[:seen])
            kept = self.leads.get(lead)
            if kept is None:
                joined = b"".join(lead)
                kept = self.leads[lead] = (hashlib.sha256(joined), joined)  # bounded with the others (renewed)
            state, joined = kept
            # _relaxed_end changes only the end of a body: unless it reached into the run, the body starts with it.
            if body.startswith(joined):
                resumed = state.copy()
                resumed.update(memoryview(body)[len(joined) :])
                return base64.b64encode(resumed.digest()).decode()
        return base64.b64encode(hashlib.sha256(body).digest()).decode()

    def _relaxed_pieces(self, parts: Sequence[bytes]) -> tuple[list[bytes], int] | None:
        """The canonical form of each non-empty piece (relaxed_parts joins them), and how many of
        them at the start were seen before."""
        memo = self.body_parts
        out = []
        seen = -1  # the pieces seen before at the start, once a piece was not
        last = b""  # the last byte of the pieces so far
        for piece in parts:
            if not piece:
                continue
            first = piece[:1]
            if (last == b"\r" and first == b"\n") or (last in _WSP and first in _WSP_OR_EOL):
                return None
            last = piece[-1:]
            canonical = memo.get(piece)
            if canonical is None:
                if seen < 0:
                    seen = len(out)
                canonical = memo[piece] = _relaxed_middle(piece)  # bounded with the others (renewed)
            out.append(canonical)
        return out, len(out) if seen < 0 else seen

    def names(self, fields: Fields) -> tuple[list[str], tuple[int, ...]]:
        """The h= list of a message with these fields, and the field each name signs (_picks)."""
        present = tuple([name for name, _ in fields])
        found = self.names_by.get(present)
        if found is None:
            names = _header_names(fields)
            found = self.names_by[present] = (names, _picks(fields, names))
        return found

    def fold_start(self, key: DkimKey, timestamp: int, names: list[str]) -> _FoldStart:
        memo = (id(key), timestamp, tuple(names))
        start = self.starts.get(memo)
        if start is None:
            start = self.starts[memo] = _FoldStart(_tags(key, timestamp), names)
        return start


_WSP = (b" ", b"\t")
_WSP_OR_EOL = (b" ", b"\t", b"\r", b"\n")


def _relaxed_body(body: bytes) -> bytes:
    return _relaxed_end(_relaxed_middle(body))


def _relaxed_middle(body: bytes) -> bytes:
    """The relaxed canonical form of lines (RFC 6376 §3.4.4, lone LFs made CRLFs), short of what
    happens at the end of the body (_relaxed_end)."""
    # No regex where a bytes method does: sre scanning 5 KB costs as much as the rest of a copy.
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _LONE_LF.sub(b"\r\n", body)
    # Every run of spaces and tabs to one space: tabs to spaces keeps each run's length, then halving
    # the runs until none is longer than one (a run of n spaces takes log2(n) passes).
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    return body.replace(b" \r\n", b"\r\n")


def _relaxed_end(body: bytes) -> bytes:
    """The end of a canonical body: no empty lines, one CRLF (none for an empty body)."""
    # An unterminated last line gets its CRLF on the wire (SMTP requires it), so its
    # trailing WSP goes like any other line's (Mail::DKIM agrees; dkimpy keeps it).
    body = body.rstrip(b" ")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    if end and end == len(body) - 2:
        return body  # one line end at the end already: the common case, without two copies
    return body[:end] + b"\r\n" if end else b""


def _tags(key: DkimKey, timestamp: int) -> list[str]:
    return [
        "v=1;",
        f"a={key.algorithm};",
        "c=relaxed/relaxed;",
        f"d={key.domain};",
        f"s={key.selector};",
        f"t={timestamp};",
    ]


def _fold(tags: list[str], names: list[str], body_hash: str, eol: bytes) -> bytes:
    return _FoldStart(tags, names).finish(body_hash, eol)


def _fold_tokens(lines: list[str], line: str, tokens: list[str]) -> str:
    """Append `tokens` to the field being folded (`lines` done, `line` open); the open line after."""
    for token in tokens:
        # "b=" wants room for a useful first chunk of the signature after it.
        room_needed = len(token) + (16 if token == "b=" else 0)
        if len(line) + 1 + room_needed > _LINE_WIDTH:
            lines.append(line)
            line = "\t" + token
        else:
            line = line + token if line.endswith(":") and line.startswith("\t") else f"{line} {token}"
    return line


class _FoldStart:
    """The DKIM-Signature field folded up to its bh= tag: the same for every copy signed by one key
    at one time with the same h= list."""

    __slots__ = ("lines", "line")

    def __init__(self, tags: list[str], names: list[str]) -> None:
        self.lines: list[str] = []
        self.line = _fold_tokens(self.lines, "DKIM-Signature:", [*tags, *_h_tokens(names)])

    def finish(self, body_hash: str, eol: bytes) -> bytes:
        lines = list(self.lines)
        lines.append(_fold_tokens(lines, self.line, [f"bh={body_hash};", "b="]))
        return eol.join(s.encode("ascii") for s in lines)


def _h_tokens(names: list[str]) -> list[str]:
    # FWS is allowed after each ':' of h=, which lets a long list fold.
    if not names:
        return ["h=;"]
    parts = [f"{n}:" for n in names[:-1]] + [f"{names[-1]};"]
    parts[0] = "h=" + parts[0]
    merged: list[str] = []
    for part in parts:
        if merged and len(merged[-1]) + len(part) <= 40:
            merged[-1] += part
        else:
            merged.append(part)
    return merged


def _fold_base64(value: bytes, room: int, eol: bytes) -> bytes:
    # "b=" sits at the end of the last line; fill that line, then fold.
    first = value[:room]
    rest = [value[i : i + 72] for i in range(room, len(value), 72)]
    return first + b"".join(eol + b"\t" + chunk for chunk in rest) + eol
