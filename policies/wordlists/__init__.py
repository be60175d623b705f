"""Dutch and English word lists shipped as package data, compiled once into matchers; extendable from config."""

from __future__ import annotations

import itertools
import re
from collections import abc
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping

from policies._passes import passes as _speedups
from policies.message import fold, split_words

_WORD = re.compile(r"\w+")
# Scripts written without spaces between words (Chinese, Japanese kana, Korean): a term in them is
# looked for as a substring, since the text's \w+ runs are whole phrases there.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# The high bytes (UTF-16) of U+3000-U+9FFF, U+AC00-U+D7FF and U+F900-U+FAFF: all bytes else deleted
_NOT_UNSPACED_HIGH = bytes(b for b in range(256) if not (0x30 <= b <= 0x9F or 0xAC <= b <= 0xD7 or b in (0xF9, 0xFA)))


# one element, replaced whole (atomic), read once per call
_LAST_HAYSTACK: list[tuple[frozenset[str] | str | None, str]] = [(None, "")]


def unspaced_haystack(folded: str, words: frozenset[str] | None) -> str:
    """Where the terms of scripts without spaces are looked for: the text's distinct words (such a
    term lies inside one \\w+ run, and the distinct words are far shorter than a long text), or ""
    when no character of those scripts is there (a C pass over the UTF-16 high bytes). The last
    answer is kept: every list with such terms asks it of the same message."""
    if folded.isascii():
        return ""
    key: frozenset[str] | str = words if words is not None else folded
    last_key, last_answer = _LAST_HAYSTACK[0]
    if last_key is key:
        return last_answer
    if words is not None:
        # Only a word with a non-ASCII character can hold one of those scripts (an ASCII one, and
        # the "\n" between words, has the high byte 0): a page has few such words.
        wide = "\n".join(itertools.filterfalse(str.isascii, words))
        answer = "\n".join(words) if _has_unspaced(wide) else ""
    else:
        answer = folded if _has_unspaced(folded) else ""
    _LAST_HAYSTACK[0] = (key, answer)
    return answer


def _has_unspaced(text: str) -> bool:
    """A character of the scripts without spaces, by its UTF-16 high byte (a superset of _UNSPACED)."""
    return bool(text.encode("utf-16-le", "surrogatepass")[1::2].translate(None, _NOT_UNSPACED_HIGH))


