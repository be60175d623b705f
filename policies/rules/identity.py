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
    "nederland netherlands holland nl belgie belgium belgique be deutschland germany duitsland de".split()
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


def _is_no_reply(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    squashed = re.sub(r"[\W_]+", "", fold(local))
    if any(marker in squashed for marker in _NO_REPLY):
        return True
    labels = (re.sub(r"[\W_]+", "", label) for label in fold(domain).split("."))
    return any(label in _NO_REPLY for label in labels)


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
    words = [r"\.?".join(re.escape(c) for c in token) for token in tokens]
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

    Formatting is tolerated (case, accents, line breaks, HTML, "B.V." = "BV", "KvK 1234
    5678" = "12345678"). Text styled invisible does not count. An account without a
    configured legal_name or registration_number hits with a detail naming the missing
    setting, so operators notice instead of the check silently passing.
    """
    message = facts.message
    if message is None:
        return None
    account = facts.account
    missing_config = [
        key for key in ("legal_name", "registration_number") if not getattr(account, key).strip()
    ]
    if missing_config:
        return Hit(f"account {account.id} has no {' and no '.join(missing_config)} configured")
    body = message.folded_visible
    absent = []
    name_pattern = _cached("text", account.legal_name)
    if name_pattern is None or not name_pattern.search(body):
        absent.append(("legal name", account.legal_name))
    number = _cached("number", account.registration_number)
    if number is None or not number.search(body):
        absent.append(("registration number", account.registration_number))
    if not absent:
        return None
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
