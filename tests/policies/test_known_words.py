"""The content rules' one-pass vocabulary lookup (issue 20, session 17) against what it replaces:
_speedups.known_words is words(text) & the vocabulary, and every body list and the drug spellings
answer on ParsedMessage.known_words as on message.words, on the corpus and on generated text, with
and without site additions. So no verdict can change."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import _passes_py, _speedups, wordlists
from policies.message import ParsedMessage, parse_message, split_words
from policies.rules import content

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MANY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HIGH = bytes(b for b in range(256) if not (0x30 <= b <= 0x9F or 0xAC <= b <= 0xD7 or b in (0xF9, 0xFA)))
# Site additions: a one-word, a multi-word, a Chinese and an accented term for each list
SITE = {
    "wordlists": {
        name: ["zorgtoeslag", "gratis geld nu", "\u7279\u4ef7", "caf\u00e9 cr\u00e8me"]
        for name in (*content._BODY_LISTS, "prescription_drugs")
    }
}


def _unspaced_before(words: frozenset[str]) -> bool:
    """unspaced_haystack's test: a character of a script without spaces in a word that is not ASCII."""
    wide = "\n".join(w for w in words if not w.isascii())
    return bool(wide.encode("utf-16-le", "surrogatepass")[1::2].translate(None, HIGH))


PIECES = st.sampled_from(
    ["porn", "sex", "viagra", "v1agra", "western", "union", "next", "of", "kin", "\u6210\u4eba", "\u89c6\u9891",
     "caf\u00e9", "\u00e9", "e\u0301", "\u20ac", "\u2013", "_", "1", "x", "\u0130", "\u212a", "\ufb01",
     "\uac00", "\uf900", "\u3000", "\u2fff", "\U0001d400", "\ud800", " ", "\n", ".", ",", "-", "'"]
)
TEXT = st.one_of(st.lists(PIECES, max_size=40).map("".join), st.text(max_size=80))


@MANY
@given(TEXT, st.lists(st.one_of(PIECES, st.text(max_size=6)), max_size=12))
def test_known_words_are_the_words_in_the_vocabulary(text: str, vocabulary: list[str]) -> None:
    words = split_words(text)
    table = _speedups.vocabulary(vocabulary + sorted(words)[:3])  # some of the text's own words too
    known = vocabulary_set = set(vocabulary) | set(sorted(words)[:3])
    expected = (words & frozenset(vocabulary_set), _unspaced_before(words))
    found = _speedups.known_words(text, table)
    assert found == expected
    assert isinstance(found[0], frozenset)
    assert _passes_py.known_words(text, _passes_py.vocabulary(known)) == expected


def test_vocabulary_takes_only_strings() -> None:
    with pytest.raises(TypeError):
        _speedups.vocabulary(["a", b"b"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _passes_py.vocabulary(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _speedups.known_words(None, _speedups.vocabulary([]))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _speedups.known_words("text", object())


def _same_answers(message: ParsedMessage, params: dict) -> None:
    """Every body list and the drug spellings: the known words answer as all the words do."""
    folded = message.folded_text
    known = content.text_words(message, params)
    words = split_words(folded)
    assert known <= words
    for name in content._BODY_LISTS:
        wordlist = wordlists.wordlist(name, params)
        assert wordlist.search_folded(folded, known) == wordlist.search_folded(folded, words), name
        assert wordlist.find_all(folded, known) == wordlist.find_all(folded, words), name
        assert wordlist.search_folded(folded, words) == wordlist.search_folded(folded), name
    spellings = content._drug_spellings(wordlists.wordlist("prescription_drugs", params).terms)[1]
    assert known & spellings == words & spellings


def corpus_messages() -> list[Path]:
    return sorted(CORPUS.rglob("*.eml"))


def test_the_corpus_is_there() -> None:
    assert len(corpus_messages()) >= 100


@pytest.mark.parametrize("params", [{}, SITE], ids=["shipped", "site additions"])
def test_body_lists_answer_on_the_known_words_as_on_every_word_corpus(params: dict) -> None:
    for path in corpus_messages():
        _same_answers(parse_message(path.read_bytes()), params)


def _terms() -> list[str]:
    names = (*content._BODY_LISTS, "prescription_drugs", "prescription_selling")
    return sorted({t for name in names for t in wordlists.terms_for(name, SITE)})


BODY_PIECES = st.one_of(PIECES, st.sampled_from(_terms()))


@MANY
@given(st.lists(BODY_PIECES, max_size=25).map(" ".join), st.lists(BODY_PIECES, max_size=6).map("".join),
       st.sampled_from([{}, SITE]))
def test_body_lists_answer_on_the_known_words_as_on_every_word_generated(body: str, subject: str, params: dict) -> None:
    raw = ("Subject: " + subject.replace("\n", " ") + "\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body)
    _same_answers(parse_message(raw.encode("utf-8", "surrogatepass")), params)


def test_the_known_words_are_kept_per_vocabulary() -> None:
    message = parse_message(b"Subject: x\r\n\r\nnext of kin western union viagra")
    shipped = content.text_words(message, {})
    assert shipped is content.text_words(message, {})
    assert {"viagra", "union", "western"} <= shipped
    site = content.text_words(message, {"wordlists": {"hateful": ["western"]}})
    assert site == shipped  # another vocabulary: asked again, same words here
    assert content.text_words(message, {"wordlists": {"hateful": ["kin"]}}) >= {"kin"}


def test_a_text_in_a_script_without_spaces_gets_every_word() -> None:
    message = parse_message("Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\u6210\u4eba\u89c6\u9891 and more".encode())
    assert content.text_words(message, {}) == message.words
    assert content.text_words(message, {}) >= {"and", "more"}


def _hits(path: Path, params: dict) -> list[tuple[str, str, str] | None]:
    from factories import NOW, SHOP
    from policies.facts import MessageFacts, StreamFacts

    facts = MessageFacts(
        SHOP, "news@shop.example", NOW, params, StreamFacts("newsletter", "marketing", "newsletter"),
        message=parse_message(path.read_bytes()),
    )
    out = []
    for rule in content.RULES:
        hit = rule.check(facts)
        out.append(None if hit is None else (rule.id, hit.detail, hit.evidence))
    return out


@pytest.mark.parametrize("params", [{}, SITE], ids=["shipped", "site additions"])
def test_every_content_rule_finds_what_it_found_on_every_word(params: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from policies.profiles import load_profile

    params = {**load_profile("strict").params, **params}
    now = [_hits(path, params) for path in corpus_messages()]
    monkeypatch.setattr(content, "text_words", lambda message, params: message.words)  # the code before
    before = [_hits(path, params) for path in corpus_messages()]
    assert now == before
    assert any(hit is not None for hits in now for hit in hits)
