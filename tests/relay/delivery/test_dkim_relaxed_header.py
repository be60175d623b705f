"""Issue 20: relay.delivery.dkim._relaxed_header collapses blanks with bytes methods, not a regex; the
canonical form is the one RFC 6376 §3.4.2 gives, as the regex wrote it before (kept here as the oracle)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.dkim import _relaxed_header


def regex_relaxed_header(raw: bytes) -> bytes:
    name, _, value = raw.partition(b":")
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    value = re.sub(rb"[ \t]+", b" ", value).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value


@settings(max_examples=2000)
@given(raw=st.lists(st.sampled_from([b" ", b"\t", b"  ", b"\r\n", b"\r\n\t", b"\n", b"\r", b"a", b"B", b":", b"=", b"\x80"]), max_size=30).map(b"".join))
def test_relaxed_header_is_the_regex_form(raw: bytes) -> None:
    assert _relaxed_header(raw) == regex_relaxed_header(raw)
    assert _relaxed_header(b"DKIM-Signature:" + raw) == regex_relaxed_header(b"DKIM-Signature:" + raw)
