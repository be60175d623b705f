"""Content rules: offensive or misleading subjects, hateful and adult language, infringing links,
third parties' personal data and malware (POLICY.md, content rules)."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Iterable, Iterator, Mapping
from email.utils import getaddresses
from urllib.parse import urlsplit

from policies._passes import passes as _speedups
from policies.domains import ip_literal, lookalike, normalise_host, registrable, under
from policies.facts import MessageFacts
from policies.findings import Hit, Stage
from policies.message import KIND_EICAR, KIND_TORRENT, ParsedMessage, fold
from policies.rule import rule
from policies.rules.identity import cached_pattern
from policies.wordlists import Lexicon, extra_terms, lexicon, terms_for, wordlist

# --- subjects ---------------------------------------------------------------------------------


def subject_term(message: ParsedMessage, name: str, params: Mapping[str, Any]) -> str | None:
    """The first term of word list `name` in the subject: WordList.search(message.subject), with the
    subject folded and split once for every list. A list with terms of scripts without spaces looks
    for those in the folded subject as a whole, as search() does (a term of two such words is
    found there, never among the distinct words)."""
    words = wordlist(name, params)
    return words.search_folded(message.folded_subject, None if words.unspaced else message.subject_words)


@rule(
    "content.offensive_subject",
    "Subject contains offensive terms (Dutch and English word lists).",
    clauses=("E-aanstootgevende-onderwerpsregel",),
    stage=Stage.MESSAGE,
)
def offensive_subject(facts: MessageFacts) -> Hit | None:
    message = facts.message
    if message is None:
        return None
    term = subject_term(message, "offensive", facts.params)
    if term is None:
        return None
    return Hit("The subject contains an offensive term", evidence=term)


# Reply and forward prefixes of common mail clients (English, Dutch, German): "Re:",
# "RE[2]:", "Fwd:", "FW:", "Antw:", "Doorst:", "AW:", "WG:", optionally after a "[list]" tag.
_FAKE_THREAD = re.compile(
    r"^\s*(?:\[[^\]]{0,40}\]\s*)?((?:re|fwd?|antw|antwoord|doorst|aw|wg)\s*(?:\[\d+\]|\(\d+\))?\s*:)",
    re.I,
)
_PUNCTUATION_RUN = re.compile(r"[!?]{3,}")
SHOUTING_MIN_LETTERS = 12
SHOUTING_UPPER_SHARE = 0.7
# Capitals a shouting subject has at least (70% of 12 letters: 8.4); taking the sender's names out
# and counting letters only can only lower the count of the subject as written.
_SHOUTING_MIN_UPPER = math.ceil(SHOUTING_MIN_LETTERS * SHOUTING_UPPER_SHARE)


def shouting(subject: str, own: Iterable[str] = ()) -> bool:
    """Mostly capitals over enough letters: acronyms in a normal subject are not shouting. The
    sender's own name and domains (`own`), which mastheads write in capitals ("SOURCEFORGE.NET
    UPDATE: August 14, 2002"), are its brand, not raised voice, and are left out of the count."""
    if sum(map(str.isupper, subject)) < _SHOUTING_MIN_UPPER:
        return False  # most subjects: too few capitals, whatever the names take out
    lowered = subject.lower()
    for name in own:
        if name and name.lower() in lowered:
            subject = re.sub(re.escape(name), " ", subject, flags=re.I)
            lowered = subject.lower()
    letters = "".join(filter(str.isalpha, subject))  # one C loop each, not a Python one a character
    if len(letters) < SHOUTING_MIN_LETTERS:
        return False
    upper = sum(map(str.isupper, letters))
    return upper / len(letters) >= SHOUTING_UPPER_SHARE


@rule(
    "content.misleading_subject",
    "Subject fakes a conversation (Re:/Fwd: without In-Reply-To/References) or is deceptive.",
    clauses=("E-misleiden",),
    stage=Stage.MESSAGE,
)
def misleading_subject(facts: MessageFacts) -> Hit | None:
    """Fake reply/forward prefixes, shouting (≥ 70% capitals over ≥ 12 letters, or a run of
    three or more !/?) and fake-urgency phrases from the `urgency` word list."""
    message = facts.message
    if message is None:
        return None
    subject = message.subject
    prefix = _FAKE_THREAD.match(subject)
    if prefix is not None and not message.in_reply_to and not message.references:
        return Hit(
            "The subject pretends to be a reply or forward but the message has no In-Reply-To or References",
            evidence=prefix.group(1),
        )
    account = facts.account
    # the count shouting() starts with, first: most subjects stop there, before the names are sorted
    if sum(map(str.isupper, subject)) >= _SHOUTING_MIN_UPPER and shouting(
        subject, (*sorted(account.domains, key=len, reverse=True), account.name)
    ):
        return Hit("The subject is shouting (mostly capitals)", evidence=subject[:80])
    run = _PUNCTUATION_RUN.search(subject) if "!" in subject or "?" in subject else None
    if run is not None:
        return Hit("The subject shouts with a run of exclamation or question marks", evidence=run.group(0))
    term = subject_term(message, "urgency", facts.params)
    if term is not None:
        return Hit("The subject uses a fake-urgency or deceptive phrase", evidence=term)
    return None


