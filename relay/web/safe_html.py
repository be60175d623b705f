"""Quarantined HTML made inert for review: scripts, frames, event handlers and every remote reference
(images, styles, fonts, links) removed before it reaches the browser. The sandboxed iframe and the CSP
of its endpoint are the second and third walls; this one means nothing is even attempted."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser

# Removed with everything inside them.
_DROP_WITH_CONTENT = frozenset({"script", "noscript", "object", "embed", "applet", "iframe", "frame", "frameset", "template", "svg", "math"})
# Removed, content kept (or void): they fetch, redirect or change where URLs point.
_DROP_TAG = frozenset({"base", "link", "meta", "portal", "param", "source", "track"})
_URL_ATTRS = frozenset({
    "src", "srcset", "href", "background", "poster", "action", "formaction", "data", "lowsrc", "dynsrc",
    "cite", "longdesc", "usemap", "ping", "manifest", "codebase", "archive", "profile", "icon", "xlink:href",
})
_VOID = frozenset({"area", "br", "col", "hr", "img", "input", "wbr"})
_CSS_URL = re.compile(r"url\s*\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)
_CSS_IMPORT = re.compile(r"@import[^;]*;?", re.IGNORECASE)
_CSS_EXPRESSION = re.compile(r"expression\s*\(", re.IGNORECASE)


def _inline_image(value: str) -> bool:
    return value.strip().lower().startswith("data:image/") and "svg" not in value[:40].lower()


def _clean_css(css: str) -> tuple[str, int]:
    blocked = 0

    def url(match: re.Match[str]) -> str:
        nonlocal blocked
        if _inline_image(match.group(2)):
            return match.group(0)
        blocked += 1
        return "none"

    css, imports = _CSS_IMPORT.subn("", css)
    css = _CSS_URL.sub(url, css)
    css = _CSS_EXPRESSION.sub("invalid(", css)
    return css, blocked + imports


@dataclass(frozen=True)
class InertHtml:
    html: str
    blocked: int  # remote references removed (images, stylesheets, fonts, frames)
    scripts: int  # script elements and event handlers removed


class _Sanitizer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.skip_tag = ""
        self.in_style = False
        self.blocked = 0
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, closed=True)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], closed: bool) -> None:
        if self.skip_depth:
            if tag == self.skip_tag and not closed:
                self.skip_depth += 1
            return
        if tag in _DROP_WITH_CONTENT:
            if tag == "script":
                self.scripts += 1
            else:
                self.blocked += 1
            if not closed and tag not in _VOID:
                self.skip_depth, self.skip_tag = 1, tag
            return
        if tag in _DROP_TAG:
            if tag == "link" or any(k in ("src", "href", "srcset", "content") for k, _ in attrs):
                self.blocked += 1
            return
        kept: list[str] = []
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.scripts += 1
                continue
            if name in _URL_ATTRS:
                if name == "href":
                    # Links stay readable (the target in a tooltip) but cannot be followed from here.
                    kept.append(f'title="{html.escape(value.strip(), quote=True)}"')
                    continue
                if name == "src" and _inline_image(value):
                    kept.append(f'src="{html.escape(value, quote=True)}"')
                    continue
                if value.strip():
                    self.blocked += 1
                continue
            if name == "style":
                value, blocked = _clean_css(value)
                self.blocked += blocked
            kept.append(f'{name}="{html.escape(value, quote=True)}"' if value else name)
        self.out.append(f"<{tag}{' ' if kept else ''}{' '.join(kept)}{' /' if closed else ''}>")
        if tag == "style" and not closed:
            self.in_style = True

    def handle_endtag(self, tag: str) -> None:
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth -= 1
            return
        if tag in _DROP_WITH_CONTENT or tag in _DROP_TAG or tag in _VOID:
            return
        if tag == "style":
            self.in_style = False
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.in_style:
            css, blocked = _clean_css(data)
            self.blocked += blocked
            self.out.append(css.replace("<", "\\3c "))
            return
        self.out.append(html.escape(data, quote=False))

    def handle_comment(self, data: str) -> None:
        return  # conditional comments and friends are not shown

    def handle_decl(self, decl: str) -> None:
        return

    def handle_pi(self, data: str) -> None:
        return

    def unknown_decl(self, data: str) -> None:
        return


def make_inert(document: str) -> InertHtml:
    parser = _Sanitizer()
    parser.feed(document)
    parser.close()
    return InertHtml("".join(parser.out), parser.blocked, parser.scripts)
