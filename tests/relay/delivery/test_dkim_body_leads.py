"""Issue 20: the DKIM body hash of a copy resumes a kept SHA-256 state for the text its template puts
before the first URL (relay.delivery.dkim._Shared.parts_hash): the bh= value and the signed digests
are those a fresh signer computes from the copy's bytes, copy after copy and message after message."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.delivery.dkim import DkimKey, DkimSigner, SplitMessage
from relay.delivery.personalize import CopyTemplates
from relay.engine.copies import RELAY_ID_HEADER
from relay.engine.pipeline import STREAM_HEADER
from tests.relay.delivery.test_mime_differential import PH, messages

KEY = DkimKey("shop.example", "s1", ed25519.Ed25519PrivateKey.generate(), "ed25519-sha256")
SHARED = DkimSigner([KEY])  # kept across examples, as a relay keeps it across a campaign's messages
TEMPLATES = CopyTemplates()
HEADERS = [("List-Unsubscribe", "<https://relay.example/u/T>"), ("List-Id", "<w.shop.relay.example>")]
# Whitespace URLs: the body's end may be stripped back into the text before them (_relaxed_end).
URLS = st.lists(st.sampled_from(["https://relay.example/u/A1", "https://relay.example/u/B22", " ", "", "\t \t", "x"]), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=messages(), urls=URLS, tail=st.sampled_from([b"", b"  \r\n\r\n", b"\r\n \r\n"]))
def test_copies_hash_their_bodies_as_a_fresh_signer_does(case: tuple[bytes, object], urls: list[str], tail: bytes) -> None:
    raw = case[0] + tail
    template = TEMPLATES.prepare(raw, placeholder=PH, first=(RELAY_ID_HEADER, "relay-1"), drop=(RELAY_ID_HEADER, STREAM_HEADER))
    copies = [template.render_split(headers=HEADERS, url=url) for url in urls]
    split = [SplitMessage(*c) if c.fields is not None else c.message for c in copies]
    ours = SHARED.prepare_all(split, now=1_700_000_000)
    for copy, job in zip(copies, ours):
        theirs = DkimSigner([KEY]).prepare(copy.message, now=1_700_000_000)
        assert (job is None) == (theirs is None)
        if job is not None and theirs is not None:
            assert (job.unsigned, job.digests) == (theirs.unsigned, theirs.digests)


def test_the_text_before_the_first_url_is_hashed_once_per_template() -> None:
    body = b"Hallo,\r\n" + b"tekst die elke kopie deelt\r\n" * 50 + PH.encode() + b"\r\nDoei\r\n"
    raw = (
        b"From: a@shop.example\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body
    )
    template = CopyTemplates().prepare(raw, placeholder=PH)
    signer = DkimSigner([KEY])
    for n in range(3):
        copy = template.render_split(headers=HEADERS, url=f"https://relay.example/u/{n}")
        assert copy.fields is not None
        (job,) = signer.prepare_all([SplitMessage(*copy)], now=1_700_000_000)
        theirs = DkimSigner([KEY]).prepare(copy.message, now=1_700_000_000)
        assert job is not None and theirs is not None and job.digests == theirs.digests
    (lead,) = signer._shared.leads  # one run kept: the text up to the URL
    assert b"".join(lead).startswith(b"Hallo,\r\n") and len(b"".join(lead)) > 1000