# --- body language --------------------------------------------------------------------------


# The lists the body rules look up the text's words in, and the drug names whose spellings they do
_BODY_LISTS = ("hateful", "adult", "fraud", "data_trading", "prescription_offers")
_LEXICONS: dict[tuple[tuple[str, ...], ...], Lexicon] = {}


def text_words(message: ParsedMessage, params: Mapping[str, Any]) -> frozenset[str]:
    """The words of folded_text the body lists and the drug spellings can match (ParsedMessage.known_words):
    every list of _BODY_LISTS and prescription_drugs' spellings answer on these as on message.words,
    and no str is made for the hundreds of other words of a page. One Lexicon per set of site additions."""
    lists = params.get("wordlists") if params else None
    key = () if not lists else tuple(extra_terms(name, params) for name in (*_BODY_LISTS, "prescription_drugs"))
    found = _LEXICONS.get(key)
    if found is None:
        words = set(_drug_spellings(wordlist("prescription_drugs", params).terms)[1])
        for name in _BODY_LISTS:
            words |= wordlist(name, params).vocabulary
        found = _LEXICONS[key] = lexicon(words)
    return message.known_words(found.table)


def _body_term(message: ParsedMessage, name: str, params: Mapping[str, Any]) -> str | None:
    """Subject, visible and hidden text against word list `name` (one of _BODY_LISTS)."""
    return wordlist(name, params).search_folded(message.folded_text, text_words(message, params))


@rule(
    "content.hateful",
    "Defamatory, insulting, racist, discriminatory or hateful language.",
    clauses=("M-code-of-conduct",),
    stage=Stage.MESSAGE,
)
def hateful(facts: MessageFacts) -> Hit | None:
    message = facts.message
    if message is None:
        return None
    term = _body_term(message, "hateful", facts.params)
    if term is None:
        return None
    return Hit("The message contains hateful or discriminatory language", evidence=term)


@rule(
    "content.adult",
    "Erotic or pornographic content, unless the account is marked as allowed.",
    clauses=("M-code-of-conduct",),
    stage=Stage.MESSAGE,
)
def adult(facts: MessageFacts) -> Hit | None:
    """Never hits for an account with `allow_adult` ("tenzij specifiek overeengekomen").

    The clause bans erotic or pornographic *content*. The bare name of the subject ("porn",
    "porno", "pornography": `_NAMING_ADULT`) with no other term of the list, not in the subject and
    mentioned less than once per `_NAMING_SPAN` characters of text is a passing mention in a long
    newsletter talking about it ("so that bad guys won't use your FTP server to distribute porno",
    an anti-spam ad "irritated with porn … in your mailbox?"), not such content. A short mail
    naming it, or naming it often, is about it."""
    message = facts.message
    if message is None or facts.account.allow_adult:
        return None
    term = _body_term(message, "adult", facts.params)
    if term is None:
        return None
    if fold(term) in _NAMING_ADULT and _passing_mention(message, facts.params):
        return None
    return Hit("The message contains erotic or pornographic content", evidence=term)


# Words that name the subject rather than show it (en, nl, de), and the length of text one such
# mention may stand in without making the mail about it (content.adult).
_NAMING_ADULT = frozenset({"porn", "porno", "pornos", "pornography", "pornografie"})
_NAMING_SPAN = 5000


def _passing_mention(message: ParsedMessage, params: Mapping[str, Any]) -> bool:
    words = wordlist("adult", params)
    terms = words.find_all(message.folded_text, text_words(message, params))
    if not set(map(fold, terms)) <= _NAMING_ADULT or subject_term(message, "adult", params) is not None:
        return False
    folded = message.folded_text
    mentions = len(re.findall(r"\b(?:%s)\b" % "|".join(map(re.escape, map(fold, terms))), folded))
    return mentions * _NAMING_SPAN < len(folded)


# --- fraud and illegal offers --------------------------------------------------------------------

# A sum of money: a currency sign or code next to a number written with thousands separators, or
# a number of millions with its currency ("$1,500,000.00", "920.000 EUR", "25 million dollars").
_MONEY = re.compile(
    r"(?:[$€£]|\b(?:usd|eur|gbp)\b)\s?(\d{1,3}(?:[,.' ]\d{3})+|\d{4,})(?:[.,]\d{2})?(?!\d)"
    r"|(?<![\d.,])(\d{1,3}(?:[,.' ]\d{3})+|\d{4,})(?:[.,]\d{2})?\s?(?:[$€£]|(?:usd|eur|euros?|gbp|dollars?)\b)"
    r"|(\d+(?:[.,]\d+)?|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|twenty|fifty|hundred)\b[\w\- ]{0,30}?)"
    r"\s?(?:million|millions|mio|miljoen|millionen|millones|milioni)\b"
)
FRAUD_MIN_SUM = 100_000
FRAUD_MIN_MARKERS = 2
# "Ticker: IGTS", "Symbol: ABCD", "OTC: XYZ": the label stock promotions print
_TICKER = re.compile(r"\b(?:ticker|symbol|otc|stock)\s?(?:symbol)?\s?[:\-]\s?\W{0,3}[a-z]{2,5}\b")