# Pure and deterministic: the same terms always compile to the same matcher, so caching by
# the tuple of terms is safe across accounts and profiles.
_COMPILED: dict[tuple[str, tuple[str, ...]], WordList] = {}
_SHIPPED: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class WordList:
    """One list, matched on word boundaries, case- and accent-insensitively; evidence is the term."""

    name: str
    terms: tuple[str, ...]
    # folded one-word term -> term as written in the list
    single: Mapping[str, str]
    # folded multi-word term ("opt out") -> term as written
    multi: Mapping[str, str]
    # (first word, term, regex) per multi-word term in list order; the regex starts with a
    # literal so the engine scans fast, and the word boundary before it is checked after.
    multi_patterns: tuple[tuple[str, str, re.Pattern[str]], ...]
    pattern: re.Pattern[str] | None  # the whole list as one regex
    # Index into multi_patterns by first word (whole words only) and the rest: with lists in ten
    # languages only the terms whose first word is in the text are tried.
    multi_first: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    multi_other: tuple[int, ...] = ()
    # (folded term, term as written) for terms in a script without spaces: substring matches
    unspaced: tuple[tuple[str, str], ...] = ()
    # the words of each multi-word term (as multi_patterns): all must be words of the text
    multi_words: tuple[frozenset[str], ...] = ()
    # the keys of single and multi_first as sets: a set with a set walks the smaller one
    single_keys: frozenset[str] = frozenset()
    first_keys: frozenset[str] = frozenset()

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every word search_folded and find_all look up in `words`: the one-word terms and each word
        of the multi-word ones. Given only the text's words of a superset of these, they answer as
        given all of them, unless a word is of a script without spaces (unspaced_haystack reads all)."""
        return self.single_keys.union(*self.multi_words)

    def search(self, text: str) -> str | None:
        """The first term found in `text` (not yet folded), or None."""
        return self.search_folded(fold(text))

    def search_folded(self, folded: str, words: frozenset[str] | None = None) -> str | None:
        """Like search() for text already folded; `words` (its distinct words) saves a scan."""
        if self.unspaced:
            haystack = unspaced_haystack(folded, words)
            for needle, term in self.unspaced if haystack else ():
                if needle in haystack:
                    return term
        if self.single:
            if words is None:
                words = split_words(folded)
            found = words & self.single_keys  # frozensets: the smaller one is walked
            if found:
                # deterministic evidence: the term listed first
                return min((self.single[w] for w in found), key=self.terms.index)
        if not self.multi_patterns:
            return None
        if words is None:
            words = split_words(folded)
        firsts = words & self.first_keys
        if not firsts and not self.multi_other:
            return None
        indices = sorted(itertools.chain(self.multi_other, *(self.multi_first[w] for w in firsts)))
        for i in indices:
            first, term, pattern = self.multi_patterns[i]
            # Terms whose first word is no whole word were not ruled out by the index: such a
            # term must at least stand in the text (a substring test in C).
            if i in self.multi_other and first not in folded:
                continue
            if self._multi_found(pattern, folded):
                return term
        return None

    @staticmethod
    def _multi_found(pattern: re.Pattern[str], folded: str) -> bool:
        for match in pattern.finditer(folded):
            start = match.start()
            if start == 0 or not (folded[start - 1].isalnum() or folded[start - 1] == "_"):
                return True
        return False

    def find_all(self, folded: str, words: frozenset[str] | None = None) -> tuple[str, ...]:
        """Every distinct term of the list found in `folded` (already folded), in list order."""
        if words is None:
            words = split_words(folded)
        hits = words & self.single_keys
        found = {self.single[w] for w in hits} if hits else set()  # most texts: no comprehension to run
        if self.unspaced:
            haystack = unspaced_haystack(folded, words)
            found.update(term for needle, term in self.unspaced if haystack and needle in haystack)
        for first in words & self.first_keys:
            for i in self.multi_first[first]:
                self._add_phrase(i, folded, words, found)
        for i in self.multi_other:
            self._add_phrase(i, folded, words, found)
        if not found:
            return ()
        return tuple(sorted(found, key=self.terms.index))

    def _add_phrase(self, i: int, folded: str, words: frozenset[str], found: set[str]) -> None:
        first, term, pattern = self.multi_patterns[i]
        # a phrase's words are whole words of the text: a set test rules most phrases out before
        # any scan of the text
        if term not in found and self.multi_words[i] <= words and self._multi_found(pattern, folded):
            found.add(term)


@dataclass(frozen=True)
class Lexicon:
    """The vocabulary of several lists in one table (policies._speedups.vocabulary): a text's words
    that any of them can match, read off in one pass (ParsedMessage.known_words) in place of every
    word of the text, for which each list then asks."""

    words: frozenset[str]
    table: object


def lexicon(words: Iterable[str]) -> Lexicon:
    """A Lexicon of `words` (WordList.vocabulary of each list, and any other words to look up)."""
    distinct = frozenset(words)
    return Lexicon(distinct, _speedups.vocabulary(sorted(distinct)))


def shipped_terms(name: str) -> tuple[str, ...]:
    """The shipped terms of list `name`: policies/wordlists/<name>.txt and <name>.<lang>.txt."""
    terms = _SHIPPED.get(name)
    if terms is None:
        collected: list[str] = []
        folder = resources.files(__package__)
        files = sorted(
            entry.name
            for entry in folder.iterdir()
            if entry.name == f"{name}.txt" or (entry.name.startswith(f"{name}.") and entry.name.endswith(".txt"))
        )
        if not files:
            raise KeyError(f"no word list named {name!r}")
        for filename in files:
            collected.extend(parse_terms(folder.joinpath(filename).read_text("utf-8")))
        terms = tuple(dict.fromkeys(collected))
        _SHIPPED[name] = terms
    return terms


def shipped_names() -> frozenset[str]:
    """The names of the shipped lists (adult, hateful, …): <name>.txt and <name>.<lang>.txt."""
    folder = resources.files(__package__)
    return frozenset(entry.name.partition(".")[0] for entry in folder.iterdir() if entry.name.endswith(".txt"))


def parse_terms(text: str) -> list[str]:
    """One term per line; `#` starts a comment; blank lines ignored."""
    terms = []
    for line in text.splitlines():
        term = line.partition("#")[0].strip()
        if term:
            terms.append(term)
    return terms


def extra_terms(name: str, params: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Site additions from params["wordlists"][name]; anything that is not a string is ignored."""
    if not params:
        return ()
    lists = params.get("wordlists")
    # No site additions (most configs): every rule asks, per message. The relay passes an empty
    # table then (relay.services.build_profile), which answers () as None does, without the ABC check.
    if not lists:
        return ()
    if not isinstance(lists, abc.Mapping):  # the ABC itself: typing.Mapping's check costs ten times more
        return ()
    extra = lists.get(name)
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, (list, tuple)):
        return ()
    return tuple(t.strip() for t in extra if isinstance(t, str) and t.strip())


