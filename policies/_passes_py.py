"""The text passes of policies.message in pure Python: the runtime fallback when the C extension
(policies/_speedups.c) is absent or failed to build, and the reference it is tested against.

Each function here has the signature and the output of its namesake in policies/_speedups.c
(tests/policies/test_speedups.py holds the two to the same output on the corpus and on generated
markup); policies/_passes.py picks one of the two. Tag names and styles are matched
ASCII-case-insensitively, as HTML has them.
"""

from __future__ import annotations

import binascii
import html
import itertools
import re
from typing import Any, Callable, Iterable

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

def _first_matches(lowered: str, patterns: Iterable[tuple[re.Pattern[str], str]]) -> dict[re.Pattern[str], re.Match[str]]:
    """Each pattern's first match; a pattern whose leading word is absent is not even run."""
    return {p: m for p, word in patterns if word in lowered and (m := p.search(lowered)) is not None}


def _earliest_match(lowered: str, pos: int, ahead: dict[re.Pattern[str], re.Match[str]]) -> re.Match[str] | None:
    """The earliest match at or after pos of any pattern in `ahead`, which keeps each pattern's
    next match: a pattern is searched again only once pos has passed its match."""
    for pattern, match in list(ahead.items()):
        if match.start() < pos:
            again = pattern.search(lowered, pos)
            if again is None:
                del ahead[pattern]
            else:
                ahead[pattern] = again
    return min(ahead.values(), key=lambda m: m.start()) if ahead else None


_URL = re.compile(r"""(?:https?://|www\.)[^\s<>"'()\[\]]+|mailto:[^\s<>"']+|magnet:\?[^\s<>"']+""")
_URL_ANY_CASE = re.compile(_URL.pattern, re.I)
_URL_SCHEMES = tuple(
    (re.compile(re.escape(word) + rest), word)
    for word, rest in (
        ("http", r"""s?://[^\s<>"'()\[\]]+"""),
        ("www.", r"""[^\s<>"'()\[\]]+"""),
        ("mailto:", r"""[^\s<>"']+"""),
        ("magnet:?", r"""[^\s<>"']+"""),
    )
)