def _large_sum(folded: str) -> str | None:
    """The first sum of FRAUD_MIN_SUM or more in `folded`, as written."""
    for match in _MONEY.finditer(folded):
        if match.group(3) is not None:
            return match.group(0).strip()
        digits = re.sub(r"\D", "", match.group(1) or match.group(2) or "")
        if digits and int(digits) >= FRAUD_MIN_SUM:
            return match.group(0).strip()
    return None


@rule(
    "content.fraud",
    "Advance-fee, prize, loan or stock-promotion fraud: a large sum or a stock ticker with fraud markers.",
    clauses=("E-misleiden", "M-code-of-conduct"),
    stage=Stage.MESSAGE,
)
def fraud(facts: MessageFacts) -> Hit | None:
    """Two distinct markers of the `fraud` word lists (beneficiary, Western Union, next of kin,
    lottery, "big mover", …) together with a sum of 100,000 or more, or with a stock ticker label.
    One marker never hits, nor do markers without the sum or ticker: a bank's newsletter may name
    Western Union, an insurer a beneficiary."""
    message = facts.message
    if message is None:
        return None
    folded = message.folded_text
    markers = wordlist("fraud", facts.params).find_all(folded, text_words(message, facts.params))
    if len(markers) < FRAUD_MIN_MARKERS:
        return None
    evidence = ", ".join(markers[:3])
    ticker = _TICKER.search(folded)
    if ticker is not None:
        return Hit("The message promotes a stock the way pump-and-dump fraud does", evidence=f"{ticker.group(0)}; {evidence}")
    amount = _large_sum(folded)
    if amount is None:
        return None
    return Hit("The message promises a large sum the way advance-fee and prize fraud does", evidence=f"{amount}; {evidence}")


DATA_TRADING_MIN_MARKERS = 2


@rule(
    "content.data_trading",
    "Trades in third parties' personal data: address lists for sale, harvesting or mass-mailing tools, people search.",
    clauses=("M-third-party-lists", "E-who-not", "M-code-of-conduct"),
    stage=Stage.MESSAGE,
)
def data_trading(facts: MessageFacts) -> Hit | None:
    """Two distinct markers of the `data_trading` word lists ("million email addresses", "email
    extractor", "find out anything about anyone", 批量获取 …): the message sells what the policies
    forbid using, bought or harvested addresses (M-third-party-lists, E-who-not), or other people's
    data (the code of conduct on the privacy of third parties). One marker never hits: a
    newsletter may warn against bought lists."""
    message = facts.message
    if message is None:
        return None
    markers = wordlist("data_trading", facts.params).find_all(message.folded_text, text_words(message, facts.params))
    if len(markers) < DATA_TRADING_MIN_MARKERS:
        return None
    return Hit("The message offers address lists, harvesting tools or other people's data", evidence=", ".join(markers[:3]))


# Letters a spammer swaps for digits (within one word: v1agra, c1al1s) or for signs, and the
# separators put between letters (in the subject: via.gra, V I A G R A, v!agra).
_LEET = {"a": "a4", "e": "e3", "i": "i1l", "l": "l1i", "o": "o0", "s": "s5z"}
_LEET_SIGNS = {"a": "a@4", "e": "e3", "i": "i1l!|", "l": "l1i|", "o": "o0", "s": "s5$z"}
_SPACER = r"[\s.\-_*'\"]{0,2}"
SELLING_WINDOW = 200
_SPELLINGS: dict[tuple[str, ...], tuple[dict[str, str], frozenset[str], re.Pattern[str]]] = {}


def _drug_spellings(names: tuple[str, ...]) -> tuple[dict[str, str], frozenset[str], re.Pattern[str]]:
    """Every spelling of the names with digits for letters (one word each: a set test against the
    text's words), and one pattern for the spaced-out and signed spellings of the subject."""
    cached = _SPELLINGS.get(names)
    if cached is None:
        words: dict[str, str] = {}
        spelled = []
        for name in names:
            folded = fold(name)
            for letters in itertools.product(*(_LEET.get(c, c) for c in folded)):
                words.setdefault("".join(letters), folded)
            classes = [f"[{re.escape(_LEET_SIGNS[c])}]" if c in _LEET_SIGNS else re.escape(c) for c in folded if c.isalnum()]
            spelled.append(_SPACER.join(classes))
        pattern = re.compile(rf"(?<![a-z0-9])(?:{'|'.join(spelled)})(?![a-z0-9])")
        cached = _SPELLINGS[names] = (words, frozenset(words), pattern)
    return cached


