"""The per-message shortcuts of issue 20 (session 16) against the code they replace: each fast path
gives what the plain formula gives, on generated input (hypothesis), so no verdict can change."""

from __future__ import annotations

import base64
import calendar
import itertools
import re
import unicodedata
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import wordlists
from policies._passes_py import fold_reference
from policies.engine import Engine
from policies.facts import AccountFacts, MessageFacts, StreamFacts
from policies.message import _COMBINING, _fold_run, fold, parse_message, split_words
from policies.profiles import load_profile
from policies.registry import ALL_RULES
from policies.rules import consent, content, identity

MANY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Accented letters, combining marks of every range _COMBINING removes, signs, CJK and ASCII.
NON_ASCII = st.sampled_from(
    ["\u00e9", "e\u0301", "\u0301", "\u036f", "\u1ab0", "\u1dc0", "\u20d0", "\ufe20", "\u20ac", "\u2013", "\u00b7",
     "\u00df", "\u0130", "\u212a", "\ufb01", "\u4e2d", "\uac00", "\U0001d400", "\u0345", "a", " ", "Z"]
)


@MANY
@given(st.one_of(st.lists(NON_ASCII, max_size=80).map("".join), st.text(max_size=100)))
def test_fold_run_short_and_long_is_the_reference_fold(text: str) -> None:
    # the short path (sub at once) and the long one (lead bytes first) both give NFKD, marks dropped, casefold
    assert _fold_run(text) == fold_reference(text)
    assert _fold_run(text * 3) == fold_reference(text * 3)


def _fold_run_before(text: str) -> str:
    leads = (b"\xcc", b"\xcd", b"\xe1\xaa", b"\xe1\xab", b"\xe1\xb7", b"\xe2\x83", b"\xef\xb8")
    if not unicodedata.is_normalized("NFKD", text):
        text = unicodedata.normalize("NFKD", text)
    encoded = text.encode("utf-8", "surrogatepass").translate(None, bytes(range(128)))
    if any(lead in encoded for lead in leads):
        text = _COMBINING.sub("", text)
    return text.casefold()


@MANY
@given(st.one_of(st.lists(NON_ASCII, max_size=80).map("".join), st.text(max_size=100)))
def test_fold_run_is_the_fold_run_before(text: str) -> None:
    assert _fold_run(text) == _fold_run_before(text)


@MANY
@given(st.frozensets(st.one_of(st.lists(NON_ASCII, min_size=1, max_size=6).map("".join), st.text(min_size=1, max_size=8))))
def test_unspaced_haystack_looks_at_the_wide_words_only(words: frozenset[str]) -> None:
    folded = "\u00e9 " + " ".join(words)  # not ASCII: the haystack is computed
    high = bytes(b for b in range(256) if not (0x30 <= b <= 0x9F or 0xAC <= b <= 0xD7 or b in (0xF9, 0xFA)))
    joined = "\n".join(words)
    before = joined if joined.encode("utf-16-le", "surrogatepass")[1::2].translate(None, high) else ""
    assert wordlists.unspaced_haystack(folded, words) == before
    text_before = folded if folded.encode("utf-16-le", "surrogatepass")[1::2].translate(None, high) else ""
    assert wordlists.unspaced_haystack(folded, None) == text_before


def _shouting_before(subject: str, own: tuple[str, ...]) -> bool:
    for name in own:
        if name and name.lower() in subject.lower():
            subject = re.sub(re.escape(name), " ", subject, flags=re.I)
    letters = [c for c in subject if c.isalpha()]
    if len(letters) < content.SHOUTING_MIN_LETTERS:
        return False
    upper = sum(1 for c in letters if c.isupper())
    return upper / len(letters) >= content.SHOUTING_UPPER_SHARE


SUBJECT_PIECES = st.sampled_from(["SHOP", "shop", "Shop.NL", "SALE", "now", "!!", " ", "\u00c9T\u00c9", "\u2166", "\u01c5", "x"])


@MANY
@given(st.one_of(st.lists(SUBJECT_PIECES, max_size=12).map("".join), st.text(max_size=40)),
       st.lists(st.sampled_from(["shop.nl", "Shop", "", "sale", "\u00e9t\u00e9"]), max_size=3))
def test_shouting_counts_as_before(subject: str, own: list[str]) -> None:
    assert content.shouting(subject, own) == _shouting_before(subject, tuple(own))


@MANY
@given(st.text(alphabet=st.sampled_from("0123456789 .-/,\u0660\u0661\u00b2NLBE"), max_size=40))
def test_windows_with_fewer_than_nine_digits_hold_no_card_and_no_bsn(window: str) -> None:
    # personal_numbers skips the card and BSN patterns there (\d is str.isdecimal)
    text = f"bsn: {window} x"
    if sum(map(str.isdecimal, text)) < 9:
        assert content._CARD.search(text) is None
        assert content._BSN.search(text) is None


