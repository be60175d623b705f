"""Opt-out rule: every marketing message carries a visible, working unsubscribe link (POLICY.md)."""

from __future__ import annotations

from urllib.parse import quote

from policies.facts import MessageFacts
from policies.findings import Hit, Stage
from policies.message import ParsedMessage
from policies.rule import rule
from policies.wordlists import WordList, wordlist

DEFAULT_PLACEHOLDER = "{{unsubscribe_url}}"
# How far (in characters of visible text) unsubscribe wording may stand from a link and
# still describe it: "Geen nieuwsbrief meer? Klik hier" is one sentence.
NEAR = 120
_LINK_SCHEMES = ("http://", "https://", "mailto:", "www.")


def has_placeholder(message: ParsedMessage, placeholder: str) -> bool:
    """The relay's placeholder in any text or HTML part, also URL-encoded inside an href."""
    if not placeholder:
        return False
    encoded = quote(placeholder, safe="").lower()
    for part in message.text_parts:
        if placeholder in part:
            return True
    for part in message.html_parts:
        if placeholder in part or (encoded != placeholder.lower() and encoded in part.lower()):
            return True
    return False


def _usable(href: str) -> bool:
    return href.strip().lower().startswith(_LINK_SCHEMES)


def unsubscribe_link(message: ParsedMessage, words: WordList) -> str | None:
    """The href of a link recognisable as an unsubscribe link, or None.

    A link qualifies when its anchor text or its URL uses unsubscribe wording, or when
    that wording stands within NEAR characters of it in the visible text.
    """
    links = [link for link in message.links if _usable(link.href)]
    if not links:
        return None
    # One search over all anchors and URLs first (a newsletter has hundreds of links), then
    # find which link it was.
    labels = [f"{link.text}\n{link.href}" for link in links]
    if words.search("\n\n".join(labels)) is not None:
        for link, label in zip(links, labels):
            if words.search(label) is not None:
                return link.href
    text = message.text
    windows = [text[max(0, link.start - NEAR) : link.end + NEAR] for link in links]
    if words.search("\n\n".join(windows)) is not None:
        for link, window in zip(links, windows):
            if words.search(window) is not None:
                return link.href
    return None


@rule(
    "optout.missing",
    "Marketing message with no visible opt-out link (the relay's placeholder or a recognised unsubscribe link).",
    clauses=("M-opt-out", "E-afmeldproces"),
    stage=Stage.MESSAGE,
    marketing_only=True,
)
def missing(facts: MessageFacts) -> Hit | None:
    """Passes with params["placeholder"] (default {{unsubscribe_url}}) anywhere in a text
    or HTML part, or with an http(s)/mailto link whose text, URL or nearby words say
    unsubscribe in Dutch or English (word list `unsubscribe`). Transactional streams are
    exempt through marketing_only."""
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
