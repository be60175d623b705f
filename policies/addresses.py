"""Address normalisation as mailbox providers compare: case-insensitive, IDNA domain, +tags kept."""

from __future__ import annotations


class InvalidAddress(ValueError):
    pass


def normalize_address(address: str) -> str:
    """Lower-case the whole address and IDNA-encode the domain; `user+tag` stays distinct."""
    text = address.strip().strip("<>").strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in text) or "@" in local.strip('"'):
        raise InvalidAddress(f"not an e-mail address: {address!r}")
    domain = domain.rstrip(".")
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError as exc:
        raise InvalidAddress(f"invalid domain in {address!r}") from exc
    if not ascii_domain or ".." in ascii_domain:
        raise InvalidAddress(f"invalid domain in {address!r}")
    return f"{local.lower()}@{ascii_domain.lower()}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
