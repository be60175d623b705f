"""Identity rules: the sender's real identity, reachable address and legal notice (POLICY.md, identity rules)."""

from __future__ import annotations

import re

from policies.facts import MessageFacts, RecipientFacts
from policies.findings import Hit, Stage
from policies.message import fold
from policies.rule import rule

# Local parts (and domain labels) that announce nobody reads replies, with every
# non-alphanumeric character removed: "no-reply", "no_reply", "do.not.reply" all qualify.
_NO_REPLY = (
    "noreply",
    "donotreply",
    "dontreply",
    "donotrespond",
    "noresponse",
    "noanswer",
    "nepasrepondre",
    "geenantwoord",
    "nietbeantwoorden",
    "nietantwoorden",
    "antwoordniet",
    "nietreageren",
    "geenreactie",
    "bitteantwortennicht",
)
# Country names a footer may leave out of the configured postal address.
_COUNTRIES = frozenset(
    """nederland netherlands holland nl belgie belgium belgique belgien be deutschland germany duitsland de
    france frankrijk frankreich fr luxembourg luxemburg lu osterreich austria oostenrijk at schweiz suisse
    svizzera switzerland ch italia italy italie it espana spain spanje es portugal pt polska poland polen pl
    danmark denmark dk sverige sweden se uk gb england scotland wales ireland eire ie united kingdom
    australia canada usa states america""".split()
)
_TOKEN = re.compile(r"\w+")
# A registry label configured along with the number ("KvK 8765 4321", "CoC: 123"): the
# body may word it differently ("KvK-nummer:", "Chamber of Commerce"), so only the number counts.
_REGISTRY_LABEL = re.compile(
    r"^(?:kvk|k\.v\.k\.|coc|chamber of commerce|handelsregister|hrb|hra|kbo|rsin)"
    r"(?:[\s\-]*(?:nummer|number|nr|no)\.?)?[\s.:#\-]*"
)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def _domain_allowed(domain: str, allowed: frozenset[str]) -> bool:
    # The idna codec gives an ASCII name back unchanged (or raises on an empty or long label, which
    # keeps it as it is too): only a non-ASCII name needs it, and the codec is slow Python.
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return domain in allowed


@rule(
    "identity.sender_not_authorized",
    "Envelope sender or header From domain is not one of the account's domains.",
    clauses=("M-echte-identiteit", "E-werkelijke-identiteit"),
    stage=Stage.SESSION,
    skip_for_null_sender=True,
)
def sender_not_authorized(facts: MessageFacts) -> Hit | None:
    allowed = facts.account.domains
    if facts.mail_from and not _domain_allowed(_domain(facts.mail_from), allowed):
        return Hit(
            f"Envelope sender domain is not one of account {facts.account.id}'s domains",
            evidence=_domain(facts.mail_from),
        )
    if not facts.mail_from:
        return Hit("An empty envelope sender cannot be relayed for an account", evidence="<>")
    message = facts.message
    if message is not None:
        if not message.from_addresses:
            return Hit("The message has no From address", evidence="")
        for address in message.from_addresses:
            if not _domain_allowed(_domain(address), allowed):
                return Hit(
                    f"From domain is not one of account {facts.account.id}'s domains",
                    evidence=_domain(address),
                )
    return None


@rule(
    "identity.null_sender",
    "A null envelope sender (a bounce) from an account, addressed outside that account's own domains.",
    clauses=("platform",),
    stage=Stage.RECIPIENT,
    before_data=True,
)
def null_sender(facts: MessageFacts, rcpt: RecipientFacts) -> Hit | None:
    """A DSN the application's own MTA generated goes back to the application, nowhere else."""
    if not facts.null_sender or _domain_allowed(_domain(rcpt.address), facts.account.domains):
        return None
    return Hit(
        f"A bounce (empty envelope sender) from account {facts.account.id} may only go to its own domains",
        evidence=_domain(rcpt.address),
    )


_NOT_ALNUM = re.compile(r"[\W_]+")
_NO_REPLY_INSIDE = re.compile("|".join(_NO_REPLY))  # any marker within the squashed local part
_NO_REPLY_LABELS = frozenset(_NO_REPLY)