@MANY
@given(st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789.-_"), max_size=70))
def test_ascii_domains_are_what_the_idna_codec_gives_back(domain: str) -> None:
    # _domain_allowed skips the codec for an ASCII name: it returns it unchanged or raises (kept as is)
    try:
        encoded = domain.encode("idna").decode("ascii")
    except UnicodeError:
        encoded = domain
    assert encoded == domain
    assert identity._domain_allowed(domain, frozenset({domain}))


@MANY
@given(st.text(alphabet=st.sampled_from("nodreplyatswe-_.@x\u00e9"), max_size=30))
def test_no_reply_markers_as_before(address: str) -> None:
    local, _, domain = address.rpartition("@")
    squashed = re.sub(r"[\W_]+", "", fold(local))
    labels = (re.sub(r"[\W_]+", "", label) for label in fold(domain).split("."))
    before = any(m in squashed for m in identity._NO_REPLY) or any(label in identity._NO_REPLY for label in labels)
    assert identity._is_no_reply(address) == before


@MANY
@given(st.datetimes(min_value=datetime(1900, 3, 1), max_value=datetime(2200, 1, 1)), st.integers(0, 400))
def test_months_before_as_before(moment: datetime, months: int) -> None:
    index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    assert consent._months_before(moment, months) == moment.replace(year=year, month=month + 1, day=day)


@MANY
@given(st.one_of(st.lists(NON_ASCII, max_size=30).map("".join), st.text(max_size=60)))
def test_the_subject_views_are_fold_and_split_words(subject: str) -> None:
    encoded = subject.replace("\r", " ").replace("\n", " ").encode("utf-8", "surrogatepass")
    message = parse_message(b"Subject: " + encoded + b"\r\n\r\nbody")
    assert message.folded_subject == fold(message.subject)
    assert message.subject_words == split_words(fold(message.subject))
    for name in ("offensive", "urgency", "adult"):
        assert content.subject_term(message, name, {}) == wordlists.wordlist(name).search(message.subject)


def _encoded_word(text: str) -> bytes:
    return b"=?utf-8?b?" + base64.b64encode(text.encode()) + b"?="


def test_subject_terms_of_scripts_without_spaces_are_found_as_search_finds_them() -> None:
    # a site term of two Chinese words stands in the subject as written, never among its words
    params = {"wordlists": {name: ["\u6210\u4eba \u89c6\u9891", "\u7279\u4ef7"] for name in ("offensive", "urgency", "adult")}}
    for subject in ("\u6210\u4eba \u89c6\u9891", "x \u6210\u4eba \u89c6\u9891 y", "\u6210\u4eba\u89c6\u9891", "\u7279\u4ef7!", "porn"):
        message = parse_message(b"Subject: " + _encoded_word(subject) + b"\r\n\r\nbody")
        assert message.subject == subject
        for name in ("offensive", "urgency", "adult"):
            expected = wordlists.wordlist(name, params).search(message.subject)
            assert content.subject_term(message, name, params) == expected
    message = parse_message(b"Subject: " + _encoded_word("\u6210\u4eba \u89c6\u9891") + b"\r\n\r\nbody")
    assert content.subject_term(message, "offensive", {}) is None
    assert content.subject_term(message, "offensive", params) == "\u6210\u4eba \u89c6\u9891"


def _applies_before(rule: object, facts: MessageFacts) -> bool:
    if facts.null_sender and rule.skip_for_null_sender:  # type: ignore[attr-defined]
        return False
    if rule.marketing_only:  # type: ignore[attr-defined]
        return facts.stream is not None and facts.stream.is_marketing
    return True


def test_the_engine_runs_the_rules_it_ran_before_in_their_order() -> None:
    account = AccountFacts(id="a", domains=frozenset({"a.example"}))
    now = datetime(2026, 3, 15, tzinfo=timezone.utc)
    for profile_name, null_sender, stream in itertools.product(
        ("strict", "mailpro", "clang"), (False, True),
        (None, StreamFacts("n", "marketing", "n"), StreamFacts("t", "transactional", "t")),
    ):
        profile = load_profile(profile_name)
        engine = Engine(ALL_RULES, profile)
        facts = MessageFacts(account, "" if null_sender else "x@a.example", now, profile.params, stream, null_sender=null_sender)
        for stage, rules in engine._by_stage.items():
            if stage.name == "CLIENT":
                continue
            assert engine._applying_to(stage, facts) == tuple(r for r in rules if _applies_before(r, facts))


def test_a_verdict_without_findings_is_what_the_ranking_gives() -> None:
    from policies import engine as engine_module
    from policies.findings import Outcome

    verdict = engine_module._decide([], ["a", "b"], ("r@x.example",))
    assert verdict.outcome is Outcome.DELIVER
    assert (verdict.findings, verdict.misses, verdict.refused, verdict.deciding, verdict.relied_on) == ((), ("a", "b"), {}, None, {})
    assert engine_module._decide([], [], ()).outcome is Outcome.DELIVER


def test_months_before_clamps_late_days() -> None:
    moment = datetime(2026, 3, 31, 12, tzinfo=timezone.utc)
    assert consent._months_before(moment, 1) == datetime(2026, 2, 28, 12, tzinfo=timezone.utc)
    assert consent._months_before(moment - timedelta(days=2), 1) == datetime(2026, 2, 28, 12, tzinfo=timezone.utc)


# --- issue 20, session 17 ----------------------------------------------------------------------


def _under_before(host: str, domains: frozenset[str]) -> bool:
    from policies.domains import normalise_host

    labels = normalise_host(host).split(".")
    return any(".".join(labels[i:]) in domains for i in range(len(labels)))


HOST_PIECES = st.sampled_from(["shop", "example", "nl", "co", "uk", ".", "..", "Shop", "xn--", "xn--caf-dma", " ", "a"])


@MANY
@given(st.lists(HOST_PIECES, max_size=8).map("".join),
       st.frozensets(st.one_of(st.lists(HOST_PIECES, max_size=4).map("".join), st.sampled_from(["", "shop.example", "example"]))))
def test_under_as_before(host: str, domains: frozenset[str]) -> None:
    from policies.domains import under

    assert under(host, domains) == _under_before(host, domains)


@MANY
@given(st.one_of(st.lists(SUBJECT_PIECES, max_size=12).map("".join), st.text(max_size=40)),
       st.lists(st.sampled_from(["shop.nl", "SHOP.NL", "Shop", "", "sale"]), max_size=3))
def test_misleading_subject_as_before(subject: str, names: list[str]) -> None:
    # the capitals counted before the sender's names are sorted: the verdict of shouting() as before
    account = AccountFacts(id="a", name=names[0] if names else "", domains=frozenset(names[1:]))
    message = parse_message(b"Subject: " + _encoded_word(subject) + b"\r\n\r\nbody")
    facts = MessageFacts(account, "a@shop.nl", datetime(2026, 3, 15, tzinfo=timezone.utc), {}, message=message)
    hit = content.misleading_subject.check(facts)
    before = _shouting_before(message.subject, (*sorted(account.domains, key=len, reverse=True), account.name))
    shouted = hit is not None and hit.detail == "The subject is shouting (mostly capitals)"
    fake_thread = hit is not None and hit.detail.startswith("The subject pretends")
    assert shouted == (before and not fake_thread)


def _extra_terms_before(name: str, params: object) -> tuple[str, ...]:
    from collections import abc

    if not params:
        return ()
    lists = params.get("wordlists")  # type: ignore[attr-defined]
    if lists is None:
        return ()
    if not isinstance(lists, abc.Mapping):
        return ()
    extra = lists.get(name)
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, (list, tuple)):
        return ()
    return tuple(t.strip() for t in extra if isinstance(t, str) and t.strip())