@rule(
    "content.prescription_drugs",
    "Sells prescription-only medicines to the public: a disguised or offered drug name, or 'no prescription'.",
    clauses=("M-code-of-conduct",),
    stage=Stage.MESSAGE,
)
def prescription_drugs(facts: MessageFacts) -> Hit | None:
    """Advertising prescription-only medicines to the public is against Dutch law (Geneesmiddelenwet
    art. 85; EU Directive 2001/83/EC art. 88), so against the code of conduct's "materiaal dat niet
    voldoet aan de Nederlandse wetgeving". Hits on a name of the `prescription_drugs` list written in
    disguise (digits for letters anywhere: v1agra; spaced out, dotted or with signs in the subject:
    via.gra, V I A G R A, v!agra), on a plainly written name with a selling word of
    `prescription_selling` within 200 characters, and on the phrases of `prescription_offers` that
    sell without a prescription on their own ("no prescription needed", "rx site"). A newsletter that
    reports on a medicine, or a pharmacy's over-the-counter offers, pass."""
    message = facts.message
    if message is None:
        return None
    folded = message.folded_text
    words = text_words(message, facts.params)
    spellings, spelling_set, spaced = _drug_spellings(wordlist("prescription_drugs", facts.params).terms)
    disguised = spaced.search(message.folded_subject)
    if disguised is not None and disguised.group(0) not in spellings.values():
        return Hit("The message sells a prescription-only medicine under a disguised name", evidence=disguised.group(0))
    found = words & spelling_set  # a set with a set: the smaller one is walked
    for spelling in sorted(found):
        if spellings[spelling] != spelling:
            return Hit("The message sells a prescription-only medicine under a disguised name", evidence=spelling)
    if found:
        selling = wordlist("prescription_selling", facts.params)
        for name in sorted(found):
            for match in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", folded):
                window = folded[max(0, match.start() - SELLING_WINDOW) : match.end() + SELLING_WINDOW]
                cue = selling.search_folded(window)
                if cue is not None:
                    return Hit("The message offers a prescription-only medicine for sale", evidence=f"{name}; {cue}")
    offers = wordlist("prescription_offers", facts.params).find_all(folded, words)
    if offers:
        return Hit("The message sells prescription medicines without a prescription", evidence=offers[0])
    return None


# --- links ------------------------------------------------------------------------------------


_HOST_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _hosts(extra: tuple[str, ...]) -> frozenset[str]:
    """The shipped infringing hosts plus the site's, keyed by the site's additions."""
    hosts = _HOST_SETS.get(extra)
    if hosts is None:
        terms = terms_for("infringing_hosts", {"wordlists": {"infringing_hosts": list(extra)}})
        hosts = _HOST_SETS[extra] = frozenset(t.lower().strip(".") for t in terms)
    return hosts


def _host_listed(host: str, hosts: frozenset[str]) -> str | None:
    labels = host.split(".")
    for i in range(len(labels) - 1):
        candidate = ".".join(labels[i:])
        if candidate in hosts:
            return candidate
    return None


def _path_is_torrent(href: str) -> bool:
    try:
        path = urlsplit(href).path
    except ValueError:
        path = href
    return path.lower().rstrip("/").endswith(".torrent")


@rule(
    "content.infringing_links",
    "Links to torrents, magnet links or known infringing-material hosts.",
    clauses=("M-code-of-conduct",),
    stage=Stage.MESSAGE,
)
def infringing_links(facts: MessageFacts) -> Hit | None:
    """Any link (HTML anchor or URL written in text) that is a magnet: link, points at a
    .torrent file or at a host of the `infringing_hosts` list (or a subdomain of one);
    also a .torrent attachment."""
    message = facts.message
    if message is None:
        return None
    links = message.links
    # One lower-cased string of every href: a newsletter has hundreds of links, and almost
    # all of them go to the sender's own host.
    joined = message.hrefs_lower
    if "magnet:" in joined:
        href = next(link.href for link in links if link.href[:7].lower() == "magnet:")
        return Hit("The message links to a magnet (torrent) link", evidence=href[:80])
    if ".torrent" in joined:
        for link in links:
            if _path_is_torrent(link.href):
                return Hit("The message links to a .torrent file", evidence=link.href[:120])
    hosts = _hosts(extra_terms("infringing_hosts", facts.params))
    for host in message.link_hosts:
        listed = _host_listed(host.rstrip("."), hosts)
        if listed is not None:
            return Hit("The message links to a known infringing-material host", evidence=listed)
    for attachment in message.attachments:
        if attachment.kind == KIND_TORRENT:
            return Hit("The message carries a .torrent file", evidence=attachment.filename or attachment.content_type)
    return None


# --- deceptive links ----------------------------------------------------------------------------

