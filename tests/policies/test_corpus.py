"""The corpus: realistic clean marketing mails pass every rule; each bad one hits exactly its rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import CORPUS, corpus_facts, evaluate
from policies.findings import Outcome

CLEAN = sorted(CORPUS.glob("clean-*.eml"))
BAD = sorted(CORPUS.glob("bad-*.eml"))


def test_corpus_is_there() -> None:
    assert len(CLEAN) >= 6 and len(BAD) >= 12
    expected = {path.name.removeprefix("bad-").rsplit("-", 1)[0] for path in BAD}
    assert expected == {
        "identity.no_reply",
        "identity.from_name_mismatch",
        "identity.legal_notice_missing",
        "identity.postal_address_missing",
        "optout.missing",
        "content.offensive_subject",
        "content.misleading_subject",
        "content.hateful",
        "content.adult",
        "content.infringing_links",
        "content.personal_data",
        "content.malware",
    }


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.name)
def test_clean_mail_has_zero_findings_under_strict(path: Path) -> None:
    # policy: mailpro M-legal-notice, M-opt-out, M-code-of-conduct; clang E-no-reply, E-misleiden — no false positives
    verdict = evaluate(corpus_facts(path))
    assert verdict.findings == ()
    assert verdict.outcome is Outcome.DELIVER


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_mail_hits_exactly_its_rule(path: Path) -> None:
    # policy: every rule of POLICY.md's identity, opt-out and content tables, by the rule id in the file name
    expected = path.name.removeprefix("bad-").rsplit("-", 1)[0]
    verdict = evaluate(corpus_facts(path))
    assert verdict.rule_ids == (expected,)
    assert verdict.outcome is not Outcome.DELIVER
