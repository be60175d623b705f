"""Word lists: shipped Dutch and English data, extendable from the config, folded matching."""

from __future__ import annotations

import pytest

from policies.message import fold
from policies.wordlists import compile_terms, parse_terms, shipped_terms, terms_for, wordlist

LISTS = ("offensive", "hateful", "adult", "infringing_hosts", "urgency", "unsubscribe")


@pytest.mark.parametrize("name", LISTS)
def test_every_shipped_list_loads_and_has_terms(name: str) -> None:
    terms = shipped_terms(name)
    assert len(terms) >= 10
    assert all(t == t.strip() and not t.startswith("#") for t in terms)


def test_lists_have_dutch_and_english_terms() -> None:
    assert {"afmelden", "unsubscribe"} <= set(shipped_terms("unsubscribe"))
    assert {"klote", "fuck"} <= set(shipped_terms("offensive"))
    assert {"porno", "porn"} <= set(shipped_terms("adult"))


def test_unknown_list_is_an_error() -> None:
    with pytest.raises(KeyError):
        shipped_terms("no-such-list")


def test_parse_terms_skips_comments_and_blanks() -> None:
    assert parse_terms("# header\nfoo  # trailing\n\n  bar baz \n") == ["foo", "bar baz"]


def test_matching_is_on_word_boundaries_case_and_accent_insensitive() -> None:
    words = compile_terms("test", ("crème brûlée", "kut", "Opt-Out"))
    assert words.search("Heerlijke CREME   BRULEE!") == "crème brûlée"
    assert words.search("kuttekening") is None  # inside another word
    assert words.search("Klik voor opt out") == "Opt-Out"
    assert words.search("een KUT dag") == "kut"
    assert words.search_folded(fold("Het Kut-weer")) == "kut"
    assert words.pattern is not None and words.pattern.search(fold("crème brûlée")) is not None


def test_evidence_is_the_first_listed_term_whatever_the_text_order() -> None:
    words = compile_terms("test", ("beta", "alpha"))
    assert words.search("alpha and beta") == "beta"


def test_extra_terms_from_params_extend_the_shipped_list() -> None:
    params = {"wordlists": {"adult": ["Zwoele nachten"], "offensive": "prutser"}}
    assert terms_for("adult", params)[-1] == "Zwoele nachten"
    assert wordlist("adult", params).search("zwoele nachten in de aanbieding") == "Zwoele nachten"
    assert wordlist("offensive", params).search("Prutser!") == "prutser"
    assert wordlist("adult").search("zwoele nachten") is None  # not without the params
    assert wordlist("adult", {"wordlists": {"adult": [3, None]}}).terms == shipped_terms("adult")


def test_compiled_lists_are_cached_by_terms() -> None:
    assert wordlist("hateful") is wordlist("hateful")
    assert wordlist("hateful", {"wordlists": {"hateful": ["x"]}}) is not wordlist("hateful")
