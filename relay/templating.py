"""The Jinja2 environment of the admin UI, the signup pages and the confirmation mail: every value is
escaped unless a template marks it otherwise, and a missing value is an error, not an empty string.
The templates are relay/web/templates; this module sits below the packages, so that relay/consent and
relay/http render their pages and mail without importing relay/web (which imports them)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

def environment(folder: str = "web/templates", **options: Any) -> Environment:
    """One way to build a page environment (the admin UI and signup pages here, the recipient's
    pages in relay/web/recipient.py): autoescaping everywhere, a missing value an error."""
    return Environment(
        loader=PackageLoader("relay", folder),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        **options,
    )


ENV = environment(keep_trailing_newline=True)


def render(template: str, **values: Any) -> str:
    return ENV.get_template(template).render(**values)
