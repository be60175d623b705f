"""policies/_speedups.c gives exactly what the pure-Python passes (speedups_reference.py) gave.

The C passes replace a dozen regexes; each must keep their choices: case rules (re.IGNORECASE's,
with its non-ASCII equivalents ſ, K, İ, ı), Unicode \\s, \\w and \\b, leftmost-first matching,
the order of the passes, and the link spans. Compared on the corpus, on a generated newsletter,
on hand-picked edge cases, and on markup that hypothesis assembles from the pieces that matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import speedups_reference
from policies import _speedups
from policies.message import parse_message

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MANY = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(markup: str) -> None:
    assert _speedups.html_to_text(markup) == speedups_reference._html_to_text(markup), repr(markup)


def corpus_pages() -> list[str]:
    pages = []
    for path in sorted(CORPUS.rglob("*.eml")):
        pages.extend(parse_message(path.read_bytes()).html_parts)
    return pages


def test_the_corpus_has_html_to_compare() -> None:
    assert len(corpus_pages()) >= 5


@pytest.mark.parametrize("index", range(len(corpus_pages())))
def test_corpus_pages_give_the_same_text_hidden_text_and_links(index: int) -> None:
    same(corpus_pages()[index])


def newsletter(products: int) -> str:
    rows = "".join(
        f'<tr><td style="padding:12px;font-family:Arial">'
        f'<a href="https://shop.example/p/{i}?utm_source=nl&amp;utm_medium=email">'
        f'<img src="https://cdn.shop.example/{i}.jpg" alt="Linnen jurk {i}" style="display:block;border:0"></a>'
        f"<h3>Jurk {i}</h3><p>Zomer &ndash; nu &euro;&nbsp;{i},95 &rarr; caf\u00e9 \u2019t</p>"
        f'<a href="https://shop.example/p/{i}" style="color:#e30">Bekijk &rarr;</a></td></tr>\n'
        for i in range(products)
    )
    return (
        "<!DOCTYPE html><html><head><title>Nieuwsbrief</title><style>td{color:red}</style></head><body>"
        '<div style="display:none;max-height:0">Preheader</div><table>'
        + rows
        + '<tr><td>Shop B.V. &middot; <a href="{{unsubscribe_url}}">Afmelden</a></td></tr></table></body></html>'
    )


def test_a_large_newsletter_gives_the_same() -> None:
    page = newsletter(300)
    text, hidden, spans = _speedups.html_to_text(page)
    assert hidden == "Preheader"
    assert len(spans) == 601 and spans[-1][0] == "{{unsubscribe_url}}"
    assert text[spans[0][1] : spans[0][2]].strip() == "Linnen jurk 0"
    same(page)


def test_scratch_buffers_are_reused_and_released_without_changing_results() -> None:
    small, big = newsletter(3), newsletter(4000)  # big: more than the buffers kept between calls
    first = _speedups.html_to_text(small)
    assert len(big) > 1 << 20
    assert _speedups.html_to_text(big) == speedups_reference._html_to_text(big)
    assert _speedups.html_to_text(small) == first
    assert _speedups.html_to_text("") == ("", "", [])


EDGE_CASES = [
    "",
    "plain text, no tags",
    "<",
    ">",
    "<a",
    "<a href",
    "<a href=>",
    '<a href="x>y',
    '<a href="x>y">z</a>',
    "<a href='x'>q</a>",
    "<a href=x y>q</a >",
    "<A HREF=\"u\">q</A>",
    '<a data-href="d" href="h">q</a>',
    '<a hreflang="nl" href="h">q</a>',
    "<a\u00e9 href=x>q</a>",
    "<abbr>x</abbr>",
    "<a>one<a href=two>two</a>",
    "<a href=1>open<a href=2>next",
    '<a href="  spaced &amp; &lt;b&gt;  ">x</a>',
    "<a href=x>\u00a0 y \u200b</a>",
    "<img alt='x'>",
    '<img src="<a href=x>" alt="y">after',
    '<img alt="<a href=q>in alt</a>">',
    "<IMG ALT=\"upper\">",
    "<img alt=unquoted>",
    "<img\u00e9 alt='x'>",
    '<img alt="&amp;<br>">',
    "<p>a</p><P>b<br/>c<BR>d<hr>e</br>f</hr>g",
    "<h1>a</h1><h6>b</h6><h7>c</h7><h0>d",
    "<th>a<thead>b<tbody>c<table>d<td>e<tr>f",
    "<blockquote>a<blocK\u212aquote>b<bloc\u212aquote>c",
    "<\u017fection>a</\u017fection><section>b",
    "<art\u0131cle>a</art\u0130cle>b",
    "<!-- comment -->x<!---->y<!-->z",
    "<!-- never closed",
    "<script>a</script >b<SCRIPT>c</script>d",
    "<script>no close",
    "<scripts>kept</scripts>",
    "<style\u00e9>x</style>",
    "<\u017fcript>long s</\u017fcript>",
    "<head><title>t</title></head><body>b</body>",
    '<div style="display:none">hid<div>den</div>x</div>shown',
    '<div style="DISPLAY : NONE">upper</div>shown',
    '<span style="visibility:hidden">v</span><b style="mso-hide:all">m</b>s',
    '<img style="display:none">kept',
    "display:none in text <b>x</b>",
    '<div style="display:none">never closed',
    '<div style="display:none"><div>nested</div>',
    '<d\u0131v style="display:none">x</d\u0131v>y',
    '<x1 style="display:none">a</x1>b',
    "&amp;&lt;&gt;&quot;&apos;&nbsp;&euro;&ndash;&rarr;&middot;",
    "&amp &lt &copy &notit; &notin; &NotEqualTilde; &unknown; &; & &#; &#x; &#xZZ;",
    "&#65;&#x41;&#X41;&#0;&#1;&#128;&#x80;&#xD800;&#1114112;&#99999999999999999999;&#8203;",
    "&" + "a" * 40 + ";",
    "&ampx; &amp;x; &amp\x01;",
    "a\x01b\x02c<a href=m>d\x01</a>",
    " \t lead and trail \r\n ",
    "a  b\n\n\nc \n d\u3000e\u2009f\u202fg\xa0h\ufeffi\u00adj\u034fk",
    "x\u2028y\x85z\x1c",
    "<p> a </p> <p> b </p>",
    "word\u0301 \u0663\u0664 _under_",
    "\U0001f600 emoji <a href=\U0001f600>\U0001f600</a>",
    "\ud800 lone surrogate",
]


@pytest.mark.parametrize("markup", EDGE_CASES)
def test_edge_cases_give_the_same(markup: str) -> None:
    same(markup)


PIECES = st.sampled_from(
    [
        "<a href=\"x\">", "<a href=y>", "<a href='z'>", "</a>", "</A >", '<A HREF="q&amp;r">', "<a ", "href", "=",
        '<img alt="pic">', "<IMG ALT='p'>", "<img ", "alt", "<p>", "</p>", "<br>", "<div>", "</div>",
        '<div style="display:none">', '<span style="visibility: hidden">', "</span>", "mso-hide:all",
        "display : none", '<b style="DISPLAY:NONE">', "</b>", "<!--", "-->", "<script>", "</script>", "<style>",
        "</STYLE >", "<head>", "<title>", "</title>", "<h1>", "<h7>", "<th>", "<thead>", "<li>", "<table>", "<tr",
        "&amp;", "&nbsp;", "&euro;", "&#8364;", "&#x20AC;", "&notit;", "&#1;", "&#xD800;", "&", "&amp", "&#", ";",
        " ", "  ", "\n", "\t", "\r\n", "a", "text", "<", ">", '"', "'", "/", "_", "1",
        "\u017f", "\u212a", "\u0130", "\u0131", "\x01", "\x02", "\u200b", "\xa0", "\u00e9", "\u2028", "\x85",
        "\U0001f600",
    ]
)
MARKUP = st.one_of(st.lists(PIECES, max_size=40).map("".join), st.text(max_size=80))


@MANY
@given(MARKUP)
def test_generated_markup_gives_the_same(markup: str) -> None:
    same(markup)


@MANY
@given(st.one_of(st.text(max_size=120), st.lists(PIECES, max_size=30).map("".join)))
def test_words_are_the_distinct_word_runs(text: str) -> None:
    assert _speedups.words(text) == speedups_reference.split_words(text)
    assert isinstance(_speedups.words(text), frozenset)


def test_wrong_argument_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        _speedups.html_to_text(b"<p>bytes</p>")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _speedups.words(None)  # type: ignore[arg-type]


NUMBERISH = st.lists(
    st.sampled_from(["1", "0", "9", " ", ".", "-", "\u0663", "\uff11", "x", "NL91 ABNA 0417 1643 00", "123456782", ",", "\n"]),
    max_size=40,
).map("".join)


@MANY
@given(st.one_of(NUMBERISH, st.text(max_size=80)), st.integers(0, 15), st.integers(0, 6))
def test_number_windows_are_the_regex_runs_widened_and_merged(text: str, before: int, after: int) -> None:
    assert _speedups.number_windows(text, before, after) == [
        tuple(w) for w in speedups_reference.number_windows(text, before, after)
    ]


@pytest.mark.parametrize("markup", [*EDGE_CASES[:20], newsletter(5)])
def test_with_an_offset_anchors_come_as_link_fields(markup: str) -> None:
    assert _speedups.html_to_text(markup, 17) == speedups_reference.anchors_with_offset(markup, 17)
    with pytest.raises(ValueError):
        _speedups.html_to_text(markup, -5)


URL_PIECES = st.sampled_from(
    ["http", "HTTP", "https", "httpS", "http\u017f", "://", ":/", "www.", "WWW.", "ww.", "mailto:", "MA\u0130LTO:",
     "ma\u0131lto:", "magnet:?", "magnet:", "x", "a.b/c?d=e", " ", "\n", "(", ")", "[", "]", "<", ">", '"', "'",
     "\u00e9", ".", ",", "!", "\U0001f600"]
)


@MANY
@given(st.one_of(st.lists(URL_PIECES, max_size=30).map("".join), st.text(max_size=60)))
def test_urls_are_what_the_case_insensitive_regex_finds(text: str) -> None:
    import re

    _URL = speedups_reference._URL_ANY_CASE
    assert _URL.flags & re.IGNORECASE
    assert _speedups.urls(text) == [m.span() for m in _URL.finditer(text)]


FOLD_PIECES = st.sampled_from(
    ["Cr\u00e8me", "BR\u00dbL\u00c9E", "\ufb01ne", "e\u0301", "\u0301", "\u05b0\u05b8", "\uac00", "\u1100\u1161",
     "\u00df", "\u0130", "\u03a3\u03c2", "\u212a", "\u2460", "\u00bd", "\u2019", "\u20ac", " ", "A", "z", "\n",
     "\u0345\u0314", "\U0001d400", "\u1e9e"]
)


@MANY
@given(st.one_of(st.lists(FOLD_PIECES, max_size=60).map("".join), st.text(max_size=120)))
def test_fold_by_ascii_and_runs_is_the_whole_fold(text: str) -> None:
    from policies.message import _fold_run, fold

    assert _speedups.fold(text, _fold_run) == speedups_reference.fold(text)
    assert fold(text) == speedups_reference.fold(text)
    assert fold(text * 5) == speedups_reference.fold(text * 5)  # long enough for the C pass


def test_fold_run_errors_reach_the_caller() -> None:
    with pytest.raises(TypeError):
        _speedups.fold("caf\u00e9 " * 20, lambda run: 42)
    with pytest.raises(ZeroDivisionError):
        _speedups.fold("caf\u00e9 " * 20, lambda run: 1 / 0)


QP_PIECES = st.sampled_from(
    [b"=", b"==", b"=3D", b"=3d", b"=C3=A9", b"=\r\n", b"=\n", b"=\r", b"=\rx\n", b"=G1", b"=A", b"a", b" ", b"\r\n",
     b"\n", b"_", b"\xff", b"=20", b"=0"]
)


@MANY
@given(st.one_of(st.lists(QP_PIECES, max_size=40).map(b"".join), st.binary(max_size=80)))
def test_qp_decode_is_binascii_a2b_qp(data: bytes) -> None:
    import binascii

    assert _speedups.qp_decode(data) == binascii.a2b_qp(data)
    assert _speedups.qp_decode(memoryview(data)) == binascii.a2b_qp(data)
    assert _speedups.qp_decode(bytearray(data)) == binascii.a2b_qp(data)


def test_fold_runs_that_fold_again_and_long_texts_keep_their_results() -> None:
    from policies.message import _fold_run

    def nested(run: str) -> str:  # folds inside a fold: the kept buffer is busy, a fresh one is used
        return _speedups.fold("\u00c9 " * 40, _fold_run)[:0] + _fold_run(run)

    text = "Cr\u00e8me BR\u00dbL\u00c9E \ufb01ne " * 10
    assert _speedups.fold(text, nested) == speedups_reference.fold(text)
    long_text = "\u00c9t\u00e9 " * 300_000  # more than the buffer kept between calls
    assert _speedups.fold(long_text, _fold_run) == speedups_reference.fold(long_text)
    assert _speedups.fold(text, _fold_run) == speedups_reference.fold(text)


@pytest.mark.parametrize("extra", ["", "\u2019", "\U0001f600"], ids=["1-byte", "2-byte", "4-byte"])
def test_every_kind_of_str_runs_the_same_passes(extra: str) -> None:
    page = newsletter(40).replace("Bekijk", f"Bekijk{extra}") + f"<p>&euro; {extra}</p>"
    same(page)
    same(page.replace("Preheader", "a\x01b\x02c"))  # the page's own marks are dropped first
