"""Quarantined HTML made inert for review, by nh3 (the Rust ammonia sanitizer; its html5ever parser
parses as browsers do): scripts, frames, forms, event handlers and every remote
reference (images, styles, fonts, links) removed before it reaches the browser. The sandboxed iframe and
the CSP of its endpoint are the second and third walls; this one means nothing is even attempted.

Kept: the markup a newsletter is laid out with (tables, fonts, inline styles, data: images). Links keep
their text; their targets are listed for the reviewer (InertHtml.links) instead of being followable.
<style> elements are dropped (their CSS can load and select; inline styles are enough to review)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import nh3
from markupsafe import Markup

# Removed with everything inside them: nothing of them is content worth reviewing.
_DROP_WITH_CONTENT = frozenset({
    "script", "style", "noscript", "template", "title", "object", "embed", "applet", "iframe", "frame", "frameset",
    "noframes", "noembed", "svg", "math", "xmp",
})
# Elements that load or point somewhere by themselves: counted as remote references when present.
_LOADERS = frozenset({"link", "meta", "base", "iframe", "frame", "object", "embed", "applet", "svg", "audio", "video", "source", "track", "portal"})
_TAGS = (set(nh3.ALLOWED_TAGS) | {"font", "big", "tfoot", "caption", "center", "nobr"}) - {"area", "map"}
_LAYOUT = {"style", "title", "align", "valign", "width", "height", "bgcolor", "dir", "lang", "border", "hidden"}
# Attributes that fetch, redirect or navigate: let through to the filter (which drops them) to be counted.
_URL_ATTRS = frozenset({
    "src", "srcset", "href", "background", "poster", "action", "formaction", "data", "lowsrc", "dynsrc",
    "cite", "longdesc", "usemap", "ping", "manifest", "codebase", "archive", "profile", "icon", "xlink:href",
})
_ATTRIBUTES = {
    "*": _LAYOUT | _URL_ATTRS,
    "table": {"cellpadding", "cellspacing", "summary", "frame", "rules"},
    "td": {"colspan", "rowspan", "nowrap", "headers", "scope"},
    "th": {"colspan", "rowspan", "nowrap", "headers", "scope", "abbr"},
    "col": {"span"},
    "colgroup": {"span"},
    "font": {"color", "face", "size"},
    "img": {"alt"},
    "a": {"name"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "hr": {"size", "noshade"},
    "time": {"datetime"},
    "data": {"value"},
}
# Functions a kept inline style may call; anything else (url() to a host, image-set(), expression()) goes.
_CSS_FUNCTION = re.compile(r"([a-zA-Z_-]+)\s*\(")
_CSS_SAFE_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla", "calc", "min", "max", "clamp", "url"})
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)
# One declaration: up to a semicolon that is not inside parentheses or quotes (data: URLs have one).
_CSS_DECLARATION = re.compile(r"""(?:[^;("']|\([^)]*\)|"[^"]*"|'[^']*')+""")
_LOADER_TAG = re.compile(r"<(" + "|".join(sorted(_LOADERS | {"script"})) + r")[\s>/]")


def _inline_image(value: str) -> bool:
    return value.strip().lower().startswith("data:image/") and "svg" not in value[:40].lower()


@dataclass
class InertHtml:
    html: Markup  # nh3's output: safe to insert as is
    blocked: int = 0  # remote references removed (images, stylesheets, fonts, frames)
    scripts: int = 0  # script elements, event handlers and javascript: links removed
    links: list[str] = field(default_factory=list)  # where the links pointed, in order, for the reviewer


class _Review:
    """nh3's attribute filter for one document: decides each attribute and counts what it removes."""

    def __init__(self) -> None:
        self.blocked = 0
        self.scripts = 0
        self.links: list[str] = []

    def __call__(self, element: str, attribute: str, value: str) -> str | None:
        if attribute.startswith("on"):
            self.scripts += 1
            return None
        if attribute == "href":  # nh3 let only http, https, mailto and data: through
            if element == "a" and value.strip():
                self.links.append(value.strip())
            return None
        if attribute in _URL_ATTRS:
            if element == "img" and attribute == "src" and _inline_image(value):
                return value
            if value.strip():
                self.blocked += 1
            return None
        if attribute == "style":
            return self._style(value)
        return value

    def _style(self, css: str) -> str | None:
        kept = []
        for declaration in _CSS_DECLARATION.findall(css):
            if not declaration.strip():
                continue
            if "\\" in declaration or any(f.lower() not in _CSS_SAFE_FUNCTIONS for f in _CSS_FUNCTION.findall(declaration)):
                self.blocked += 1
                continue
            urls = [m.group(2) for m in _CSS_URL.finditer(declaration)]
            if declaration.lower().count("url(") != len(urls) or not all(_inline_image(u) for u in urls):
                self.blocked += 1
                continue
            kept.append(declaration.strip())
        return ";".join(kept) or None


def make_inert(document: str) -> InertHtml:
    review = _Review()
    cleaned = nh3.clean(
        document,
        tags=_TAGS,
        clean_content_tags=set(_DROP_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        generic_attribute_prefixes={"on"},  # every event handler reaches the filter, to be counted and dropped
        attribute_filter=review,
        url_schemes={"http", "https", "mailto", "data"},  # javascript: and the like never reach the filter
        url_relative="deny",  # nor do paths, which would point into the admin UI itself
        link_rel=None,
        strip_comments=True,
    )
    # The elements nh3 removed are not reported by it: count them in the document reduced to them alone.
    # Raw text inside a script can hold a tag name as well; a count for the reader, not the wall.
    survey = nh3.clean(document, tags=set(_LOADERS | {"script"}), clean_content_tags=set(), attributes={}, link_rel=None)
    for match in _LOADER_TAG.finditer(survey):
        if match.group(1) == "script":
            review.scripts += 1
        else:
            review.blocked += 1
    return InertHtml(Markup(cleaned), review.blocked, review.scripts, review.links)
