"""DKIM signatures checked by an independent verifier: Perl's Mail::DKIM (docs/SPEC.md §7)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from relay.delivery.dkim import (
    DkimKey,
    DkimKeyError,
    DkimSigner,
    dkim_dns_record,
    load_dkim_key,
)
from tests.conftest import run_tool  # noqa: E402

VERIFIER = Path(__file__).parents[1] / "dkim_verify.pl"
NOW = 1_700_000_000

MESSAGE = (
    b'From: "Nieuwsbrief, BV" <news@Shop.Example>\r\n'
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Aanbieding   van\r\n"
    b"  de week\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <m1@shop.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"List-Id: <weekly.acct1.relay.example.com>\r\n"
    b"List-Unsubscribe: <https://relay.example.com/u/AbC_123>,\r\n"
    b" <mailto:unsubscribe+abc@relay.example.com>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"X-Mailer: shop 1.0\r\n"
    b"\r\n"
    b"Hallo Bob,  \r\n"
    b"\r\n"
    b"Deze  week in de aanbieding.\t\r\n"
    b"\r\n"
    b"\r\n"
)


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim")
    (path / "rsa.pem").write_bytes(_pem(rsa.generate_private_key(65537, 2048)))
    (path / "rsa-other.pem").write_bytes(_pem(rsa.generate_private_key(65537, 2048)))
    (path / "ed.pem").write_bytes(_pem(ed25519.Ed25519PrivateKey.generate()))
    (path / "ed-other.pem").write_bytes(_pem(ed25519.Ed25519PrivateKey.generate()))
    return path


@pytest.fixture(scope="module")
def rsa_key(key_dir: Path) -> DkimKey:
    return load_dkim_key("shop.example", "rsa2024", key_dir / "rsa.pem")


@pytest.fixture(scope="module")
def ed_key(key_dir: Path) -> DkimKey:
    return load_dkim_key("shop.example", "ed2024", key_dir / "ed.pem")


@dataclass(frozen=True)
class Verdict:
    overall: str
    signatures: list[tuple[str, str, str]]  # (result, algorithm, detail)


def verify(message: bytes, keys: list[DkimKey], tmp_path: Path) -> Verdict:
    records = tmp_path / "keys.txt"
    records.write_text(
        "".join(f"{k.selector}._domainkey.{k.domain} {dkim_dns_record(k)}\n" for k in keys)
    )
    done = run_tool(["perl", str(VERIFIER), str(records)], input=message)
    lines = done.stdout.decode().splitlines()
    signatures = []
    for line in lines[:-1]:
        m = re.match(r"(\S+) a=(\S*) d=\S* s=\S*; ?(.*)", line)
        assert m, line
        signatures.append((m[1], m[2], m[3]))
    assert lines[-1].startswith("overall "), done.stdout
    return Verdict(lines[-1].split()[1], signatures)


def h_tag(signed: bytes) -> list[str]:
    header = signed.split(b"\n", 1)[0]
    rest = signed[len(header) :]
    # unfold the first DKIM-Signature field
    field = header + re.match(rb"(?:\r?\n[ \t][^\r\n]*)*", rest)[0]  # type: ignore[index]
    h = re.search(rb"\bh=([^;]*);", field)[1]  # type: ignore[index]
    return [n.strip().decode() for n in re.sub(rb"\s+", b"", h).split(b":")]


def test_rsa_2048_signature_verifies(rsa_key: DkimKey, tmp_path: Path) -> None:
    signed = DkimSigner([rsa_key]).sign(MESSAGE, now=NOW)
    verdict = verify(signed, [rsa_key], tmp_path)
    assert verdict.overall == "pass"
    assert verdict.signatures == [("pass", "rsa-sha256", "")] or verdict.signatures[0][:2] == (
        "pass",
        "rsa-sha256",
    )


def test_ed25519_signature_verifies(ed_key: DkimKey, tmp_path: Path) -> None:
    signed = DkimSigner([ed_key]).sign(MESSAGE, now=NOW)
    verdict = verify(signed, [ed_key], tmp_path)
    assert verdict.overall == "pass"
    assert [s[:2] for s in verdict.signatures] == [("pass", "ed25519-sha256")]


def test_both_keys_sign_the_same_copy(rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path) -> None:
    signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    assert signed.count(b"DKIM-Signature:") == 2
    verdict = verify(signed, [rsa_key, ed_key], tmp_path)
    assert sorted(s[:2] for s in verdict.signatures) == [
        ("pass", "ed25519-sha256"),
        ("pass", "rsa-sha256"),
    ]


def copies_of(message: bytes, n: int, *, same_body: bool) -> list[bytes]:
    """What relay.engine.copies makes of one message: its own List-Unsubscribe, and its own URL in
    the body unless `same_body`."""
    head, body = message.split(b"\r\n\r\n", 1)
    head = re.sub(rb"List-Unsubscribe: [^\r]*\r\n [^\r]*", b"List-Unsubscribe: <https://relay.example.com/u/%d>", head)
    return [
        (head % i) + b"\r\n\r\n" + (body if same_body else body.replace(b"Bob", b"Bob %d" % i))
        for i in range(n)
    ]


@pytest.mark.parametrize("same_body", [True, False])
def test_copies_prepared_together_sign_as_each_alone(
    rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path, same_body: bool
) -> None:
    signer = DkimSigner([rsa_key, ed_key])
    copies = copies_of(MESSAGE, 3, same_body=same_body) + [b"From: x@other.example\r\n\r\nno key\r\n"]
    together = signer.prepare_all(copies, now=NOW)
    alone = [signer.prepare(copy, now=NOW) for copy in copies]
    assert together[-1] is None and alone[-1] is None
    for a, b in zip(together[:-1], alone[:-1]):
        assert a is not None and b is not None
        assert (a.unsigned, a.digests, a.keys) == (b.unsigned, b.digests, b.keys)
    assert len({job.digests[0] for job in together[:-1] if job is not None}) == 3
    first = together[0]
    assert first is not None
    signed = first.finish([k.sign_digest(d) for k, d in zip(first.keys, first.digests)])
    assert verify(signed, [rsa_key, ed_key], tmp_path).overall == "pass"


def test_a_body_all_copies_share_is_canonicalised_once(rsa_key: DkimKey, monkeypatch: pytest.MonkeyPatch) -> None:
    import relay.delivery.dkim as dkim_module

    calls: list[bytes] = []
    original = dkim_module._relaxed_body
    monkeypatch.setattr(dkim_module, "_relaxed_body", lambda body: calls.append(body) or original(body))
    DkimSigner([rsa_key]).prepare_all(copies_of(MESSAGE, 10, same_body=True), now=NOW)
    assert len(calls) == 1
    DkimSigner([rsa_key]).prepare_all(copies_of(MESSAGE, 10, same_body=False), now=NOW)
    assert len(calls) == 11


def test_what_a_signer_keeps_from_one_message_signs_the_next_as_a_fresh_signer(
    rsa_key: DkimKey, ed_key: DkimKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: a signer keeps the From field's keys, canonical fields and h= lists of the messages
    it prepared for the next (a campaign's messages share them); each still signs as if alone."""
    import relay.delivery.dkim as dkim_module

    calls: list[object] = []
    original = dkim_module._from_domain
    monkeypatch.setattr(dkim_module, "_from_domain", lambda fields: calls.append(fields) or original(fields))
    kept = DkimSigner([rsa_key, ed_key])
    messages = [
        MESSAGE,
        MESSAGE.replace(b"Message-ID: <m1@", b"Message-ID: <m2@"),
        MESSAGE.replace(b"From: \"Nieuwsbrief, BV\" <news@Shop.Example>", b"From: x@other.example"),  # no key
        MESSAGE.replace(b"Subject: Aanbieding", b"Subject: Andere"),
        MESSAGE.replace(b"X-Mailer: shop 1.0\r\n", b"Cc: a@b.example\r\nCc: c@d.example\r\n"),  # other h=
        MESSAGE,
    ]
    for now in (NOW, NOW, NOW + 1):
        for message in messages:
            ours, alone = kept.prepare(message, now=now), DkimSigner([rsa_key, ed_key]).prepare(message, now=now)
            assert (ours is None) == (alone is None) == (b"other.example" in message)
            if ours is not None and alone is not None:
                assert (ours.keys, ours.unsigned, ours.digests) == (alone.keys, alone.unsigned, alone.digests)
    assert len(calls) == 3 * len(messages) + 2  # the fresh signers' and two From fields read once by `kept`


