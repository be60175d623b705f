"""WCAG 2.x contrast for a sender's accent colour: use it where it is readable, else a darker
shade of the same hue that is (so any configured colour leaves the page accessible)."""

from __future__ import annotations

WHITE = "#ffffff"
# WCAG 1.4.3 (AA) for normal-size text; white text on the accent and accent text on white alike.
TEXT_CONTRAST = 4.5
DEFAULT_ACCENT = "#1a56db"


def _channels(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _linear(channel: int) -> float:
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def relative_luminance(colour: str) -> float:
    r, g, b = (_linear(c) for c in _channels(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(first: str, second: str) -> float:
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def accessible_accent(colour: str | None, background: str = WHITE, minimum: float = TEXT_CONTRAST) -> str:
    """`colour` when it reaches `minimum` against `background`, else the same hue darkened step by
    step until it does (black always does against white); no colour configured: the default."""
    if colour is None:
        return DEFAULT_ACCENT
    r, g, b = _channels(colour)
    candidate = colour
    while contrast_ratio(candidate, background) < minimum:
        r, g, b = (int(c * 0.9) for c in (r, g, b))
        candidate = f"#{r:02x}{g:02x}{b:02x}"
    return candidate