TERMS = st.one_of(st.none(), st.text(max_size=5), st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
                  st.tuples(st.text(max_size=3)), st.integers())
WORDLISTS = st.one_of(st.none(), st.just({}), st.just(""), st.just([]), st.just(0), st.text(max_size=3),
                      st.dictionaries(st.sampled_from(["adult", "hateful", "x"]), TERMS, max_size=3))


@MANY
@given(st.one_of(st.none(), st.just({}), st.dictionaries(st.sampled_from(["wordlists", "placeholder"]), WORDLISTS, max_size=2)),
       st.sampled_from(["adult", "hateful", "x"]))
def test_extra_terms_as_before(params: dict | None, name: str) -> None:
    # the relay's params carry "wordlists": {} (relay.services.build_profile): () before the ABC check
    assert wordlists.extra_terms(name, params) == _extra_terms_before(name, params)


@MANY
@given(st.dictionaries(st.sampled_from(["wordlists", "placeholder"]), WORDLISTS, max_size=2))
def test_text_words_with_any_params_are_those_of_the_site_lists(params: dict) -> None:
    message = parse_message(b"Subject: x\r\n\r\nnext of kin western union viagra v1agra porn zorg")
    vocabulary = set(content._drug_spellings(wordlists.wordlist("prescription_drugs", params).terms)[1])
    for name in content._BODY_LISTS:
        vocabulary |= wordlists.wordlist(name, params).vocabulary
    assert content.text_words(message, params) == message.words & vocabulary


def test_hrefs_lower_as_before_on_the_corpus() -> None:
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parents[1] / "corpus").rglob("*.eml"))
    assert len(paths) >= 100
    for path in paths:
        message = parse_message(path.read_bytes())
        assert message.hrefs_lower == ("\n" + "\n".join(link.href for link in message.links)).lower()