def _urls(text: str) -> list[tuple[int, int]]:
    """(start, end) of each URL, case-insensitively, as _URL_ANY_CASE.finditer would find them.

    One pattern per scheme, searched in a lower-cased copy: each starts with plain letters, which
    the regex engine skips to fast, and a scheme absent from the text costs one substring test.
    The matches are merged as the alternation would take them: earliest first, none inside one
    already taken (a scheme whose match was overtaken searches again after it)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case to two; rare, so be slow
        return [m.span() for m in _URL_ANY_CASE.finditer(text)]
    ahead = _first_matches(lowered, _URL_SCHEMES)
    spans: list[tuple[int, int]] = []
    while (first := _earliest_match(lowered, spans[-1][1] if spans else 0, ahead)) is not None:
        spans.append(first.span())
    return spans


_DROP = re.compile(
    r"<!--.*?(?:-->|\Z)|<(script|style|head|title|noscript|template|object|iframe)\b[^>]*>.*?(?:</\1\s*>|\Z)",
    re.I | re.S,
)
_DROP_LOWER = re.compile(_DROP.pattern, re.S)
_HIDDEN_STYLES = (  # each with its first word: absent from the page, its regex never runs
    (re.compile(r"display\s*:\s*none"), "display"),
    (re.compile(r"visibility\s*:\s*hidden"), "visibility"),
    (re.compile(r"mso-hide\s*:\s*all"), "mso-hide"),
)


_TAG_NAME = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)")
_VOID = frozenset({"br", "img", "hr", "input", "meta", "link", "wbr", "area", "col", "source"})
_ANCHOR_OPEN = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]*))[^>]*>|<a\b[^>]*>""", re.I)
_ANCHOR_CLOSE = re.compile(r"</a\s*>", re.I)
_IMG_ALT = re.compile(r"""<img\b[^>]*?\balt\s*=\s*(?:"([^"]*)"|'([^']*)')[^>]*>""", re.I)
# A fixed replacement keeps re.sub in C (a template with group references is expanded in
# Python for every match on 3.11).
_BLOCK = re.compile(
    r"<(?:br|hr|/?(?:p|div|tr|td|th|li|h[1-6]|table|tbody|thead|ul|ol|blockquote|center|section|article))\b[^>]*>",
    re.I,
)
_TAG = re.compile(r"<[^>]*>")
# Whitespace other than space and newline is replaced with str.replace (a C scan each); the
# regexes then start with a literal, which the regex engine finds fast.
_OTHER_SPACES = ("\xa0", "\t", "\r", "\f", "\v", "\u2002", "\u2003", "\u2009", "\u200a", "\u202f", "\u3000")
_SPACE_RUN = re.compile(r"  +")
_NEWLINE_RUN = re.compile(r"\n\n+")
_INVISIBLE_CHARS = ("\u200b", "\u200c", "\u200d", "\ufeff", "\u034f", "\u00ad")
# ASCII control characters, so that an ASCII page stays a one-byte-per-character string through
# every pass; the page's own (invisible anyway) are removed first.
_MARK_SPLIT = re.compile("([\x01\x02])")
_OPEN_MARK = "\x01"
_CLOSE_MARK = "\x02"
def _drop_invisible_elements(markup: str) -> tuple[str, str]:
    """Comments, scripts, styles, head… replaced by a space; and the result ASCII-lower-cased.

    Found in an ASCII-lower-cased copy (same positions), then cut from both."""
    lowered = markup.translate(_ASCII_LOWER)
    spans = [m.span() for m in _DROP_LOWER.finditer(lowered)]
    if not spans:
        return markup, lowered
    kept = [0, *itertools.chain.from_iterable(spans), len(markup)]
    bounds = list(zip(kept[0::2], kept[1::2]))
    return " ".join(markup[a:b] for a, b in bounds), " ".join(lowered[a:b] for a, b in bounds)


def _strip_hidden(markup: str, hidden: list[str], lowered: str) -> str:
    """Cut elements styled invisible, up to their matching close tag (nesting counted); `lowered`
    is markup ASCII-lower-cased."""
    ahead = _first_matches(lowered, _HIDDEN_STYLES)
    if not ahead:
        return markup
    pieces: list[str] = []
    kept_from = 0
    pos = 0
    for _ in range(500):  # bounded: a newsletter has a handful of hidden preheaders
        style = _earliest_match(lowered, pos, ahead)
        if style is None:
            break
        pos = style.end()
        lt = markup.rfind("<", kept_from, style.start())
        gt = markup.find(">", style.end())
        if lt < 0 or gt < 0 or markup.find(">", lt, style.start()) >= 0:
            continue  # the words stand in text, not inside a tag
        name = _TAG_NAME.match(markup, lt)
        if name is None or name.group(1).lower() in _VOID:
            continue
        tag = name.group(1).lower()
        nest = re.compile(rf"<(/?){re.escape(tag)}\b[^>]*>")
        level, close_start, close_end = 1, len(markup), len(markup)
        for inner in nest.finditer(lowered, gt + 1):
            level += -1 if inner.group(1) else 1
            if level == 0:
                close_start, close_end = inner.start(), inner.end()
                break
        pieces.append(markup[kept_from:lt])
        hidden.append(markup[gt + 1 : close_start])
        kept_from = pos = close_end
    if not pieces:
        return markup
    pieces.append(markup[kept_from:])
    return "\n".join(pieces)


def _interleave(pieces: list[str], between: list[str]) -> str:
    """pieces[0] + between[0] + pieces[1] + …: len(pieces) == len(between) + 1."""
    out = pieces + between
    out[0::2] = pieces
    out[1::2] = between
    return "".join(out)