def terms_for(name: str, params: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Shipped terms plus the site's extra terms, in that order, without duplicates."""
    return tuple(dict.fromkeys(shipped_terms(name) + extra_terms(name, params)))


_WITH_EXTRAS: dict[tuple[str, tuple[str, ...]], WordList] = {}


def wordlist(name: str, params: Mapping[str, Any] | None = None) -> WordList:
    """The compiled list `name` with the site's extra terms from params["wordlists"]."""
    key = (name, extra_terms(name, params))
    compiled = _WITH_EXTRAS.get(key)
    if compiled is None:  # rules call this per message: keep the hot path to one dict lookup
        compiled = _WITH_EXTRAS[key] = compile_terms(name, terms_for(name, params))
    return compiled


def compile_terms(name: str, terms: Iterable[str]) -> WordList:
    key = (name, tuple(terms))
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _compile(*key)
        _COMPILED[key] = compiled
    return compiled


def _compile(name: str, terms: tuple[str, ...]) -> WordList:
    single: dict[str, str] = {}
    multi: dict[str, str] = {}
    unspaced: dict[str, str] = {}
    alternatives: list[str] = []
    for term in terms:
        tokens = _WORD.findall(fold(term))
        if not tokens:
            continue
        if _UNSPACED.search(term):
            unspaced.setdefault(" ".join(tokens), term)
            continue
        alternatives.append(r"\W+".join(re.escape(t) for t in tokens))
        if len(tokens) == 1:
            single.setdefault(tokens[0], term)
        else:
            multi.setdefault(" ".join(tokens), term)
    multi_patterns = tuple(
        (
            key.split(" ")[0],
            multi[key],
            re.compile(r"\W+".join(re.escape(t) for t in key.split(" ")) + r"(?!\w)"),
        )
        for key in multi  # list order: the evidence is the term listed first, as for single words
    )
    pattern = re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)") if alternatives else None
    multi_first: dict[str, list[int]] = {}
    multi_other: list[int] = []
    for i, (first, _, _) in enumerate(multi_patterns):
        if first.isalnum():
            multi_first.setdefault(first, []).append(i)
        else:
            multi_other.append(i)
    return WordList(
        name,
        terms,
        single,
        multi,
        multi_patterns,
        pattern,
        {k: tuple(v) for k, v in multi_first.items()},
        tuple(multi_other),
        tuple(unspaced.items()),
        tuple(frozenset(key.split(" ")) for key in multi),
        frozenset(single),
        frozenset(multi_first),
    )
