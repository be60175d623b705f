"""Unsubscribe tokens: round trips, forgery, tampering, rotation (docs/SPEC.md §6)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.unsubscribe.tokens import MAILTO_PREFIX, TokenClaims, TokenCodec

OLD = b"old-secret-0123456789abcdef"
NEW = b"new-secret-fedcba9876543210"
OTHER = b"someone-elses-secret-000000"

codec = TokenCodec([NEW, OLD])

# Version 1 tokens issued with OLD by the code before issue 15 (claims in clear plus an HMAC):
# mail already sent carries them, so they must keep working.
LEGACY_ANNA = "AQBpMiCABHNob3AKbmV3c2xldHRlcmFubmFAZXhhbXBsZS5ubNBjlB8xKIaS_ALLe9mTZXc"
LEGACY_BOB = "AQAAAAAFB2FjY3Q6NDIGd2Vla2x5Ym9iQGV4YW1wbGUub3JnRKY5xUqqKkcsYtRdbcfh4A"

URL_CHARS = string.ascii_letters + string.digits + "-_"
scopes = st.text(min_size=0, max_size=40)
recipients = st.emails() | st.text(min_size=1, max_size=80)
times = st.integers(min_value=0, max_value=2**40 - 1)
delivery_ids = st.integers(min_value=0, max_value=2**64 - 1)


def test_round_trip_and_shape() -> None:
    token = codec.issue("acct:42", "weekly", "Bob.Smith@Example.org", 1_700_000_000)
    assert set(token) <= set(URL_CHARS)
    # Short enough for a header line next to the mailto URI.
    assert len(token) <= 100
    assert codec.verify(token) == TokenClaims("acct:42", "weekly", "Bob.Smith@Example.org", 1_700_000_000)


def test_utf8_recipient_and_wildcard_topic() -> None:
    token = codec.issue("org:7", "*", "jörg@exämple.de", 0)
    assert codec.verify(token) == TokenClaims("org:7", "*", "jörg@exämple.de", 0)


@given(scope=scopes, topic=scopes, recipient=recipients, issued_at=times)
def test_round_trip_any_claims(scope: str, topic: str, recipient: str, issued_at: int) -> None:
    token = codec.issue(scope, topic, recipient, issued_at)
    assert codec.verify(token) == TokenClaims(scope, topic, recipient, issued_at)


def test_first_secret_signs_all_verify() -> None:
    old_only = TokenCodec([OLD])
    new_first = TokenCodec([NEW, OLD])
    issued_before_rotation = old_only.issue("acct:1", "news", "a@example.org", 10)
    assert new_first.verify(issued_before_rotation) is not None
    issued_after = new_first.issue("acct:1", "news", "a@example.org", 10)
    assert issued_after != issued_before_rotation
    assert TokenCodec([NEW]).verify(issued_after) is not None
    # After the old secret is retired, its tokens stop working.
    assert TokenCodec([NEW]).verify(issued_before_rotation) is None
    assert old_only.verify(issued_after) is None

    mailto_old = old_only.issue_mailto(99)
    assert new_first.verify_mailto(mailto_old) == 99
    assert TokenCodec([NEW]).verify_mailto(mailto_old) is None


def test_forged_with_another_secret_is_refused() -> None:
    forger = TokenCodec([OTHER])
    assert codec.verify(forger.issue("acct:42", "weekly", "bob@example.org", 1)) is None
    assert codec.verify_mailto(forger.issue_mailto(7)) is None


def test_url_and_mailto_macs_are_not_interchangeable() -> None:
    mailto = codec.issue_mailto(12345)
    assert codec.verify(mailto) is None
    url = codec.issue("a", "b", "c@d", 1)
    assert codec.verify_mailto(url.lower()) is None


@settings(max_examples=300)
@given(token=st.text(max_size=200) | st.text(alphabet=URL_CHARS, max_size=200))
def test_random_strings_never_verify_and_never_raise(token: str) -> None:
    assert codec.verify(token) is None
    assert codec.verify_mailto(token) is None
    assert codec.verify_mailto(token.lower()) is None


@pytest.mark.parametrize("garbage", [None, 42, b"bytes", "", "=", "a" * 10_000, "A===", "\x00"])
def test_garbage_inputs_are_refused(garbage: object) -> None:
    assert codec.verify(garbage) is None  # type: ignore[arg-type]
    assert codec.verify_mailto(garbage) is None  # type: ignore[arg-type]


@settings(max_examples=200)
@given(
    scope=scopes,
    recipient=st.emails(),
    issued_at=times,
    position=st.integers(min_value=0),
    replacement=st.sampled_from(URL_CHARS + "=+/. "),
)
def test_tampering_any_character_fails(
    scope: str, recipient: str, issued_at: int, position: int, replacement: str
) -> None:
    token = codec.issue(scope, "topic", recipient, issued_at)
    i = position % len(token)
    if token[i] == replacement:
        replacement = "A" if replacement != "A" else "B"
    assert codec.verify(token[:i] + replacement + token[i + 1 :]) is None


@given(scope=scopes, recipient=st.emails(), issued_at=times, cut=st.integers(min_value=1, max_value=8))
def test_truncated_or_extended_tokens_fail(scope: str, recipient: str, issued_at: int, cut: int) -> None:
    token = codec.issue(scope, "t", recipient, issued_at)
    assert codec.verify(token[:-cut]) is None
    assert codec.verify(token + "A" * cut) is None
    assert codec.verify(token[cut:]) is None


def test_changed_claim_with_recomputed_encoding_fails() -> None:
    import base64

    # A version 1 token (claims in clear) as issued before issue 15; version 2 hides the claims.
    token = LEGACY_BOB
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[raw.index(b"bob")] = ord("r")  # unsubscribe "rob" instead of "bob"
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert codec.verify(forged) is None


@given(delivery_id=delivery_ids)
def test_mailto_round_trip_fits_local_part_and_survives_case_folding(delivery_id: int) -> None:
    token = codec.issue_mailto(delivery_id)
    assert token == token.lower()
    assert set(token) <= set(string.ascii_lowercase + "234567")
    assert len(MAILTO_PREFIX + token) <= 64
    assert codec.verify_mailto(token) == delivery_id
    assert codec.verify_mailto(token.lower()) == delivery_id
    assert codec.verify_mailto(token.upper()) == delivery_id


@settings(max_examples=200)
@given(delivery_id=delivery_ids, position=st.integers(min_value=0), replacement=st.sampled_from("abcdefghijklmnopqrstuvwxyz234567018+"))
def test_mailto_tampering_any_character_fails(delivery_id: int, position: int, replacement: str) -> None:
    token = codec.issue_mailto(delivery_id)
    i = position % len(token)
    if token[i] == replacement:
        replacement = "a" if replacement != "a" else "b"
    assert codec.verify_mailto(token[:i] + replacement + token[i + 1 :]) is None


def test_mailto_small_ids_are_short() -> None:
    assert len(codec.issue_mailto(1)) == 28
    assert len(codec.issue_mailto(2**64 - 1)) == 39


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("x" * 256, "t", "r@x", 1), "scope and topic"),
        (("s", "t", "", 1), "recipient"),
        (("s", "t", "r@x", -1), "issued_at"),
        (("s", "t", "r@x", 2**40), "issued_at"),
    ],
)
def test_issue_rejects_out_of_range_claims(args: tuple[str, str, str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec.issue(*args)


def test_mailto_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError):
        codec.issue_mailto(-1)
    with pytest.raises(ValueError):
        codec.issue_mailto(2**64)


def test_secrets_are_required_and_long_enough() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TokenCodec([])
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenCodec([b"short"])


def test_non_canonical_spelling_of_the_same_bytes_is_refused() -> None:
    # The last character of an unpadded base64/base32 string carries unused low bits;
    # flipping them decodes to identical bytes, yet the token must not verify.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for recipient in ("a@example.org", "ab@example.org", "abc@example.org"):
        token = codec.issue("s", "t", recipient, 1)
        if len(token) % 4 == 0:
            continue
        last = alphabet.index(token[-1])
        twin = token[:-1] + alphabet[last ^ 1]
        assert codec.verify(twin) is None
        break
    else:
        pytest.fail("no token with unused bits")

    mailto = codec.issue_mailto(1)  # 17 bytes: 136 bits in 28 chars, 4 unused bits
    b32 = "abcdefghijklmnopqrstuvwxyz234567"
    twin_mailto = mailto[:-1] + b32[b32.index(mailto[-1]) ^ 1]
    assert codec.verify_mailto(twin_mailto) is None


def test_version_1_tokens_issued_before_stay_valid() -> None:
    assert codec.verify(LEGACY_ANNA) == TokenClaims("shop", "newsletter", "anna@example.nl", 1764892800)
    assert codec.verify(LEGACY_BOB) == TokenClaims("acct:42", "weekly", "bob@example.org", 5)
    assert TokenCodec([NEW]).verify(LEGACY_ANNA) is None  # only with the secret that made them


def _decoded(token: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@settings(max_examples=300)
@given(recipient=st.emails(), scope=st.sampled_from(["shop", "holding"]), topic=st.sampled_from(["*", "newsletter"]))
def test_tokens_do_not_reveal_the_recipient(recipient: str, scope: str, topic: str) -> None:
    token = codec.issue(scope, topic, recipient, 1_764_892_800)
    raw = _decoded(token)
    local, _, domain = recipient.rpartition("@")
    assert recipient.encode() not in raw and recipient not in token
    for part in (local, domain, "newsletter"):
        if len(part) >= 6:  # shorter ones may turn up in random bytes by chance
            assert part.encode() not in raw and part not in token, part
    assert _decoded(LEGACY_ANNA).find(b"anna@example.nl") > 0  # what version 1 showed


def test_token_length_tells_the_address_length_only_in_steps_of_16_bytes() -> None:
    lengths = {len(codec.issue("shop", "newsletter", "a" * n + "@example.nl", 1)) for n in range(1, 16)}
    assert len(lengths) <= 2  # 15 lengths fall into at most two 16-byte steps
    assert len(codec.issue("shop", "newsletter", "a@example.nl", 1)) == len(codec.issue("shop", "newsletter", "abcd@example.nl", 1))


def test_id_tokens_are_base32_of_the_id_and_a_truncated_hmac_sha256() -> None:
    """The mailto and bounce tokens of mail already sent must keep verifying: the bytes of the MAC do
    not depend on how it is computed (issue 20 computes it in one call)."""
    import base64
    import hashlib
    import hmac

    for delivery_id, context, issue in (
        (0, b"consent-relay unsubscribe mailto v1\x00", codec.issue_mailto),
        (123_456_789, b"consent-relay unsubscribe mailto v1\x00", codec.issue_mailto),
        (2**64 - 1, b"consent-relay bounce verp v1\x00", codec.issue_bounce),
    ):
        id_bytes = delivery_id.to_bytes(max(1, (delivery_id.bit_length() + 7) // 8), "big")
        mac = hmac.new(NEW, context + id_bytes, hashlib.sha256).digest()[:16]
        assert issue(delivery_id) == base64.b32encode(id_bytes + mac).rstrip(b"=").decode().lower()


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_id_tokens_base32_is_the_standard_librarys(data: bytes) -> None:
    import base64

    from relay.unsubscribe.tokens import _b32_lower

    assert _b32_lower(data) == base64.b32encode(data).rstrip(b"=").decode("ascii").lower()
