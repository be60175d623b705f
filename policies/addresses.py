"""Address normalisation as mailbox providers compare: case-insensitive, IDNA domain, +tags kept;
and the strict RFC 5321 mailbox check that stored consent addresses must pass."""

from __future__ import annotations

import ipaddress
import re


class InvalidAddress(ValueError):
    pass


def normalize_address(address: str) -> str:
    """Lower-case the whole address and IDNA-encode the domain; `user+tag` stays distinct."""
    text = address.strip().strip("<>").strip()
    local, at, domain = text.rpartition("@")
    # text.split() is [text] exactly when no character of text is whitespace (str.isspace's set),
    # found in C rather than by a generator per character: every MAIL FROM and RCPT TO comes here.
    if not at or not local or not domain or text.split() != [text] or "@" in local.strip('"'):
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


# RFC 5321 §4.1.2 Mailbox, with RFC 6531's UTF-8 local parts (the relay speaks SMTPUTF8).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def parse_mailbox(address: str) -> str:
    """A valid RFC 5321 mailbox (local part a dot-string or quoted string, domain a host name of at
    least two labels, IDNA-encoded, or an address literal), normalised as `normalize_address` does.
    Raises InvalidAddress."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress(f"not an e-mail address: {address!r}")
    if not (_DOT_STRING.fullmatch(local) or _QUOTED_STRING.fullmatch(local)):
        raise InvalidAddress(f"not an RFC 5321 mailbox (bad local part): {address!r}")
    if len(local.encode("utf-8")) > 64:
        raise InvalidAddress(f"local part longer than 64 octets: {address!r}")
    return f"{local.lower()}@{_mailbox_domain(domain, address)}"


def _mailbox_domain(domain: str, address: str) -> str:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            raise InvalidAddress(f"not an address literal: {address!r}") from None
        return domain.lower()  # as normalize_address spells it, so both compare equal
    domain = domain[:-1] if domain.endswith(".") else domain  # the fully-qualified spelling
    try:
        ascii_domain = (domain if domain.isascii() else domain.encode("idna").decode("ascii")).lower()
    except UnicodeError:
        raise InvalidAddress(f"invalid internationalised domain in {address!r}") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or len(ascii_domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidAddress(f"not a valid domain in {address!r}")
    if labels[-1].isdigit():
        raise InvalidAddress(f"a numeric top-level domain is not a host name: {address!r}")
    return ascii_domain
