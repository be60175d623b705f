"""Opt-out rule: every marketing message carries a visible, working unsubscribe link (POLICY.md)."""

from __future__ import annotations

import bisect
import html
import re
from typing import Iterator, Sequence
from urllib.parse import quote

from policies.facts import MessageFacts
from policies.findings import Hit, Stage
from policies.message import Link, ParsedMessage
from policies.rule import rule
from policies.wordlists import WordList, wordlist

DEFAULT_PLACEHOLDER = "{{unsubscribe_url}}"
# How far (in characters of visible text) unsubscribe wording may stand from a link and
# still describe it: "Geen nieuwsbrief meer? Klik hier" is one sentence.
NEAR = 120
_LINK_SCHEMES = ("http://", "https://", "mailto:", "www.")
# Where the sentence around a link ends: a full stop, a "|" between footer links, a blank line.
# Not "?" or ":": "Keine Lust mehr? Hier abmelden" and "Afmelden: klik hier" introduce the link.
_SENTENCE_END = re.compile(r"[.!](?:\s|$)|\s[|•·]\s|\n\s*\n")
_LIST_UNSUBSCRIBE_URL = re.compile(r"<\s*([^<>\s]+)\s*>")
# An e-mail address written out in the visible text (not a link): "To unsubscribe send a blank email
# to leave-news-123K@lists.example.com". Unsubscribing by a reply e-mail is free and needs no login
# or questionnaire, so it is an opt-out in the sense of M-opt-out and E-afmeldproces.
_ADDRESS = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.I | re.A)


def has_placeholder(message: ParsedMessage, placeholder: str) -> bool:
    """The relay's placeholder where a reader sees it: in the visible text (plain parts included) or
    as the target of a visible link, also URL-encoded inside an href."""
    if not placeholder:
        return False
    if placeholder in message.text:
        return True
    encoded = quote(placeholder, safe="").lower()
    for part in message.html_parts:
        if placeholder in part or encoded in part.lower():
            break
    else:
        return False
    lowered = placeholder.lower()
    return any(
        (lowered in link.href.lower() or encoded in link.href.lower()) and link_visible(message, link)
        for link in message.links
    )


def _usable(href: str) -> bool:
    return href.strip().lower().startswith(_LINK_SCHEMES)


def list_unsubscribe_urls(message: ParsedMessage) -> frozenset[str]:
    """The http(s) and mailto targets of the List-Unsubscribe header (RFC 2369), as written."""
    value = message.header("List-Unsubscribe")
    return frozenset(html.unescape(url) for url in _LIST_UNSUBSCRIBE_URL.findall(value)) if value else frozenset()


def _sentence(text: str, link: Link, others: Sequence[Link], starts: Sequence[int]) -> str:
    """The sentence of the visible text around `link` (at most NEAR characters either side), with
    the anchor text of every other link blanked: a neighbour's "Abmelden" does not describe it."""
    lo, hi = max(0, link.start - NEAR), link.end + NEAR
    before = text[lo : link.start]
    ends = list(_SENTENCE_END.finditer(before))
    if ends:
        lo += ends[-1].end()
    after = _SENTENCE_END.search(text, link.end, hi)
    if after is not None:
        hi = after.start()
    pieces: list[str] = []
    at = lo
    for i in range(bisect.bisect_left(starts, lo - NEAR * 4), len(others)):
        other = others[i]
        if other.start >= hi:
            break
        if other.end <= at or (other.start, other.end) == (link.start, link.end):
            continue
        start, end = max(other.start, at), min(other.end, hi)
        pieces += (text[at:start], " " * (end - start))
        at = end
    pieces.append(text[at:hi])
    return "".join(pieces)


def _candidates(message: ParsedMessage, words: WordList) -> Iterator[Link]:
    """Links that say unsubscribe, by their target, their text or the sentence around them."""
    links = [link for link in message.links if _usable(link.href)]
    if not links:
        return
    listed = list_unsubscribe_urls(message)
    if listed:
        for link in links:
            if link.href in listed:
                yield link
    # One search over all anchors and URLs first (a newsletter has hundreds of links), then
    # find which link it was.
    labels = [f"{link.text}\n{link.href}" for link in links]
    if words.search("\n\n".join(labels)) is not None:
        for link, label in zip(links, labels):
            if words.search(label) is not None:
                yield link
    text = message.text
    windows = [text[max(0, link.start - NEAR) : link.end + NEAR] for link in links]
    if words.search("\n\n".join(windows)) is None:
        return
    ordered = sorted((link for link in message.links if link.end > link.start), key=lambda link: link.start)
    starts = [link.start for link in ordered]
    for link in links:
        if words.search(_sentence(text, link, ordered, starts)) is not None:
            yield link


