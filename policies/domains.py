"""Host names as a reader judges them: the registrable domain, IP literals and look-alikes of a brand."""

from __future__ import annotations

import ipaddress
import re

# Second-level public suffixes of the countries our senders mail to and the usual suspects: a small,
# fixed subset of the Public Suffix List (no I/O in the core). Anything else: the last two labels.
_TWO_LABEL_SUFFIXES = frozenset(
    """co.uk org.uk ac.uk gov.uk me.uk ltd.uk plc.uk net.uk com.au net.au org.au co.nz org.nz co.za com.br
    com.mx com.ar com.tr com.pl net.pl org.pl co.jp ne.jp or.jp co.kr com.cn com.hk com.sg com.tw co.in
    co.il com.ua co.at or.at gv.at com.es org.es com.pt com.gr com.cy com.mt co.hu""".split()
)
# Characters and pairs a reader takes for others in a domain name (skeleton, after IDNA decoding).
_CONFUSABLE = str.maketrans({
    "0": "o", "1": "l", "i": "l", "3": "e", "5": "s", "$": "s", "@": "a", "а": "a", "е": "e", "о": "o",
    "р": "p", "с": "c", "у": "y", "х": "x", "і": "l", "ӏ": "l", "ı": "l", "ο": "o", "ν": "v", "τ": "t",
})
# Words phishers hang on a brand ("amazon-security.com", "ing-veilig-inloggen.nl"); a brand's own
# hyphenated hosts ("images-amazon.com") carry none of them.
_BAIT = frozenset(
    """security secure login logon signin verify verification account accounts support update service services
    billing payment pay confirm auth id wallet help online web customer client alert notice unlock recovery
    veilig beveiliging inloggen verificatie rekening klantenservice betaling
    sicherheit anmelden konto kundenservice zahlung bestatigung
    securite connexion compte paiement verification""".split()
)
_PAIRS = (("rn", "m"), ("vv", "w"), ("cl", "d"))


def normalise_host(host: str) -> str:
    """Lower-case, no trailing dot, IDNA (xn--) decoded where it can be."""
    host = host.strip().strip(".").lower()
    if "xn--" in host:
        try:
            host = host.encode("ascii").decode("idna")
        except UnicodeError:
            pass
    return host


_DIGIT = re.compile(r"\d")
_DOTTED_QUAD = re.compile(r"(?:^|[.\-])(\d{1,3})[.\-](\d{1,3})[.\-](\d{1,3})[.\-](\d{1,3})(?=[.\-]|$)")


def ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address as the host (also "[::1]" and decimal "3232235777"), or a server's
    reverse-DNS name that is its address in disguise ("static.151.155.156.178.clients.example.de")."""
    host = host.strip("[]")
    if ":" not in host and _DIGIT.search(host) is None:
        return False  # most hosts: no digit at all
    if host.isdigit() and len(host) > 3:
        return True
    quad = _DOTTED_QUAD.search(host)
    if quad is not None and any(c.isalpha() for c in host) and all(int(octet) <= 255 for octet in quad.groups()):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def registrable(host: str) -> str:
    """The domain a registrant controls: "news.shop.co.uk" -> "shop.co.uk", "a.b.shop.nl" -> "shop.nl"."""
    labels = normalise_host(host).split(".")
    if len(labels) <= 2:
        return ".".join(labels)
    if ".".join(labels[-2:]) in _TWO_LABEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def under(host: str, domains: frozenset[str]) -> bool:
    """`host` is one of `domains` or a subdomain of one."""
    host = normalise_host(host)
    if host in domains:  # the first suffix tried (most links go to the sender's own host)
        return True
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(1, len(labels)))


def _brand(domain: str) -> str:
    """The registrable domain without its public suffix: "shop.co.uk" -> "shop"."""
    return registrable(domain).split(".")[0]


def _skeleton(label: str) -> str:
    label = label.translate(_CONFUSABLE)
    for pair, single in _PAIRS:
        label = label.replace(pair, single)
    return label.replace("-", "")


def _one_edit(a: str, b: str) -> bool:
    """Levenshtein distance exactly one (a swap of neighbours counts as one)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if len(a) > len(b):
        a, b = b, a
    return any(b[:i] + b[i + 1 :] == a for i in range(len(b)))


def lookalike(host: str, own: frozenset[str]) -> str | None:
    """The own domain that `host` imitates, or None: a confusable spelling, one letter off, or the brand
    dressed up with words ("shop-example-login.com") — never one of the own domains or their subdomains,
    and never the same brand under another suffix (shop.de for shop.nl: brands hold their country domains)."""
    if not own or under(host, own):
        return None
    host = normalise_host(host)
    brand = _brand(host)
    for domain in own:
        if f"{domain}." in f"{host}." and not host.endswith(domain):
            return domain  # "shop.example.login-check.ru": the own name worn as a subdomain
        own_brand = _brand(domain)
        if len(own_brand) < 4 or brand == own_brand:
            continue
        if _skeleton(brand) == _skeleton(own_brand) or (len(own_brand) >= 5 and _one_edit(brand, own_brand)):
            return domain
        tokens = brand.split("-")
        if len(tokens) > 1 and own_brand in tokens and _BAIT.intersection(tokens):
            return domain
    return None