def test_rsa_signatures_are_deterministic_and_the_plain_cryptography_call(rsa_key: DkimKey) -> None:
    """PKCS#1 v1.5 has no randomness: the padding objects made once give the bytes a fresh call gives."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    private = rsa_key.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    for digest in (bytes(32), bytes(range(32)), b"\xff" * 32):
        expected = private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        assert rsa_key.sign_digest(digest) == rsa_key.sign_digest(digest) == expected


def test_wrong_public_key_fails(key_dir: Path, rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path) -> None:
    # The verifier must really check: the same selectors published with other keys fail.
    signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    impostors = [
        load_dkim_key("shop.example", "rsa2024", key_dir / "rsa-other.pem"),
        load_dkim_key("shop.example", "ed2024", key_dir / "ed-other.pem"),
    ]
    verdict = verify(signed, impostors, tmp_path)
    assert verdict.overall == "fail"
    assert sorted(s[0] for s in verdict.signatures) == ["fail", "fail"]


def test_only_prepends(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    assert signed.endswith(MESSAGE)
    prefix = signed[: -len(MESSAGE)]
    assert prefix.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert b"\r\nDKIM-Signature: v=1; a=ed25519-sha256;" in prefix
    assert b"t=1700000000;" in prefix
    assert all(len(line) <= 80 for line in prefix.split(b"\r\n"))
    assert b"\n" not in prefix.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Subject: Aanbieding", b"Subject: Aanbieding!"),
        (b"To: Bob <bob@", b"To: Eve <bob@"),
        (b"List-Unsubscribe: <https://relay.example.com/u/AbC_123>", b"List-Unsubscribe: <https://evil.example/u/AbC_123>"),
        (b"List-Id: <weekly.", b"List-Id: <daily."),
    ],
)
def test_tampered_signed_header_fails(
    rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path, old: bytes, new: bytes
) -> None:
    signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    assert old in signed
    verdict = verify(signed.replace(old, new, 1), [rsa_key, ed_key], tmp_path)
    assert verdict.overall == "fail"
    assert [s[0] for s in verdict.signatures] == ["fail", "fail"]


def test_tampered_body_fails(rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path) -> None:
    signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    verdict = verify(signed.replace(b"aanbieding.", b"aanbieding!"), [rsa_key, ed_key], tmp_path)
    assert verdict.overall == "fail"
    assert all("body has been altered" in s[2] for s in verdict.signatures)


def test_relaxed_canonicalisation_tolerates_refolding_and_trailing_blank_lines(
    rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path
) -> None:
    signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    refolded = signed.replace(b"Aanbieding   van\r\n  de week", b"Aanbieding van de week")
    refolded = refolded.replace(b"Hallo Bob,  \r\n", b"Hallo  Bob,\r\n") + b"\r\n\r\n"
    refolded = refolded.replace(b"X-Mailer: shop 1.0\r\n", b"X-Mailer: changed\r\nX-Added: unsigned\r\n")
    verdict = verify(refolded, [rsa_key, ed_key], tmp_path)
    assert verdict.overall == "pass"
    assert [s[0] for s in verdict.signatures] == ["pass", "pass"]


@pytest.mark.parametrize(
    "added",
    [
        b"List-Unsubscribe: <https://evil.example/u/x>\r\n",
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        b"List-Id: <other.list>\r\n",
    ],
)
@pytest.mark.parametrize("where", ["top", "bottom"])
def test_second_list_header_added_after_signing_fails(
    rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path, added: bytes, where: str
) -> None:
    signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    if where == "top":
        tampered = added + signed
    else:
        head, body = signed.split(b"\r\n\r\n", 1)
        tampered = head + b"\r\n" + added + b"\r\n" + body
    verdict = verify(tampered, [rsa_key, ed_key], tmp_path)
    assert verdict.overall == "fail"
    assert [s[0] for s in verdict.signatures] == ["fail", "fail"]


def test_list_header_added_to_a_transactional_copy_fails(rsa_key: DkimKey, tmp_path: Path) -> None:
    transactional = re.sub(rb"List-[^\r]*\r\n( [^\r]*\r\n)?", b"", MESSAGE)
    assert b"List-" not in transactional
    signed = DkimSigner([rsa_key]).sign(transactional, now=NOW)
    assert verify(signed, [rsa_key], tmp_path).overall == "pass"
    tampered = b"List-Unsubscribe: <https://evil.example/u/x>\r\n" + signed
    assert verify(tampered, [rsa_key], tmp_path).overall == "fail"


def test_h_tag_covers_the_present_headers_and_over_signs_list_headers(rsa_key: DkimKey) -> None:
    message = MESSAGE.replace(
        b"X-Mailer:", b"Cc: c@example.org\r\nReply-To: r@shop.example\r\nX-CSA-Complaints: csa@eco.de\r\nX-Mailer:"
    )
    names = h_tag(DkimSigner([rsa_key]).sign(message, now=NOW))
    assert names == [
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
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-unsubscribe-post",
        "x-csa-complaints",
        "x-csa-complaints",
    ]


def test_absent_headers_are_not_signed_except_over_signed_list_headers(rsa_key: DkimKey) -> None:
    minimal = b"From: a@shop.example\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    names = h_tag(DkimSigner([rsa_key]).sign(minimal, now=NOW))
    assert names == ["from", "to", "subject", "list-id", "list-unsubscribe", "list-unsubscribe-post"]


def test_x_csa_complaints_over_signed_when_present(
    rsa_key: DkimKey, tmp_path: Path
) -> None:
    message = MESSAGE.replace(b"X-Mailer:", b"X-CSA-Complaints: csa-complaints@eco.de\r\nX-Mailer:")
    signed = DkimSigner([rsa_key]).sign(message, now=NOW)
    assert verify(signed, [rsa_key], tmp_path).overall == "pass"
    tampered = b"X-CSA-Complaints: other@evil.example\r\n" + signed
    assert verify(tampered, [rsa_key], tmp_path).overall == "fail"


def test_8bit_utf8_headers_and_body(rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path) -> None:
    message = (
        "From: Café Zoë <news@shop.example>\r\n"
        "To: Jörg <jörg@example.org>\r\n"
        "Subject: Ünïcödé — korting € 10\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Grüße uit Zoë’s café.\r\n"
    ).encode()
    signed = DkimSigner([rsa_key, ed_key]).sign(message, now=NOW)
    assert signed.endswith(message)
    verdict = verify(signed, [rsa_key, ed_key], tmp_path)
    assert [s[0] for s in verdict.signatures] == ["pass", "pass"]
    tampered = signed.replace("Jörg".encode(), "Jorg".encode())
    assert verify(tampered, [rsa_key, ed_key], tmp_path).overall == "fail"


def test_lf_only_message_keeps_lf_and_verifies_as_sent_over_smtp(
    rsa_key: DkimKey, ed_key: DkimKey, tmp_path: Path
) -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    signed = DkimSigner([rsa_key, ed_key]).sign(lf, now=NOW)
    assert signed.endswith(lf)
    assert b"\r" not in signed
    crlf_signed = DkimSigner([rsa_key, ed_key]).sign(MESSAGE, now=NOW)
    # Same canonical form: the signatures are identical (Ed25519 and PKCS#1 v1.5 are
    # deterministic) whatever the line endings.
    assert signed.replace(b"\n", b"\r\n") == crlf_signed
    verdict = verify(signed, [rsa_key, ed_key], tmp_path)
    assert [s[0] for s in verdict.signatures] == ["pass", "pass"]


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n\r\n", b"no final line end  ", b"a\r\n \t", b" ", b"one line\r\n", b"lone\rcarriage return\r\n"],
)
def test_edge_case_bodies(rsa_key: DkimKey, tmp_path: Path, body: bytes) -> None:
    message = b"From: a@shop.example\r\nSubject: x\r\n\r\n" + body
    signed = DkimSigner([rsa_key]).sign(message, now=NOW)
    assert verify(signed, [rsa_key], tmp_path).overall == "pass"


def test_from_domain_match_is_case_insensitive_and_exact(rsa_key: DkimKey) -> None:
    signer = DkimSigner([rsa_key])
    upper = MESSAGE.replace(b"news@Shop.Example", b"NEWS@SHOP.EXAMPLE")
    assert signer.sign(upper, now=NOW).count(b"DKIM-Signature:") == 1
    other = MESSAGE.replace(b"news@Shop.Example", b"news@other.example")
    assert signer.sign(other, now=NOW) == other
    sub = MESSAGE.replace(b"news@Shop.Example", b"news@mail.shop.example")
    assert signer.sign(sub, now=NOW) == sub


def test_no_keys_or_no_from_leaves_the_message_alone(rsa_key: DkimKey) -> None:
    assert DkimSigner([]).sign(MESSAGE) == MESSAGE
    no_from = b"To: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    assert DkimSigner([rsa_key]).sign(no_from) == no_from


def test_timestamp_defaults_to_now(rsa_key: DkimKey) -> None:
    import time

    before = int(time.time())
    signed = DkimSigner([rsa_key]).sign(MESSAGE)
    t = int(re.search(rb"\bt=(\d+);", signed)[1])  # type: ignore[index]
    assert before <= t <= int(time.time())


def test_dns_record_values(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    assert re.fullmatch(r"v=DKIM1; k=rsa; p=MII[A-Za-z0-9+/=]{300,}", dkim_dns_record(rsa_key))
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", dkim_dns_record(ed_key))


def test_load_dkim_key_accepts_pkcs1_and_der(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    pkcs1 = tmp_path / "pkcs1.pem"
    pkcs1.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    der = tmp_path / "ed.der"
    der.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    loaded = load_dkim_key("Shop.Example.", "s1", pkcs1)
    assert (loaded.domain, loaded.selector, loaded.algorithm) == ("shop.example", "s1", "rsa-sha256")
    assert load_dkim_key("shop.example", "s2", der).algorithm == "ed25519-sha256"


def test_load_dkim_key_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(DkimKeyError, match="cannot read DKIM key .*missing.pem"):
        load_dkim_key("shop.example", "s", missing)

    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DkimKeyError, match="cannot parse DKIM key .*garbage.pem"):
        load_dkim_key("shop.example", "s", garbage)

    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(DkimKeyError, match="encrypted.pem"):
        load_dkim_key("shop.example", "s", encrypted)

    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(DkimKeyError, match="only RSA and Ed25519"):
        load_dkim_key("shop.example", "s", ec_key)

    assert issubclass(DkimKeyError, ValueError)


def test_load_dkim_key_rejects_bad_names(key_dir: Path) -> None:
    with pytest.raises(DkimKeyError, match="selector"):
        load_dkim_key("shop.example", "bad selector", key_dir / "ed.pem")
    with pytest.raises(DkimKeyError, match="domain"):
        load_dkim_key("not a domain", "s", key_dir / "ed.pem")


# A second opinion on the canonical forms over many inputs (dkimpy's canonicalisation
# code, not its signing); Mail::DKIM above checks the end result.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from relay.delivery.dkim import _relaxed_body, _relaxed_header  # noqa: E402

_body_bytes = st.lists(
    st.sampled_from([b"a", b"Z", b" ", b"\t", b"\r\n", b"\xc3\xa9", b"x y", b"  \r\n", b" " * 9, b"\t \t\t  "]), max_size=40
).map(b"".join)


@settings(deadline=None)  # a busy machine is not a failure (no timed assertions)
@given(body=_body_bytes)
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    from dkim.canonicalization import Relaxed

    wire = body + b"\r\n"  # as sent over SMTP, every line terminated
    assert _relaxed_body(wire) == Relaxed.canonicalize_body(wire)
    assert _relaxed_body(wire.replace(b"\r\n", b"\n")) == Relaxed.canonicalize_body(wire)
    assert _relaxed_body(body) == _relaxed_body(wire)


@settings(deadline=None)
@given(
    name=st.sampled_from([b"Subject", b"LIST-ID", b"X-Csa-Complaints"]),
    value=st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n ", b"\r\n\t", b"\xc3\xa9"]), max_size=20).map(b"".join),
)
def test_relaxed_header_matches_dkimpy(name: bytes, value: bytes) -> None:
    from dkim.canonicalization import Relaxed

    [(dk_name, dk_value)] = Relaxed.canonicalize_headers([(name, value + b"\r\n")])
    assert _relaxed_header(name + b":" + value + b"\r\n") == dk_name + b":" + dk_value.rstrip(b"\r\n")


_pieces = st.lists(
    st.sampled_from([b"a", b"Z", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x y", b"  \r\n", b"\t \t\t  ", b"=\r\n", b"\r\n\r\n"]), max_size=12
).map(b"".join)


@settings(deadline=None)
@given(parts=st.lists(_pieces, max_size=8))
def test_a_body_in_pieces_is_canonicalised_as_the_whole_or_handed_back(parts: list[bytes]) -> None:
    """Issue 20: a copy's body comes in pieces from its template (the runs of lines no copy changes,
    canonicalised once for all copies). Pieces canonicalised one by one give the whole's canonical
    form; where a whitespace run, a line's end or a CRLF spans a seam the signer gets None and
    canonicalises the whole."""
    from relay.delivery.dkim import _Shared

    shared = _Shared()
    joined = b"".join(parts)
    for _ in range(2):  # the second time from the kept canonical pieces
        got = shared.relaxed_parts(parts)
        assert got is None or got == _relaxed_body(joined)
    seams = [(a[-1:], b[:1]) for a, b in zip([p for p in parts if p], [p for p in parts if p][1:])]
    if all(not (x in b" \t" and y in b" \t\r\n") and (x, y) != (b"\r", b"\n") for x, y in seams):
        assert shared.relaxed_parts(parts) == _relaxed_body(joined)


def test_a_seam_inside_a_whitespace_run_or_a_line_end_is_not_canonicalised_in_pieces() -> None:
    from relay.delivery.dkim import _Shared

    shared = _Shared()
    for parts in ([b"a \t", b" b\r\n"], [b"a ", b"\r\nb\r\n"], [b"a\r", b"\nb\r\n"], [b"a\t", b"\nb"]):
        assert shared.relaxed_parts(parts) is None
    assert shared.relaxed_parts([b"a ", b"b\r\n", b"", b" c \r\n\r\n"]) == _relaxed_body(b"a b\r\n c \r\n\r\n") == b"a b\r\n c\r\n"