def unsubscribe_link(message: ParsedMessage, words: WordList) -> str | None:
    """The href of a visible link recognisable as the unsubscribe link, or None.

    A link qualifies when its target is the message's own List-Unsubscribe URL, or when its
    anchor text, its URL or the sentence around it (within NEAR characters) uses unsubscribe
    wording of any shipped language; and a reader can see it (link_visible).
    """
    for link in _candidates(message, words):
        if link_visible(message, link):
            return link.href
    return unsubscribe_address(message, words)


def unsubscribe_address(message: ParsedMessage, words: WordList) -> str | None:
    """A "mailto:" target for an e-mail address written out in the visible text whose sentence says
    unsubscribe ("To unsubscribe send a blank email to leave-…@…", "To be removed from this list,
    send an email to …"), or None. Text is visible as it is rendered, so no style check applies."""
    text = message.text
    if "@" not in text:
        return None
    ordered = sorted((link for link in message.links if link.end > link.start), key=lambda link: link.start)
    starts = [link.start for link in ordered]
    found = [m for m in _ADDRESS.finditer(text) if not _inside_link(ordered, starts, m.start())]
    if not found:
        return None
    windows = [text[max(0, m.start() - NEAR) : m.end() + NEAR] for m in found]
    if words.search("\n\n".join(windows)) is None:
        return None
    for m in found:
        address = Link(f"mailto:{m.group()}", "", m.start(), m.end())
        if words.search(_sentence(text, address, ordered, starts)) is not None:
            return address.href
    return None


def _inside_link(ordered: Sequence[Link], starts: Sequence[int], at: int) -> bool:
    """The address is part of a link's text or URL (a mailto: link is judged as a link); `ordered`
    are the links by start, `starts` their starts. Links do not nest, so the one that starts last
    before `at` is the only one that can hold it."""
    i = bisect.bisect_right(starts, at) - 1
    return i >= 0 and at < ordered[i].end


# --- visibility of one link, from the inline styles of its anchor and of the element around it ---

_ANCHOR = re.compile(r"<a\b[^>]*>", re.I)
_ATTRIBUTE = r"""\b{}\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))"""
_HREF = re.compile(_ATTRIBUTE.format("href"), re.I)
_STYLE = re.compile(_ATTRIBUTE.format("style"), re.I)
_BGCOLOR = re.compile(_ATTRIBUTE.format("bgcolor"), re.I)
_OPEN_TAG = re.compile(r"<([a-z][a-z0-9]*)\b[^>]*>", re.I)
_SIZE = re.compile(r"(\d*\.?\d+)\s*(px|pt|em|rem|%)?")
_HEX3 = re.compile(r"#[0-9a-f]{3}")
_HEX6 = re.compile(r"#[0-9a-f]{6}")
_RGB = re.compile(r"rgba?\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*([\d.]+)\s*)?\)")
_NAMED_COLOURS = {
    "white": "#ffffff", "black": "#000000", "red": "#ff0000", "blue": "#0000ff", "green": "#008000",
    "gray": "#808080", "grey": "#808080", "silver": "#c0c0c0", "yellow": "#ffff00", "transparent": "",
}


def _attribute(pattern: re.Pattern[str], tag: str) -> str | None:
    match = pattern.search(tag)
    if match is None:
        return None
    return html.unescape(next(g for g in match.groups() if g is not None))