# re.split returns a match's groups between the pieces of text, so slicing gives every group at
# once: no Python callback per match (a newsletter has hundreds of anchors and images).
def _images_to_alt(markup: str) -> str:
    parts = _IMG_ALT.split(markup)
    if len(parts) == 1:
        return markup
    alts = [f"\n{double or single or ''} " for double, single in zip(parts[1::3], parts[2::3])]
    return _interleave(parts[0::3], alts)


def _unescape_href(href: str) -> str:
    # nearly always just &amp; between query parameters
    return html.unescape(href) if "&" in href.replace("&amp;", "") else href.replace("&amp;", "&")


def _markup_to_text(markup: str) -> str:
    if "alt" in markup:
        markup = _images_to_alt(markup)
    markup = _BLOCK.sub("\n", markup)
    markup = _TAG.sub("", markup)
    if "&" in markup:
        markup = html.unescape(markup)
    for char in _INVISIBLE_CHARS:
        if char in markup:
            markup = markup.replace(char, "")
    for char in _OTHER_SPACES:
        if char in markup:
            markup = markup.replace(char, " ")
    if "  " in markup:
        markup = _SPACE_RUN.sub(" ", markup)
    markup = markup.replace(" \n", "\n").replace("\n ", "\n")
    if "\n\n" in markup:
        markup = _NEWLINE_RUN.sub("\n", markup)
    return markup.strip()


def _html_to_text(markup: str) -> tuple[str, str, list[tuple[str, int, int]]]:
    """Visible text, hidden text, and (href, start, end) of each anchor's text in the visible text."""
    for mark in (_OPEN_MARK, _CLOSE_MARK):
        if mark in markup:
            markup = markup.replace(mark, "")
    markup, lowered = _drop_invisible_elements(markup)
    hidden: list[str] = []
    markup = _strip_hidden(markup, hidden, lowered)
    # Anchors become marks that survive tag stripping, so link positions in the
    # final text come out of one pass instead of converting every fragment separately.
    parts = _ANCHOR_OPEN.split(markup)
    hrefs = [
        (_unescape_href(href) if "&" in href else href).strip()
        for href in (a or b or c or "" for a, b, c in zip(parts[1::4], parts[2::4], parts[3::4]))
    ]
    if hrefs:
        markup = _OPEN_MARK.join(parts[0::4])
    markup = _ANCHOR_CLOSE.sub(_CLOSE_MARK, markup)
    text = _markup_to_text(markup)
    hidden_text = "\n".join(_markup_to_text(h) for h in hidden)
    if not hrefs:
        return text.replace(_CLOSE_MARK, ""), hidden_text, []
    parts = _MARK_SPLIT.split(text)
    pieces = parts[0::2]
    marks = parts[1::2]
    # where each mark stands in the text without marks: the length of all text before it
    offsets = list(itertools.accumulate(map(len, pieces)))
    spans: list[tuple[str, int, int]] = []
    index = -1
    open_at = -1
    for k, mark in enumerate(marks):
        at = offsets[k]
        if mark == _OPEN_MARK:
            if open_at >= 0:  # unclosed anchor: it ends where the next begins
                spans.append((hrefs[index], open_at, at))
            index += 1
            open_at = at if index < len(hrefs) else -1
        elif open_at >= 0:
            spans.append((hrefs[index], open_at, at))
            open_at = -1
    if open_at >= 0:
        spans.append((hrefs[index], open_at, offsets[-1]))
    return "".join(pieces), hidden_text, spans


_WORD = re.compile(r"\w+")


def split_words(folded: str) -> frozenset[str]:
    """The distinct \\w+ words, as policies.message split them before _speedups.words."""
    words: set[str] = set()
    for token in set(folded.split()):
        if token.isalnum():
            words.add(token)
        else:
            words.update(_WORD.findall(token))
    return frozenset(words)


