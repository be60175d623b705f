"""A tiny escaping renderer: string.Template files where every value is HTML-escaped unless it is
already `Safe` (the output of this module). No template dependency, no logic in templates."""

from __future__ import annotations

import html
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any, Iterable


class Safe(str):
    """Markup that was built here from escaped parts; inserted as is."""


def escape(value: Any) -> Safe:
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Safe:
    return Safe(sep.join(escape(p) for p in parts))


@lru_cache(maxsize=None)
def _template(name: str) -> Template:
    text = resources.files("relay.web").joinpath("templates", name).read_text(encoding="utf-8")
    return Template(text)


def render(name: str, **values: Any) -> Safe:
    """Fill templates/<name>; a missing value is an error, not an empty string."""
    return Safe(_template(name).substitute({k: escape(v) for k, v in values.items()}))


def tag(name: str, content: Any = "", **attrs: Any) -> Safe:
    """One element: tag("a", "text", href="/x", class_="btn"); attrs with None or False are left out."""
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        parts.append(key if value is True else f'{key}="{escape(value)}"')
    return Safe(f"<{' '.join(parts)}>{escape(content)}</{name}>")