# Anchor text that is itself a web address: "www.shop.nl", "https://shop.nl/x", "Shop.nl".
_SHOWN_ADDRESS = re.compile(
    r"(?:https?://)?(?:[^\s/@:]+@)?((?:[a-z0-9\u00a1-\uffff](?:[a-z0-9\u00a1-\uffff\-]{0,61}[a-z0-9\u00a1-\uffff])?\.)+"
    r"(?:[a-z]{2,24}|xn--[a-z0-9\-]{2,30}))\.?(?::\d{1,5})?(?:[/?#][^\s]*)?",
    re.I,
)
_HREF_HOST = re.compile(r"^[a-z][a-z0-9+.\-]*://(?:[^@/?#]*@)?(\[[^\]]*\]|[^/:?#\\]+)", re.I)
_TRACKING_SETS: dict[tuple[str, ...], frozenset[str]] = {}
_SHORTENER_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _listed_hosts(name: str, cache: dict[tuple[str, ...], frozenset[str]], params: Mapping[str, Any]) -> frozenset[str]:
    extra = extra_terms(name, params)
    hosts = cache.get(extra)
    if hosts is None:
        terms = terms_for(name, {"wordlists": {name: list(extra)}})
        hosts = cache[extra] = frozenset(t.lower().strip(".") for t in terms)
    return hosts


def _tracking_hosts(facts: MessageFacts) -> frozenset[str]:
    """The shipped platform tracking hosts, the site's additions and the account's own."""
    hosts = _listed_hosts("tracking_hosts", _TRACKING_SETS, facts.params)
    return hosts | facts.account.tracking_hosts if facts.account.tracking_hosts else hosts


def href_host(href: str) -> str:
    """The host of an absolute http(s)-style URL ("" for mailto:, relative links and garbage)."""
    match = _HREF_HOST.match(href.strip())
    return normalise_host(match.group(1)) if match else ""


def shown_host(text: str) -> str:
    """The host a reader reads in an anchor's text when that text is a web address, else ""."""
    text = text.strip().strip("<>()[]\"'").rstrip(".,;:!?")
    if not text or " " in text or "." not in text or "@" in text.split("/")[0].split("?")[0] and "://" not in text:
        return ""
    match = _SHOWN_ADDRESS.fullmatch(text)
    return normalise_host(match.group(1)) if match else ""


def _behind_other_text(message: ParsedMessage, host: str) -> bool:
    """Some link to `host` shows the reader something else than that host: words ("Bekijk uw
    pakket", "CLICK HERE"), another address or an image. A URL written out as itself
    (http://tinyurl.com/10kz, http://63.115.136.15/go/x.html, as text or as its own anchor text)
    hides nothing: the reader sees where it leads."""
    text = message.text
    for link in message.links:
        if href_host(link.href) != host:
            continue
        if host not in (link.text or text[link.start : link.end]).lower():
            return True
    return False


@rule(
    "content.deceptive_links",
    "A link shows one address and leads to another, to a bare IP address or to a look-alike of the sender's domain.",
    clauses=("M-code-of-conduct",),
    stage=Stage.MESSAGE,
)
def deceptive_links(facts: MessageFacts) -> Hit | None:
    """Phishing that pretends to be the account. A hit for a visible link:

    - whose anchor text is a web address with another registrable domain than its real target,
      unless the target is a click-tracking host (shipped `tracking_hosts` list, the site's additions,
      the account's `tracking_hosts`): platforms redirect through their own host;
    - to an IP-literal host (http://192.0.2.7/login) behind text that does not show it ("Log in");
    - to a look-alike of one of the account's own domains (arnazon.com, amazon-login.com, paypa1.nl);
    - through a public URL shortener (`url_shorteners` list: is.gd, t.co, …) behind text that does
      not show it ("Bekijk waar uw pakket zich bevindt"), unless the account lists the shortener
      among its tracking hosts. A URL written out as itself, as newsletters of link digests do
      (http://tinyurl.com/10kz), shows the reader where it leads and is not deceptive.
    """
    message = facts.message
    if message is None:
        return None
    links = message.links
    if not links:
        return None
    # The distinct hosts first: a newsletter has hundreds of links to two or three hosts.
    hosts = dict.fromkeys(message.link_hosts)
    if "[" in message.hrefs_lower:  # IPv6 literals, which the host pattern stops inside
        hosts.update(dict.fromkeys(href_host(link.href) for link in links if "[" in link.href))
    own = facts.account.domains
    shorteners: frozenset[str] | None = None
    for found in hosts:
        host = normalise_host(found)
        if not host:
            continue
        if ip_literal(host):
            if _behind_other_text(message, host):
                return Hit("A link leads to a bare IP address its text does not show", evidence=host)
            continue
        imitated = lookalike(host, own)
        if imitated is not None:
            return Hit(f"A link leads to a look-alike of the sender's domain {imitated}", evidence=host)
        if shorteners is None:
            shorteners = _listed_hosts("url_shorteners", _SHORTENER_SETS, facts.params)
        if host in shorteners and host not in facts.account.tracking_hosts and _behind_other_text(message, host):
            return Hit("A link hides its destination behind a public URL shortener", evidence=host)
    texts = next(itertools.islice(zip(*links), 1, None))  # the anchor texts, transposed in C
    if "." not in "\n".join(texts):  # most anchors show no address at all
        return None
    tracking: frozenset[str] | None = None
    for link in links:
        text = link.text
        if not text or "." not in text:
            continue
        shown = shown_host(text)
        if not shown:
            continue
        host = href_host(link.href)
        if not host or registrable(shown) == registrable(host):
            continue
        if tracking is None:
            tracking = _tracking_hosts(facts)
        if under(host, tracking):
            continue
        return Hit(
            "A link's text shows one address but it leads to another domain",
            evidence=f"{text.strip()[:60]} -> {host}",
        )
    return None


