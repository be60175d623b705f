"""The contract lives in the repository: docs/ generated from the code stays in step with it, every
`SPEC §` the code cites is a section of docs/SPEC.md, and every link of the docs resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
GENERATOR = REPO / "scripts" / "gen-docs.py"
SOURCE_SUFFIXES = {".py", ".toml", ".yml", ".yaml", ".sh", ".c", ".h", ".md", ".json", ".html", ".cfg"}


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]


def spec_sections() -> set[str]:
    return set(re.findall(r"^## (\d+)\. ", (DOCS / "SPEC.md").read_text(), re.M))


def test_generated_reference_docs_match_the_code() -> None:
    """docs/configuration.md, cli.md, metrics.md and replies.md are what scripts/gen-docs.py makes
    of the code now: a new config key, command, metric, reply or rule without `make docs` fails."""
    done = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_configuration_reference_lists_every_key_the_loader_accepts() -> None:
    text = (DOCS / "configuration.md").read_text()
    gen = _load_generator()
    for table, _ in gen.tables():
        heading = gen.INLINE_LISTS.get(table) or (f"[[{table}]]" if table in gen.ARRAYS else f"[{table}]")
        assert f"## `{heading}`" in text, f"no section for {table} in docs/configuration.md"
        section = text.split(f"## `{heading}`", 1)[1].split("\n## ", 1)[0]
        for key in gen.accepted_keys(table):
            assert f"| `{key}` |" in section, f"{table}.{key} is not in docs/configuration.md"


def _load_generator():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_docs", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_contract_is_in_the_repository() -> None:
    for name in ("SPEC.md", "STYLE.md", "POLICY.md", "configuration.md", "replies.md", "cli.md", "metrics.md", "design.md"):
        assert (DOCS / name).is_file(), f"docs/{name} missing"


def test_every_spec_reference_points_into_docs() -> None:
    sections = spec_sections()
    assert {"4", "12"} <= sections
    bare, dangling = [], []
    for path in tracked_files():
        if path.suffix not in SOURCE_SUFFIXES or path in (DOCS / "SPEC.md", Path(__file__).resolve()):
            continue
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for match in re.finditer(r"(docs/)?SPEC(\.md)? ?§ ?(\d+)", line):
                where = f"{path.relative_to(REPO)}:{number}"
                if path.parent == DOCS and match[1] is None:
                    pass  # inside docs/ a plain "SPEC.md §4" is a sibling reference
                elif match[1] is None:
                    bare.append(f"{where}: {match[0]}")
                if match[3] not in sections:
                    dangling.append(f"{where}: {match[0]}")
            for match in re.finditer(r"\bSTYLE(?:\.md)?\b(?![_A-Z])", line):
                if path.suffix == ".py" and "docs/STYLE.md" not in line and "STYLE.md" not in line:
                    continue  # STYLE as a word in code (CSS and the like)
                if path.parent != DOCS and "docs/STYLE.md" not in line:
                    bare.append(f"{path.relative_to(REPO)}:{number}: {match[0]}")
    assert bare == [], "references to the contract outside docs/: write docs/SPEC.md §N / docs/STYLE.md"
    assert dangling == [], "references to SPEC sections that docs/SPEC.md does not have"


@pytest.mark.parametrize("doc", ["README.md", *[f"docs/{p.name}" for p in sorted(DOCS.glob("*.md"))], "deploy/README.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = REPO / doc
    text = path.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        if not (path.parent / target).exists():
            missing.append(target)
    assert missing == [], f"{doc} links to missing files"
