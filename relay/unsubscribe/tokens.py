"""Unsubscribe tokens (docs/SPEC.md §6): opaque, authenticated, URL-safe claims and short mailto ids.

URL token (version 2): base64url (no padding) of a version byte and the AES-256-SIV (RFC 5297)
encryption of issue time, scope, topic and recipient, zero-padded to a multiple of 16 bytes. SIV
authenticates and encrypts in one step and needs no nonce: nobody who sees the URL can read the
address (or its exact length), and nobody without a secret can make or alter one. Each configured
secret gives its own key (HKDF-SHA256); the first issues, all verify.

Version 1 tokens (base64url of the claims in clear plus a 128-bit truncated HMAC-SHA256), issued
before version 2, still verify, so the mail already sent keeps working; none are issued any more.

Mailto and VERP bounce tokens: lower-case base32 of a stored delivery id plus a 128-bit truncated
HMAC (each with its own context), so `unsubscribe+TOKEN` and `bounce+TOKEN` fit RFC 5321's
64-character local part and survive case-folding MTAs. They name a delivery, never an address.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["MAILTO_PREFIX", "TokenClaims", "TokenCodec"]

MAILTO_PREFIX = "unsubscribe+"

_LEGACY_VERSION = 1  # claims in clear + HMAC: verified, never issued
_VERSION = 2  # AES-SIV
_MAC_BYTES = 16
_SIV_BYTES = 16
_PAD_BYTES = 16  # the token's length tells the address's length only to this granularity
_MIN_SECRET_BYTES = 16
_MAX_FIELD_BYTES = 255  # scope and topic carry a one-byte length
_MAX_RECIPIENT_BYTES = 512
_MAX_TIME = 1 << 40  # five bytes; far beyond any real clock
_MAX_DELIVERY_ID = (1 << 64) - 1
_MAX_PLAIN = 5 + 2 + 2 * _MAX_FIELD_BYTES + 2 + _MAX_RECIPIENT_BYTES
_MAX_RAW = max(
    1 + 5 + 2 + 2 * _MAX_FIELD_BYTES + _MAX_RECIPIENT_BYTES + _MAC_BYTES,  # version 1
    1 + _SIV_BYTES + _MAX_PLAIN + _PAD_BYTES,  # version 2
)
_MAX_URL_TOKEN_CHARS = 4 * _MAX_RAW // 3 + 4
# Domain separation: a URL MAC can never be replayed as a mailto MAC or vice versa.
_URL_CONTEXT = b"consent-relay unsubscribe url v1\x00"
_MAILTO_CONTEXT = b"consent-relay unsubscribe mailto v1\x00"
_BOUNCE_CONTEXT = b"consent-relay bounce verp v1\x00"  # bounce+ID@: another MAC, so neither token is the other
_SIV_INFO = b"consent-relay unsubscribe url v2 aes-siv"
_SIV_AAD = [bytes((_VERSION,)) + b"consent-relay unsubscribe url"]
_VERSION_BYTE = bytes((_VERSION,))
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_URL_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
_MAILTO_ALPHABET = re.compile(r"[A-Za-z2-7]+")


@dataclass(frozen=True)
class TokenClaims:
    scope: str
    topic: str
    recipient: str
    issued_at: int


class TokenCodec:
    """Issues with the first secret; verifies with any (secret rotation)."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one unsubscribe secret is required")
        for secret in secrets:
            if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_BYTES:
                raise ValueError(
                    f"unsubscribe secrets must be at least {_MIN_SECRET_BYTES} bytes"
                )
        self._secrets = tuple(secrets)
        self._sivs = tuple(AESSIV(_siv_key(secret)) for secret in self._secrets)
        # Each secret's MAC for each context, keyed once: two tokens a copy (mailto, bounce).
        self._macs = {
            context: tuple(_KeyedMac(secret, context) for secret in self._secrets)
            for context in (_URL_CONTEXT, _MAILTO_CONTEXT, _BOUNCE_CONTEXT)
        }

    # -- URL tokens ---------------------------------------------------------------

    def issue(self, scope: str, topic: str, recipient: str, issued_at: int) -> str:
        scope_b, topic_b, rcpt_b = scope.encode("utf-8"), topic.encode("utf-8"), recipient.encode("utf-8")
        if len(scope_b) > _MAX_FIELD_BYTES or len(topic_b) > _MAX_FIELD_BYTES:
            raise ValueError(f"scope and topic must be at most {_MAX_FIELD_BYTES} bytes")
        if not rcpt_b or len(rcpt_b) > _MAX_RECIPIENT_BYTES:
            raise ValueError(f"recipient must be 1 to {_MAX_RECIPIENT_BYTES} bytes")
        if not 0 <= issued_at < _MAX_TIME:
            raise ValueError("issued_at out of range")
        size = 5 + 1 + len(scope_b) + 1 + len(topic_b) + 2 + len(rcpt_b)
        plain = b"".join((  # one join, not seven concatenations: one token a copy
            issued_at.to_bytes(5, "big"),
            bytes((len(scope_b),)),
            scope_b,
            bytes((len(topic_b),)),
            topic_b,
            len(rcpt_b).to_bytes(2, "big"),
            rcpt_b,
            bytes(-size % _PAD_BYTES),
        ))
        sealed = self._sivs[0].encrypt(plain, _SIV_AAD)
        # base64.urlsafe_b64encode's steps, without its Python-level wrappers.
        encoded = binascii.b2a_base64(_VERSION_BYTE + sealed, newline=False).translate(_URLSAFE)
        return encoded.rstrip(b"=").decode("ascii")

    def verify(self, token: str) -> TokenClaims | None:
        raw = _decode_b64url(token)
        if raw is None:
            return None
        if raw[0] == _VERSION:
            return self._open(raw[1:])
        if raw[0] != _LEGACY_VERSION or len(raw) <= _MAC_BYTES:
            return None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not self._mac_matches(_URL_CONTEXT, payload, mac):
            return None
        return _parse_legacy_claims(payload)

    def _open(self, sealed: bytes) -> TokenClaims | None:
        if len(sealed) < _SIV_BYTES + _PAD_BYTES or (len(sealed) - _SIV_BYTES) % _PAD_BYTES:
            return None
        plain = None
        for siv in self._sivs:
            # Try every secret so timing does not depend on which one matched.
            try:
                opened = siv.decrypt(sealed, _SIV_AAD)
            except InvalidTag:
                continue
            plain = plain if plain is not None else opened
        return _parse_claims(plain) if plain is not None else None

    # -- mailto tokens ------------------------------------------------------------

    def issue_mailto(self, delivery_id: int) -> str:
        return self._issue_id(_MAILTO_CONTEXT, delivery_id)

    def verify_mailto(self, token: str) -> int | None:
        return self._verify_id(_MAILTO_CONTEXT, token)

    def issue_bounce(self, delivery_id: int) -> str:
        """The ID of a VERP envelope sender bounce+ID@ (docs/SPEC.md §15): lower-case, at most 40 characters."""
        return self._issue_id(_BOUNCE_CONTEXT, delivery_id)

    def verify_bounce(self, token: str) -> int | None:
        return self._verify_id(_BOUNCE_CONTEXT, token)

    def _issue_id(self, context: bytes, delivery_id: int) -> str:
        if not 0 <= delivery_id <= _MAX_DELIVERY_ID:
            raise ValueError("delivery id out of range")
        id_bytes = delivery_id.to_bytes(max(1, (delivery_id.bit_length() + 7) // 8), "big")
        return _b32_lower(id_bytes + self._macs[context][0].mac(id_bytes))

    def _verify_id(self, context: bytes, token: str) -> int | None:
        if not isinstance(token, str) or not 27 <= len(token) <= 40:
            return None
        if not _MAILTO_ALPHABET.fullmatch(token):
            return None
        upper = token.upper()
        try:
            raw = base64.b32decode(upper + "=" * (-len(upper) % 8))
        except (binascii.Error, ValueError):
            return None
        # Several strings decode to the same bytes (unused low bits); accept only ours.
        if base64.b32encode(raw).rstrip(b"=").decode("ascii") != upper:
            return None
        id_bytes, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not 1 <= len(id_bytes) <= 8 or (len(id_bytes) > 1 and id_bytes[0] == 0):
            return None
        if not self._mac_matches(context, id_bytes, mac):
            return None
        return int.from_bytes(id_bytes, "big")

    def _mac_matches(self, context: bytes, payload: bytes, mac: bytes) -> bool:
        ok = False
        for keyed in self._macs[context]:
            # Check every secret so timing does not depend on which one matched.
            ok |= hmac.compare_digest(keyed.mac(payload), mac)
        return ok


class _KeyedMac:
    """A token's MAC: HMAC-SHA256(secret, context + payload) truncated to _MAC_BYTES, from an HMAC
    that has taken the key and the context once: a copy of its state per token, not the key's
    padding and its two compressions again (hmac.digest starts from the key each call). The same
    bytes as hmac.digest(secret, context + payload, "sha256")[:_MAC_BYTES]."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes, context: bytes) -> None:
        self._keyed = hmac.new(secret, context, "sha256")

    def mac(self, payload: bytes) -> bytes:
        state = self._keyed.copy()
        state.update(payload)
        return state.digest()[:_MAC_BYTES]


_B32_LOWER = bytes.maketrans(bytes(range(32)), b"abcdefghijklmnopqrstuvwxyz234567")
_B32_STEPS: dict[int, tuple[tuple[int, int, int], ...]] = {}


def _b32_lower(data: bytes) -> str:
    """base64.b32encode(data) without padding, lower-case, in a few integer operations: each 5-bit
    group of `data` is moved to a byte of its own and the bytes are translated (the standard library
    loops in Python over every 5 bytes; two tokens a copy made that a visible share of it)."""
    bits = 8 * len(data)
    groups = (bits + 4) // 5
    steps = _B32_STEPS.get(groups)
    if steps is None:
        steps = _B32_STEPS[groups] = _b32_spread(groups)
    value = int.from_bytes(data, "big") << (5 * groups - bits)  # zero bits to whole groups, as base32 does
    for keep, moved, shift in steps:
        value = (value & keep) | ((value & moved) << shift)
    return value.to_bytes(groups, "big").translate(_B32_LOWER).decode("ascii")


def _b32_spread(groups: int) -> tuple[tuple[int, int, int], ...]:
    """The steps that take group j (counted from the least significant) from bit 5j to bit 8j: it has
    3j to go, and each step k moves every group whose j has bit k set by 3 * 2**k, highest k first.
    Groups never overlap on the way (a group's place only grows with j, at least 5 bits apart)."""
    steps = []
    for k in reversed(range(max(1, groups - 1).bit_length())):
        moved = 0
        for j in range(groups):
            if j >> k & 1:
                done = j >> (k + 1) << (k + 1)  # the moves of the higher bits of j, made already
                moved |= 31 << (5 * j + 3 * done)
        steps.append((~moved, moved, 3 << k))
    return tuple(steps)


def _decode_b64url(token: object) -> bytes | None:
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_URL_TOKEN_CHARS:
        return None
    if len(token) % 4 == 1 or not _URL_ALPHABET.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # Reject non-canonical spellings so that changing any character changes the bytes.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    return raw


def _siv_key(secret: bytes) -> bytes:
    # 64 bytes: AES-256-SIV (one half authenticates, the other encrypts).
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_SIV_INFO).derive(secret)


def _parse_claims(plain: bytes) -> TokenClaims | None:
    """Version 2 claims. Only reached for plaintext we sealed, but stay total: never raise."""
    try:
        issued_at = int.from_bytes(plain[0:5], "big")
        pos = 5
        scope_len = plain[pos]
        scope = plain[pos + 1 : pos + 1 + scope_len]
        pos += 1 + scope_len
        topic_len = plain[pos]
        topic = plain[pos + 1 : pos + 1 + topic_len]
        pos += 1 + topic_len
        rcpt_len = int.from_bytes(plain[pos : pos + 2], "big")
        recipient = plain[pos + 2 : pos + 2 + rcpt_len]
        padding = plain[pos + 2 + rcpt_len :]
        if len(scope) != scope_len or len(topic) != topic_len or not recipient or len(recipient) != rcpt_len:
            return None
        if len(padding) >= _PAD_BYTES or padding.strip(b"\x00"):
            return None
        return TokenClaims(scope.decode("utf-8"), topic.decode("utf-8"), recipient.decode("utf-8"), issued_at)
    except (IndexError, UnicodeDecodeError):
        return None


def _parse_legacy_claims(payload: bytes) -> TokenClaims | None:
    """Version 1 claims (in clear, MAC already checked). Stay total: never raise."""
    try:
        if payload[0] != _LEGACY_VERSION:
            return None
        (issued_hi, issued_lo) = struct.unpack(">BI", payload[1:6])
        issued_at = (issued_hi << 32) | issued_lo
        pos = 6
        scope_len = payload[pos]
        scope = payload[pos + 1 : pos + 1 + scope_len]
        pos += 1 + scope_len
        topic_len = payload[pos]
        topic = payload[pos + 1 : pos + 1 + topic_len]
        pos += 1 + topic_len
        recipient = payload[pos:]
        if len(scope) != scope_len or len(topic) != topic_len or not recipient:
            return None
        return TokenClaims(
            scope.decode("utf-8"), topic.decode("utf-8"), recipient.decode("utf-8"), issued_at
        )
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