def _is_no_reply(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    squashed = _NOT_ALNUM.sub("", fold(local))
    if _NO_REPLY_INSIDE.search(squashed):
        return True
    return any(_NOT_ALNUM.sub("", label) in _NO_REPLY_LABELS for label in fold(domain).split("."))


@rule(
    "identity.no_reply",
    "From or Reply-To is a no-reply style address (noreply, no-reply, donotreply, …).",
    clauses=("E-no-reply",),
    stage=Stage.MESSAGE,
    skip_for_null_sender=True,
)
def no_reply(facts: MessageFacts) -> Hit | None:
    """Only the addresses count: "noreply" in a display name alone is not a no-reply address."""
    message = facts.message
    if message is None:
        return None
    for header, addresses in (("From", message.from_addresses), ("Reply-To", message.reply_to)):
        for address in addresses:
            if _is_no_reply(address):
                return Hit(f"{header} is a no-reply address; replies must reach the sender", evidence=address)
    return None


_PATTERNS: dict[tuple[str, str, frozenset[str]], re.Pattern[str] | None] = {}


def _cached(kind: str, value: str, drop_trailing: frozenset[str] = frozenset()) -> re.Pattern[str] | None:
    """Patterns per configured value, built once: accounts are few, messages many."""
    key = (kind, value, drop_trailing)
    if key not in _PATTERNS:
        _PATTERNS[key] = (
            flexible_pattern(value, drop_trailing=drop_trailing) if kind == "text" else number_pattern(value)
        )
    return _PATTERNS[key]


_REGISTRATIONS: dict[str, tuple[re.Pattern[str], ...]] = {}
# How registers across the EU are labelled in a configured registration_number, and what the body may
# show for it. Court (HRB/HRA, RCS) and number must both be shown.
_HANDELSREGISTER = re.compile(r"^(?:handelsregister\W*)?(hr[ab])\W*(\d+)\s*([a-z]{0,2})\b\W*(.*)$")
_RCS = re.compile(r"^rcs\W+(.*?)\W+([ab]\W*)?(\d[\d\s.]{8,12}\d)$")
_SIREN = re.compile(r"^(siren|siret)\W*([\d\s.]+)$")
_KBO = re.compile(r"^(?:kbo|bce|ondernemingsnummer|numero d.entreprise|enterprise number)\W*(?:be\W*)?([\d\s.]+)$")
_COMPANIES_HOUSE = re.compile(
    r"^(?:companies house|company (?:no|number|registration)|registered in england(?: (?:and|&) wales)?|crn)\W*(?:no\W*|number\W*)?(\w+)$"
)
_VAT = re.compile(r"^(?:vat|btw|ust|ust-idnr|ust-id|mwst|tva|iva|partita iva|nif|nip|cvr|moms|vat no|vat number)\W*([a-z]{2})\W*([\w\s.\-]+)$")
_KRS = re.compile(r"^krs\W*(\d+)$")
_COURT_WORDS = frozenset("amtsgericht registergericht ag court tribunal de commerce rcs".split())


def _digits_pattern(digits: str, *, before: str = "", optional_leading_zeros: bool = False, tail: str = "") -> str:
    """Digits with the separators registers are printed with ("552 100 554", "0123.456.789")."""
    if optional_leading_zeros:
        digits = digits.lstrip("0") or "0"
    body = r"[\s.\-/]?".join(re.escape(c) for c in digits)
    zeros = r"(?:0[\s.\-/]?)*" if optional_leading_zeros else ""
    return rf"{before}(?<![0-9]){zeros}{body}{tail}(?![0-9])"


def registration_patterns(value: str) -> tuple[re.Pattern[str], ...]:
    """What the folded body must show for a configured registration_number, every pattern once.

    "KvK 12345678" (and any unlabelled number): the number. "HRB 12345 Amtsgericht München": HRB/HRA
    with the number, and the court's city. "RCS Paris B 552 100 554": the SIREN and the city. "SIREN
    552100554": the SIREN, also as the start of a SIRET. "KBO 0123.456.789" / "BCE": the number, with or
    without its leading 0 or a BE prefix (the Belgian VAT id). "Companies House 03900782": the number
    with or without leading zeros. "VAT DE123456789" (BTW, USt-IdNr, TVA, IVA, NIP…): the id with or
    without its country prefix. "KRS 0000028368": with or without leading zeros.
    """
    found = _REGISTRATIONS.get(value)
    if found is not None:
        return found
    folded = re.sub(r"\s+", " ", fold(value).strip())
    patterns: list[str] = []
    texts: list[str] = []
    if match := _HANDELSREGISTER.match(folded):
        kind, number, suffix, court = match.groups()
        patterns.append(_digits_pattern(number, before=rf"{kind}\W{{0,3}}", tail=rf"(?:\W?{suffix})?" if suffix else ""))
        texts.append(" ".join(w for w in _TOKEN.findall(court) if w not in _COURT_WORDS))
    elif match := _RCS.match(folded):
        city, _, number = match.groups()
        patterns.append(_digits_pattern(re.sub(r"\D", "", number)))
        texts.append(city)
    elif match := _SIREN.match(folded):
        digits = re.sub(r"\D", "", match.group(2))
        patterns.append(_digits_pattern(digits, tail=r"(?:[\s.\-]?\d){5}" if len(digits) == 9 else "").replace(
            r"(?:[\s.\-]?\d){5}(?![0-9])", r"(?:(?:[\s.\-]?\d){5})?(?![0-9])"))
    elif match := _KBO.match(folded):
        patterns.append(_digits_pattern(re.sub(r"\D", "", match.group(1)), before=r"(?:be\W{0,2})?", optional_leading_zeros=True))
    elif match := _COMPANIES_HOUSE.match(folded):
        number = match.group(1)
        if number.isdigit():
            patterns.append(_digits_pattern(number, optional_leading_zeros=True))
        else:
            patterns.append(r"[\s.\-/]?".join(re.escape(c) for c in number) + r"(?![0-9a-z])")
    elif match := _VAT.match(folded):
        country, rest = match.groups()
        chars = [c for c in rest if c.isalnum()]
        body = r"[\s.\-]?".join(re.escape(c) for c in chars)
        patterns.append(rf"(?<![0-9a-z])(?:{re.escape(country)}\W{{0,2}})?{body}(?![0-9a-z])")
    elif match := _KRS.match(folded):
        patterns.append(_digits_pattern(match.group(1), optional_leading_zeros=True))
    else:
        number = number_pattern(value)
        _REGISTRATIONS[value] = found = (number,) if number is not None else ()
        return found
    compiled = [re.compile(p) for p in patterns]
    compiled += [p for p in (flexible_pattern(t) for t in texts if t.strip()) if p is not None]
    _REGISTRATIONS[value] = found = tuple(compiled)
    return found


def cached_pattern(value: str) -> re.Pattern[str] | None:
    """flexible_pattern(value), built once per value (the legal name next to an IBAN: content rules)."""
    return _cached("text", value)


_STREET = re.compile(r"^(.+?)?str(?:asse|aat)$")


def _word_pattern(token: str) -> str:
    """Letters optionally followed by a dot ("B.V."); "…straße"/"…straat" also as "…str." (addresses)."""
    street = _STREET.match(token)
    if street is not None and len(token) > 6:
        stem = (street.group(1) or "") + "str"
        return r"\.?".join(re.escape(c) for c in stem) + r"(?:asse|aat)?"
    return r"\.?".join(re.escape(c) for c in token)


def flexible_pattern(value: str, *, drop_trailing: frozenset[str] = frozenset()) -> re.Pattern[str] | None:
    """A regex for `value` in folded text that tolerates formatting.

    Words may be separated by any punctuation, whitespace or line break, or by nothing at
    all ("1015 AA" = "1015AA"); letters inside a word may be followed by a dot ("B.V." =
    "BV"). Matching is on word boundaries. Trailing words in `drop_trailing` (a country)
    are optional. None when `value` has no letters or digits.
    """
    tokens = _TOKEN.findall(fold(value).replace(".", ""))
    while len(tokens) > 1 and tokens[-1] in drop_trailing:
        tokens.pop()
    if not tokens:
        return None
    words = [_word_pattern(token) for token in tokens]
    body = r"[\W_]*".join(words)
    # The first character stays a literal at the very start of the pattern so the regex
    # engine can scan for it quickly; the word boundary is checked just after it.
    first, rest = body[: len(re.escape(tokens[0][0]))], body[len(re.escape(tokens[0][0])) :]
    return re.compile(rf"{first}(?<!\w.){rest}(?!\w)")


def number_pattern(value: str) -> re.Pattern[str] | None:
    """A registration number in folded text: "KvK 1234 5678", "1234.5678" and "12345678" match "12345678"."""
    number = _REGISTRY_LABEL.sub("", fold(value).strip())
    chars = [c for c in number if c.isalnum()]
    if not chars:
        return None
    body = r"[\s.\-/]?".join(re.escape(c) for c in chars)
    first, rest = body[: len(re.escape(chars[0]))], body[len(re.escape(chars[0])) :]
    # Only digits around it disqualify: "KvK12345678" still shows the number.
    return re.compile(rf"{first}(?<![0-9].){rest}(?![0-9])")


def _names_match(display: str, *names: str) -> bool:
    folded = fold(display)
    for name in names:
        pattern = _cached("text", name) if name.strip() else None
        if pattern is not None and pattern.search(folded):
            return True
    return False


@rule(
    "identity.from_name_mismatch",
    "The From display name does not contain the account's registered name.",
    clauses=("E-bestandseigenaar-van-veld",),
    stage=Stage.MESSAGE,
    skip_for_null_sender=True,
)
def from_name_mismatch(facts: MessageFacts) -> Hit | None:
    """The account's `name` (or its `legal_name`) must appear in the From display name.

    An account with neither configured hits too, with a detail saying so: the rule
    cannot be satisfied until the operator fills in the account's name.
    """
    message = facts.message
    if message is None:
        return None
    account = facts.account
    if not account.name.strip() and not account.legal_name.strip():
        return Hit(f"account {account.id} has no name configured", evidence=message.from_name)
    if not message.from_name.strip():
        return Hit(f"The From header has no display name; it must name {account.name or account.legal_name}")
    if _names_match(message.from_name, account.name, account.legal_name):
        return None
    return Hit(
        f"The From display name does not contain the account's name {account.name or account.legal_name!r}",
        evidence=message.from_name,
    )


@rule(
    "identity.legal_notice_missing",
    "The body does not show the sender's legal name and registration number (KvK).",
    clauses=("M-legal-notice",),
    stage=Stage.MESSAGE,
    skip_for_null_sender=True,
)
def legal_notice_missing(facts: MessageFacts) -> Hit | None:
    """The visible body must show the account's `legal_name` and `registration_number`.

    The registration number is the one the account declares: a KvK number or a foreign equivalent
    (Handelsregister HRB/HRA with its court, SIREN/SIRET and RCS, KBO/BCE, UK Companies House, an
    EU VAT id, KRS), see registration_patterns. Formatting is tolerated (case, accents, line breaks, HTML, "B.V." = "BV", "KvK 1234
    5678" = "12345678"). Text styled invisible does not count. An account without a
    configured legal_name or registration_number hits with a detail naming the missing
    setting, so operators notice instead of the check silently passing.
    """
    message = facts.message
    if message is None:
        return None
    account = facts.account
    if not account.legal_name.strip() or not account.registration_number.strip():
        missing_config = [
            key for key in ("legal_name", "registration_number") if not getattr(account, key).strip()
        ]
        return Hit(f"account {account.id} has no {' and no '.join(missing_config)} configured")
    body = message.folded_visible
    name_pattern = _cached("text", account.legal_name)
    name_shown = name_pattern is not None and name_pattern.search(body) is not None
    registration = registration_patterns(account.registration_number)
    number_shown = bool(registration) and all(p.search(body) for p in registration)
    if name_shown and number_shown:  # the configured notice, shown: nearly every message
        return None
    absent = []
    if not name_shown:
        absent.append(("legal name", account.legal_name))
    if not number_shown:
        absent.append(("registration number", account.registration_number))
    what = " and ".join(label for label, _ in absent)
    return Hit(f"The body does not show the sender's {what}", evidence="; ".join(v for _, v in absent))


@rule(
    "identity.postal_address_missing",
    "The body does not show the sender's postal address.",
    clauses=("M-legal-notice", "E-valide-postadres"),
    stage=Stage.MESSAGE,
    skip_for_null_sender=True,
)
def postal_address_missing(facts: MessageFacts) -> Hit | None:
    """The visible body must show the account's `postal_address`, formatting tolerated.

    Line breaks, commas, case, accents, HTML and "1015 AA" vs "1015AA" do not matter; a
    trailing country name may be left out. An account without a configured postal_address
    hits with the detail "account … has no postal_address configured" so operators notice.
    """
    message = facts.message
    if message is None:
        return None
    account = facts.account
    if not account.postal_address.strip():
        return Hit(f"account {account.id} has no postal_address configured")
    pattern = _cached("text", account.postal_address, _COUNTRIES)
    if pattern is not None and pattern.search(message.folded_visible):
        return None
    return Hit("The body does not show the sender's postal address", evidence=account.postal_address)


RULES = (null_sender, sender_not_authorized, no_reply, from_name_mismatch, legal_notice_missing, postal_address_missing)
