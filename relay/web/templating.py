"""The Jinja2 environment of the admin UI, the signup pages and the confirmation mail: every value is
escaped unless a template marks it otherwise, and a missing value is an error, not an empty string."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

ENV = Environment(
    loader=PackageLoader("relay.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render(template: str, **values: Any) -> str:
    return ENV.get_template(template).render(**values)
