"""Dutch and English word lists shipped as package data, compiled once into matchers; extendable from config."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable, Mapping

from policies.message import fold, split_words

_WORD = re.compile(r"\w+")

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

    def search(self, text: str) -> str | None:
        """The first term found in `text` (not yet folded), or None."""
        return self.search_folded(fold(text))

    def search_folded(self, folded: str, words: frozenset[str] | None = None) -> str | None:
        """Like search() for text already folded; `words` (its distinct words) saves a scan."""
        if self.single:
            if words is None:
                words = split_words(folded)
            found = words.intersection(self.single)
            if found:
                # deterministic evidence: the term listed first
                return min((self.single[w] for w in found), key=self.terms.index)
        if not self.multi_patterns:
            return None
        if words is None:
            words = split_words(folded)
        firsts = words.intersection(self.multi_first)
        if not firsts and not self.multi_other:
            return None
        indices = sorted(itertools.chain(self.multi_other, *(self.multi_first[w] for w in firsts)))
        for i in indices:
            first, term, pattern = self.multi_patterns[i]
            # Terms whose first word is no whole word were not ruled out by the index: such a
            # term must at least stand in the text (a substring test in C).
            if i in self.multi_other and first not in folded:
                continue
            for match in pattern.finditer(folded):
                start = match.start()
                if start == 0 or not (folded[start - 1].isalnum() or folded[start - 1] == "_"):
                    return term
        return None


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
    if not isinstance(lists, Mapping):
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
    alternatives: list[str] = []
    for term in terms:
        tokens = _WORD.findall(fold(term))
        if not tokens:
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
    )
