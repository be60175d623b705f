"""The rule registry: ids unique, each documented in POLICY.md, each with a test citing its clause."""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

from policies.registry import ALL_RULES, RULES_BY_ID
from policies.rule import Rule

REPO = Path(__file__).resolve().parents[2]
# The project keeps its own copy of the catalogue (../shared/POLICY.md), so a clone alone can run this.
POLICY_MD = REPO / "docs" / "POLICY.md"
TESTS = REPO / "tests"


def test_rule_ids_are_unique_and_well_formed() -> None:
    ids = [r.id for r in ALL_RULES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert RULES_BY_ID.keys() == set(ids)
    for r in ALL_RULES:
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", r.id), r.id
        assert r.description.strip() and r.clauses, r.id


@pytest.mark.parametrize("rule_id", sorted(RULES_BY_ID))
def test_rule_is_documented_in_policy_md(rule_id: str) -> None:
    assert f"`{rule_id}`" in POLICY_MD.read_text(encoding="utf-8"), f"{rule_id} is not in POLICY.md"


def _policy_comments(source: str) -> list[tuple[int, str]]:
    comments = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.string.lstrip("# ").lower().startswith("policy:"):
            comments.append((token.start[0], token.string.split(":", 1)[1].strip()))
    return comments


def _python_names() -> dict[str, set[str]]:
    """Rule id -> the module-level names its Rule object is bound to (tests may call `adult.check`)."""
    names: dict[str, set[str]] = {r.id: set() for r in ALL_RULES}
    for family in {r.check.__module__ for r in ALL_RULES}:
        for name, value in vars(importlib.import_module(family)).items():
            if isinstance(value, Rule) and value.id in names:
                names[value.id].add(name)
    return names


def _cited_tests() -> list[tuple[str, str, set[str], list[str]]]:
    """(test, its source, identifiers it uses, its `# policy:` comments) for every test function under tests/."""
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        source = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source)
            comments = _policy_comments(source)
        except (SyntaxError, tokenize.TokenError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])  # parametrize names rules too
                end = node.end_lineno or node.lineno
                cited = [text for line, text in comments if start <= line <= end]
                if cited:
                    segment = "\n".join(source.splitlines()[start - 1 : end])
                    used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                    used |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                    found.append((f"{path.relative_to(REPO)}::{node.name}", segment, used, cited))
    return found


def _cites(comment: str, rule: Rule) -> bool:
    text = comment.lower()
    for clause in rule.clauses:
        clause = clause.lower()
        if clause in text or re.sub(r"^[me]-", "", clause) in text:
            return True
    return False


CITED = _cited_tests()
NAMES = _python_names()


@pytest.mark.parametrize("rule_id", sorted(RULES_BY_ID))
def test_rule_has_a_test_citing_its_clause(rule_id: str) -> None:
    rule = RULES_BY_ID[rule_id]
    citing = [
        name for name, segment, used, comments in CITED
        if (rule_id in segment or used & NAMES[rule_id]) and any(_cites(c, rule) for c in comments)
    ]
    assert citing, f"no test names {rule_id} with a `# policy:` comment citing one of {rule.clauses}"