def _declarations(style: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for declaration in style.split(";"):
        name, _, value = declaration.partition(":")
        if value:
            found[name.strip().lower()] = value.replace("!important", "").strip().lower()
    return found


def _colour(value: str | None) -> str:
    """A CSS colour as #rrggbb, "" when unknown: only equal known colours count as the same."""
    if not value:
        return ""
    value = value.strip().lower()
    if not value.startswith("rgb"):
        value = value.split()[0] if value else ""  # "#fff url(x.png) no-repeat": the colour comes first
    if value in _NAMED_COLOURS:
        return _NAMED_COLOURS[value]
    if _HEX3.fullmatch(value):
        return "#" + "".join(c * 2 for c in value[1:])
    if _HEX6.fullmatch(value):
        return value
    rgb = _RGB.fullmatch(value)
    if rgb is not None:
        if rgb.group(4) is not None and float(rgb.group(4)) == 0:
            return ""
        return "#" + "".join(f"{min(255, int(g)):02x}" for g in rgb.groups()[:3])
    return ""


def _background(tag: str) -> str:
    style = _declarations(_attribute(_STYLE, tag) or "")
    value = style.get("background-color") or style.get("background") or _attribute(_BGCOLOR, tag)
    return _colour(value)


def _enclosing_background(markup: str, at: int) -> str:
    """The background stated inline on the nearest element that is still open at `at`. Only tags that
    state a background are looked at, found backwards from `at` (a footer link has hundreds of tags
    before it, a handful with a background)."""
    lo = max(0, at - 20_000)
    lowered = markup[lo:at].lower()
    end = len(lowered)
    while end > 0:
        mark = max(lowered.rfind("background", 0, end), lowered.rfind("bgcolor", 0, end))
        if mark < 0:
            return ""
        start = lowered.rfind("<", 0, mark)
        end = start
        if start < 0:
            return ""
        if lowered.find(">", start, mark) >= 0:
            continue  # the word stands in text, not inside a tag
        tag = _OPEN_TAG.match(markup, lo + start)
        if tag is None:
            continue
        colour = _background(tag.group(0))
        if not colour:
            continue
        name = tag.group(1).lower()
        between = lowered[start + len(tag.group(0)) :]
        if between.count(f"</{name}") <= between.count(f"<{name}"):
            return colour
    return ""


def _tiny(size: str) -> bool:
    """A font size no reader can read: 0 or 1 px/pt, under a tenth of an em or 10%."""
    match = _SIZE.fullmatch(size.strip())
    if match is None:
        return False
    number, unit = float(match.group(1)), match.group(2) or "px"
    return number <= 1 if unit in ("px", "pt") else number < (10 if unit == "%" else 0.1)


def _anchor_hidden(markup: str, anchor: re.Match[str]) -> bool:
    style = _declarations(_attribute(_STYLE, anchor.group(0)) or "")
    if _tiny(style.get("font-size", "")):
        return True
    if style.get("opacity", "1").strip() in ("0", "0.0", ".0"):
        return True
    for key in ("width", "height", "max-height", "max-width"):
        if style.get(key, "").strip() in ("0", "0px", "1px"):
            return True
    colour = _colour(style.get("color"))
    if not colour:
        return False
    background = _background(anchor.group(0)) or _enclosing_background(markup, anchor.start())
    return colour == background


def _anchors_to(markup: str, href: str) -> Iterator[re.Match[str]]:
    """The opening <a> tags in `markup` whose href is `href`, found from where the href is written."""
    written = (href, href.replace("&", "&amp;"))
    for target in dict.fromkeys(written):
        at = markup.find(target)
        while at >= 0:
            start = markup.rfind("<", 0, at)
            if start >= 0 and markup[start : start + 2].lower() == "<a":
                anchor = _ANCHOR.match(markup, start)
                if anchor is not None and anchor.end() > at:
                    found = _attribute(_HREF, anchor.group(0))
                    if found is not None and found.strip() == href:
                        yield anchor
            at = markup.find(target, at + len(target))


def link_visible(message: ParsedMessage, link: Link) -> bool:
    """Not styled away: elements hidden by display/visibility never become links; here the anchor's
    own inline style (font-size 0 or 1, opacity 0, zero size) and its colour against the background
    stated inline on it or the element around it. A URL in plain text is always visible."""
    if not link.text:
        return True  # a URL written out in text, or an image link: shown as it is
    seen = False
    for markup in message.html_parts:
        for anchor in _anchors_to(markup, link.href):
            seen = True
            if not _anchor_hidden(markup, anchor):
                return True
    return not seen


@rule(
    "optout.missing",
    "Marketing message with no visible opt-out link (the relay's placeholder or a recognised unsubscribe link).",
    clauses=("M-opt-out", "E-afmeldproces"),
    stage=Stage.MESSAGE,
    marketing_only=True,
)
def missing(facts: MessageFacts) -> Hit | None:
    """Passes with params["placeholder"] (default {{unsubscribe_url}}) in the visible text or as a
    visible link's target, with a visible link to the message's own List-Unsubscribe URL, or with a
    visible http(s)/mailto link whose text, URL or sentence says unsubscribe in any shipped language
    (word lists `unsubscribe.<lang>.txt`). Transactional streams are exempt through marketing_only."""
    message = facts.message
    if message is None:
        return None
    placeholder = facts.params.get("placeholder") or DEFAULT_PLACEHOLDER
    if has_placeholder(message, str(placeholder)):
        return None
    if unsubscribe_link(message, wordlist("unsubscribe", facts.params)) is not None:
        return None
    return Hit(
        f"Marketing message without a visible opt-out: no {placeholder} and no recognisable unsubscribe link",
    )


RULES = (missing,)