# --- personal data ----------------------------------------------------------------------------

# Each pattern starts with a character class and checks the boundary before it afterwards:
# a leading lookbehind would stop the regex engine from skipping ahead quickly.
_BSN = re.compile(r"(\d(?<![\w.,\-/]\d)(?:\d{8}|\d{3}\.\d{2}\.\d{3}|\d{2}[ .\-]\d{3}[ .\-]\d{3}))(?![\w/]|[.,\-]\d)")
_IBAN = re.compile(r"([A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30})(?!\w)")
_CARD = re.compile(r"(\d(?<![\w.,\-/]\d)(?:[ \-]?\d){12,18})(?![\w/]|[.,\-]\d)")
# Every BSN, card number and IBAN has a run of at least eight digits, spaces, dots or dashes.
# IBAN lengths of the SEPA countries a Dutch sender meets most; other countries: 15-34.
_IBAN_LENGTH = {"NL": 18, "BE": 16, "DE": 22, "FR": 27, "GB": 22, "ES": 24, "IT": 27, "LU": 20, "AT": 20, "CH": 21}


def bsn_valid(digits: str) -> bool:
    """The Dutch 11-test (elfproef) for a citizen service number."""
    if len(digits) != 9 or not digits.isdigit() or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits, (9, 8, 7, 6, 5, 4, 3, 2, -1)))
    return total % 11 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 mod-97 check, with the country's length where known."""
    iban = iban.replace(" ", "").upper()
    if not (15 <= len(iban) <= 34) or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    if _IBAN_LENGTH.get(iban[:2], len(iban)) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card_issuer(digits: str) -> bool:
    """Issuer prefixes and lengths of the card networks: random Luhn-valid numbers mostly fail this."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if digits.startswith("6011") or two == 65 or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    if two in (36, 38) or 300 <= int(digits[:3]) <= 305:
        return n == 14
    return False


def _grouped(masked: str) -> str:
    return " ".join(masked[i : i + 4] for i in range(0, len(masked), 4))


def mask_iban(iban: str) -> str:
    """Country code and the last two characters: "NL** **** **** **** 00"."""
    iban = iban.replace(" ", "").upper()
    return _grouped(iban[:2] + "*" * (len(iban) - 4) + iban[-2:])


def mask_card(digits: str) -> str:
    """Only the last four digits: "**** **** **** 1111"."""
    return _grouped("*" * (len(digits) - 4) + digits[-4:])


def mask_bsn(digits: str) -> str:
    return "*" * 7 + digits[-2:]


# What stands just before a number says whose it is and what it is. Labels of the numbers a BSN
# check must not read as a BSN (nl, en, de, fr, es, it): phone, fax, postcode, order, customer,
# invoice, tracking and reference numbers.
_NOT_PERSONAL_LABEL = re.compile(
    r"(?:\b(?:tel|telefoon|telefon|telephone|téléphone|teléfono|telefono|phone|fon|fax|mobiel|mobile|mobil|gsm|whatsapp"
    r"|postcode|postleitzahl|plz|zip|code postal|cap"
    r"|order|bestelling|bestel|bestellung|auftrag|commande|pedido|ordine|zamówieni"
    r"|klant|customer|client|kunde|kunden|cliente|konto-?nr"
    r"|factuur|invoice|rechnung|facture|factura|fattura|faktura|beleg|quittung|receipt"
    r"|tracking|track|zending|sendung|pakket|paket|parcel|colis|envío|spedizione|przesyłk"
    r"|referentie|reference|referenz|référence|ref|artikel|article|art|sku|ean|isbn|id|nr|no|nummer|number)|#)"
    r"[\s.:#°ºn\-]*(?:\w+[\s.:#\-]*)?$",
    re.I,
)
# The sender's own account: a donation or payment request, bank details in the footer.
_OWN_ACCOUNT = re.compile(
    r"\b(?:doneer|doneren|donatie|donaties|gift|giften|steun|schenk|t\.?\s?n\.?\s?v|ten name van|onze rekening|ons rekeningnummer"
    r"|donate|donation|donations|our account|our bank|bank details|payable to|in favour of"
    r"|spende|spenden|spendenkonto|bankverbindung|kontoinhaber|unser konto|empfänger"
    r"|faire un don|don|dons|coordonnées bancaires|notre compte|bénéficiaire"
    r"|donativo|donaciones|donar|nuestra cuenta|beneficiario|donazione|donazioni|dona|il nostro conto"
    r"|darowizn|wpłat|nasze konto|bic|swift)\b",
    re.I,
)
# A number addressed to the reader ("uw IBAN", "your card") is the reader's, never the sender's.
_SECOND_PERSON = re.compile(r"\b(?:uw|je|jouw|your|ihre?|dein|deine|votre|vos|tu|su|tuo|tua|il tuo|twój|twoje)\b[^.\n]{0,25}$", re.I)
# Labels that make a nine-digit number a citizen service number whatever else stands around it.
_BSN_LABEL = re.compile(r"(?:bsn|burgerservicenummer|burger\s?service\s?nummer|sofi-?nummer|sofinummer)\W{0,6}$", re.I)
_CARD_GROUPS = re.compile(r"\d{4}(?:([ \-])\d{4}\1\d{4}\1\d{1,7}|([ \-])\d{6}\2\d{4,5})")
_URL_CHARS = frozenset("/=?&%@")
CONTEXT = 40


def _in_url(text: str, start: int, end: int) -> bool:
    """Inside a URL or an id glued to other characters: the number is part of a path or a query."""
    left = text.rfind(" ", 0, start)
    token_start = max(left, text.rfind("\n", 0, start)) + 1
    before = text[token_start:start]
    return bool(before) and ("://" in before or "www." in before.lower() or any(c in _URL_CHARS for c in before))


def own_account(text: str, start: int, legal_name: str = "") -> bool:
    """An IBAN the sender publishes as its own: a donation or payment context or the sender's legal
    name in the sentence before it, and not addressed to the reader ("uw IBAN")."""
    before = text[max(0, start - 2 * CONTEXT) : start]
    if _SECOND_PERSON.search(before[-CONTEXT:]):
        return False
    if _OWN_ACCOUNT.search(before):
        return True
    pattern = cached_pattern(legal_name) if legal_name.strip() else None
    return pattern is not None and pattern.search(fold(before)) is not None


_DIALLING_PREFIX = re.compile(r"(?:\+\d{1,3}|\(0?\d{1,4}\)|\b00\d{1,3})[\s.\-]*$")
_GROUP_SEPARATOR = re.compile(r"[ .\-]")


def _phone_formatted(text: str, start: int, raw: str) -> bool:
    """A number written as a phone number: after a +country code or an area code in brackets, or
    grouped 2-3-4 / 3-2-2-2 the way phone numbers are and a BSN (3-3-3, 4-2-3) never is."""
    if _DIALLING_PREFIX.search(text[max(0, start - 8) : start]):
        return True
    groups = [len(g) for g in _GROUP_SEPARATOR.split(raw)]
    return len(groups) > 1 and groups not in ([3, 3, 3], [4, 2, 3], [3, 2, 4], [9])


def personal_numbers(
    text: str,
    allowed: frozenset[str] = frozenset(),
    legal_name: str = "",
) -> Iterator[tuple[str, str]]:
    """(kind, masked evidence) of each BSN, IBAN and payment card number of a third party in `text`.

    IBAN: mod-97 and the country's length, not in `allowed` (the account's own_ibans) and not
    published as the sender's own (own_account). BSN: the 11-test, not inside a URL, and not
    formatted or labelled as a phone, postcode, order, customer, invoice or tracking number — unless
    labelled BSN. Card: Luhn, the issuer's prefix and length, grouped as cards are printed, not
    inside a longer digit run, a URL or a labelled tracking/order id.
    """
    # Look only around runs of digits: the three patterns never run over the whole text.
    # (the runs of \d[\d .\-]{7,}, found in one C pass)
    for start, end in _speedups.number_windows(text, 12, 4):
        for match in _IBAN.finditer(text, start, end):
            iban = match.group(1).replace(" ", "")
            if iban_valid(iban) and iban not in allowed and not own_account(text, match.start(1), legal_name):
                yield "IBAN", mask_iban(iban)
        # A card number has 13 digits or more and a BSN 9 (\d: str.isdecimal); most windows (a KvK
        # number, a phone number, a date) have fewer, and two patterns are not run over them.
        if sum(map(str.isdecimal, text[start:end])) < 9:
            continue
        for match in _CARD.finditer(text, start, end):
            raw = match.group(1)
            digits = re.sub(r"\D", "", raw)
            if not (_card_issuer(digits) and luhn_valid(digits)) or digits in allowed:
                continue
            if not (raw.isdigit() or _CARD_GROUPS.fullmatch(raw)) or _in_url(text, match.start(1), match.end(1)):
                continue
            if _NOT_PERSONAL_LABEL.search(text[max(0, match.start(1) - CONTEXT) : match.start(1)].rstrip()):
                continue
            yield "payment card number", mask_card(digits)
        for match in _BSN.finditer(text, start, end):
            raw = match.group(1)
            digits = re.sub(r"\D", "", raw)
            if not bsn_valid(digits) or digits in allowed:
                continue
            before = text[max(0, match.start(1) - CONTEXT) : match.start(1)]
            if not _BSN_LABEL.search(before):
                if _in_url(text, match.start(1), match.end(1)) or _phone_formatted(text, match.start(1), raw):
                    continue
                if _NOT_PERSONAL_LABEL.search(before.rstrip()):
                    continue
            yield "BSN", mask_bsn(digits)


def _allowed_numbers(facts: MessageFacts) -> frozenset[str]:
    values = facts.params.get("personal_data_allow") or ()
    if isinstance(values, str):
        values = (values,)
    own = (*values, *facts.account.own_ibans)
    return frozenset(re.sub(r"[\s.\-]", "", str(v)).upper() for v in own)


# A marketing message goes to each recipient alone (or to a list address, the recipients in Bcc):
# To/Cc naming this many addresses outside the sender's own domains show recipients each other's.
DISCLOSED_RECIPIENTS_MIN = 2


def disclosed_recipients(message: ParsedMessage, own: frozenset[str]) -> tuple[str, ...]:
    """The distinct addresses in To and Cc outside the sender's own domains (`own`), lower-cased."""
    values = [str(v) for name in ("To", "Cc") for v in message.headers.get_all(name) or ()]
    if sum(v.count("@") for v in values) < DISCLOSED_RECIPIENTS_MIN:
        return ()  # one address (nearly every message): no need to parse the header
    try:
        pairs = getaddresses(values)
    except Exception:  # getaddresses can trip on pathological input: no address then
        return ()
    found: dict[str, None] = {}
    for _, address in pairs:
        local, at, domain = address.strip().lower().rpartition("@")
        if at and local and domain and not under(domain, own):
            found[f"{local}@{domain}"] = None
    return tuple(found)