_NUMBER_RUN = re.compile(r"\d[\d .\-]{7,}")


def number_windows(text: str, before: int, after: int) -> list[tuple[int, int]]:
    """Windows around the runs of digits, as policies.rules.content.personal_numbers built them."""
    windows: list[tuple[int, int]] = []
    for run in _NUMBER_RUN.finditer(text):
        start, end = max(0, run.start() - before), run.end() + after
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


_FOLD_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")


def fold_reference(text: str) -> str:
    """NFKD, combining marks dropped, casefolded: policies.message.fold by its definition."""
    import unicodedata

    return _FOLD_COMBINING.sub("", unicodedata.normalize("NFKD", text)).casefold()


def anchors_with_offset(markup: str, offset: int) -> tuple[str, str, list[tuple[str, str, int, int]]]:
    """_html_to_text with each anchor as Link's fields: href, anchor text stripped, offset positions."""
    text, hidden, spans = _html_to_text(markup)
    return text, hidden, [(href, text[s:e].strip(), offset + s, offset + e) for href, s, e in spans]


# --- the C module's signatures ------------------------------------------------------------------


def html_to_text(markup: str, offset: int | None = None) -> tuple[str, str, list[Any]]:
    """(text, hidden_text, anchors): anchors as (href, start, end) in the text; with an offset, as
    (href, anchor text stripped, offset + start, offset + end)."""
    if not isinstance(markup, str):
        raise TypeError("html_to_text() argument 1 must be str")
    if offset is None:
        return _html_to_text(markup)
    if offset < 0:
        raise ValueError("html_to_text(): offset must not be negative")
    return anchors_with_offset(markup, offset)


def words(text: str) -> frozenset[str]:
    """The distinct \\w+ runs of text."""
    if not isinstance(text, str):
        raise TypeError("words() takes a str")
    return split_words(text)


# The UTF-16 high bytes of the scripts without spaces (U+3000-9FFF, U+AC00-D7FF, U+F900-FAFF):
# every other byte, deleted by bytes.translate, leaves nothing.
_NOT_UNSPACED_HIGH = bytes(b for b in range(256) if not (0x30 <= b <= 0x9F or 0xAC <= b <= 0xD7 or b in (0xF9, 0xFA)))


def vocabulary(words: Iterable[str]) -> frozenset[str]:
    """The distinct words, for known_words."""
    words = tuple(words)
    if not all(isinstance(w, str) for w in words):
        raise TypeError("vocabulary() takes an iterable of str")
    return frozenset(words)


def known_words(text: str, vocabulary: frozenset[str]) -> tuple[frozenset[str], bool]:
    """words(text) & the vocabulary, and whether a word of text has a character of a script without
    spaces (its UTF-16 high byte one of _NOT_UNSPACED_HIGH's complement: a surrogate's never is)."""
    found = words(text)
    wide = "\n".join(w for w in found if not w.isascii())
    unspaced = bool(wide.encode("utf-16-le", "surrogatepass")[1::2].translate(None, _NOT_UNSPACED_HIGH))
    return found & vocabulary, unspaced


def urls(text: str) -> list[tuple[int, int]]:
    """(start, end) of the http(s)://, www., mailto: and magnet:? URLs."""
    if not isinstance(text, str):
        raise TypeError("urls() takes a str")
    return _urls(text)


def fold(text: str, fold_run: Callable[[str], str]) -> str:
    """Text with ASCII lower-cased and each run of non-ASCII characters folded by fold_run (in one
    call here: ASCII characters are starters, which no decomposition reorders across, and
    casefold() lower-cases ASCII as lower() does)."""
    folded = fold_run(text)
    if not isinstance(folded, str):
        raise TypeError("fold_run must return a str")
    return folded


def qp_decode(data: bytes | bytearray | memoryview) -> bytes:
    """binascii.a2b_qp(data)."""
    return binascii.a2b_qp(bytes(data))
