"""The real-world corpus as a standing test (issue 14): no false positive on the legitimate
newsletters and notices, recall on the spam and phishing samples with the account's footer pasted in."""

from __future__ import annotations

import functools

import pytest

from real_corpus import REAL, RESULTS, Result, Sample, load_samples, run, table

SAMPLES = load_samples()
LEGIT = [s for s in SAMPLES if s.kind == "legit"]
SPAM = [s for s in SAMPLES if s.kind == "spam"]
# The floor this suite holds the spam set to; docs/corpus-results.md reports the figure itself.
RECALL_FLOOR = 0.8
FOOTER_RULES = (
    "identity.sender_not_authorized",
    "identity.from_name_mismatch",
    "identity.legal_notice_missing",
    "identity.postal_address_missing",
    "optout.missing",
)


@functools.cache
def results() -> tuple[Result, ...]:
    return tuple(run(SAMPLES))


def result_for(sample: Sample) -> Result:
    return next(r for r in results() if r.sample.path == sample.path)


def test_the_corpus_is_large_varied_and_documented() -> None:
    assert len(LEGIT) >= 40 and len({s.lang for s in LEGIT}) >= 5 and len(SPAM) >= 15
    on_disk = {p.relative_to(REAL).as_posix() for p in REAL.glob("*/*.eml")}
    assert on_disk == {f"{s.kind}/{s.path.name}" for s in SAMPLES}, "every file has a verdict and vice versa"
    sources = {}
    for line in (REAL / "SOURCES").read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            file, repository, path, commit, licence = line.split("\t")
            assert "/" in repository and path and len(commit) == 40 and licence, line
            sources[file] = repository
    assert set(sources) == on_disk, "SOURCES names the origin of every sample"
    assert all(s.reason for s in SAMPLES)


@pytest.mark.parametrize("sample", LEGIT, ids=lambda s: s.path.name)
def test_no_false_positive_on_legitimate_mail(sample: Sample) -> None:
    # policy: mailpro M-opt-out, M-legal-notice, M-code-of-conduct; clang E-afmeldproces, E-no-reply,
    # E-misleiden — a real sender's newsletter or notice gets no rule a careful reader would call wrong
    result = result_for(sample)
    assert result.false_positives == (), [(f.rule, f.detail, f.evidence) for f in result.verdict.findings]
    # verdicts.toml stays honest: what it expects, the rules find
    assert set(result.hits) == set(sample.expect)


@pytest.mark.parametrize("sample", SPAM, ids=lambda s: s.path.name)
def test_the_pasted_footer_satisfies_the_footer_rules(sample: Sample) -> None:
    # policy: mailpro M-legal-notice, M-opt-out — recall is measured on what the message does, not on a missing footer
    hits = set(result_for(sample).hits)
    assert not hits.intersection(FOOTER_RULES), hits


def test_recall_on_spam_and_phishing_with_a_realistic_footer() -> None:
    # policy: mailpro M-code-of-conduct ("kwaadaardige inhoud"), clang E-misleiden
    spam = [result_for(s) for s in SPAM]
    recall = sum(r.blocked for r in spam) / len(spam)
    missed = [r.sample.path.name for r in spam if not r.blocked]
    print(f"\nrecall on {len(spam)} spam/phishing samples: {recall:.2f}; missed: {', '.join(missed)}")
    assert recall >= RECALL_FLOOR, missed


def test_german_newsletters_unsubscribe_wording_is_understood() -> None:
    # policy: mailpro M-opt-out, clang E-afmeldproces — "Um den Newsletter abzubestellen, klicken Sie bitte
    # hier" and "... können Sie sich auf dieser Webseite abmelden:" with the address on the next line
    german = [result_for(s) for s in LEGIT if s.lang == "de"]
    assert len(german) >= 2
    assert all("optout.missing" not in r.hits for r in german), [r.sample.path.name for r in german]


def test_docs_corpus_results_is_the_current_table() -> None:
    assert RESULTS.read_text("utf-8") == table(list(results())), (
        "run `.venv/bin/python tests/policies/real_corpus.py --write` and commit docs/corpus-results.md"
    )