def mask_address(address: str) -> str:
    """"webmaster@odyssea.com" -> "w…@odyssea.com": the evidence shows whose domain, not whom."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}\u2026@{domain}"


@rule(
    "content.personal_data",
    "A marketing message exposes third parties' personal data (BSN, IBAN, payment card number, "
    "other recipients' addresses).",
    clauses=("M-code-of-conduct",),
    stage=Stage.MESSAGE,
    marketing_only=True,
)
def personal_data(facts: MessageFacts) -> Hit | None:
    """Third parties' BSNs, IBANs and card numbers in the visible or hidden text of a marketing
    message (personal_numbers says how each is told apart). The sender's own numbers are not a third
    party's: the account's `own_ibans`, params["personal_data_allow"], and an IBAN in a donation or
    payment context or next to the account's legal name. Evidence is masked.

    And the recipients' own addresses: a marketing message whose To/Cc name two or more addresses
    outside the account's domains shows every recipient the others' e-mail addresses (Cc instead of
    Bcc), "de verspreiding van de persoonlijke informatie van derden zonder toestemming"."""
    message = facts.message
    if message is None:
        return None
    allowed = _allowed_numbers(facts)
    for text in (message.text, message.hidden_text):
        for kind, masked in personal_numbers(text, allowed, facts.account.legal_name) if text else ():
            return Hit(f"The message shows a third party's {kind}", evidence=masked)
    recipients = disclosed_recipients(message, facts.account.domains)
    if len(recipients) >= DISCLOSED_RECIPIENTS_MIN:
        shown = ", ".join(mask_address(a) for a in recipients[:3]) + (" …" if len(recipients) > 3 else "")
        return Hit(
            f"To/Cc show {len(recipients)} recipients each other's e-mail addresses (Bcc or one message each)",
            evidence=shown,
        )
    return None


# --- malware ----------------------------------------------------------------------------------


@rule(
    "content.malware",
    "Virus or spyware: EICAR, executable or script attachments, macro Office files, archives hiding those.",
    clauses=("M-code-of-conduct",),
    stage=Stage.MESSAGE,
)
def malware(facts: MessageFacts) -> Hit | None:
    """Content checks done here, plus the relay's optional clamd scan.

    The clamd scan is I/O, so the relay runs it and passes the result as the fact
    shell.clamd_result: the signature name when clamd found something, "" when the
    scan was clean, None when no scan ran. A non-empty value hits.
    """
    message = facts.message
    clamd = facts.shell.clamd_result
    if clamd is not None and clamd.strip():
        return Hit("clamd found malware", evidence=clamd.strip())
    if message is None:
        return None
    if message.has_eicar:
        where = next((a.filename for a in message.attachments if a.kind == KIND_EICAR and a.filename), "")
        evidence = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" + (f" in {where}" if where else "")
        return Hit("The message contains the EICAR test signature", evidence=evidence)
    for attachment in message.attachments:
        if attachment.dangerous:
            name = attachment.filename or attachment.content_type
            where = f"{name}/{attachment.found_in}" if attachment.found_in else name
            return Hit(f"The message carries a dangerous attachment ({attachment.kind})", evidence=where)
    return None


RULES = (
    offensive_subject,
    misleading_subject,
    hateful,
    adult,
    infringing_links,
    deceptive_links,
    personal_data,
    malware,
    fraud,
    prescription_drugs,
    data_trading,
)
