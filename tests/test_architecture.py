"""The dependency direction (docs/STYLE.md): policies/ is a pure core that imports nothing from relay/,
does no I/O and reads no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POLICY_FILES = sorted((REPO / "policies").rglob("*.py"))
# Modules that mean I/O, concurrency or a shell dependency: none belong in the pure core.
FORBIDDEN = {
    "relay", "socket", "ssl", "asyncio", "sqlite3", "aiosqlite", "asyncpg", "aiohttp", "aiosmtpd", "aiosmtplib",
    "smtplib", "subprocess", "threading", "multiprocessing", "requests", "urllib.request", "http", "dns",
    "structlog", "logging", "prometheus_client", "time", "random", "secrets", "os",
}
CLOCK_READS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_there_are_policy_modules() -> None:
    assert len(POLICY_FILES) > 5


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_policies_import_nothing_from_the_shell(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [
        f"{path.name}:{line} imports {module}"
        for line, module in imported_modules(tree)
        if module.split(".")[0] in FORBIDDEN or module in FORBIDDEN
    ]
    assert not bad, bad


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_policies_read_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        f"{path.name}:{node.lineno} calls .{node.func.attr}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_READS
    ]
    assert not calls, calls


def test_the_check_catches_a_relay_import() -> None:
    tree = ast.parse("from relay.store import base\nimport relay.config as c\n")
    assert [m for _, m in imported_modules(tree)] == ["relay.store", "relay.config"]


BODY_PARSERS = {"post", "json", "multipart", "text"}


def test_request_bodies_are_parsed_in_one_place() -> None:
    """relay.http_common.form_body/json_body turn a body the client got wrong into a 400; a handler
    calling request.post() or request.json() itself would answer the same mistake with a 500."""
    calls = []
    for path in sorted((REPO / "relay").rglob("*.py")):
        if path.name == "http_common.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in BODY_PARSERS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "request"
            ):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno} calls request.{node.func.attr}()")
    assert not calls, calls


def test_csv_files_are_written_only_through_the_escaping_writer() -> None:
    """Every CSV the relay writes for people (reports, exports) goes through relay.spreadsheet,
    which escapes cells a spreadsheet would run as formulas."""
    calls = []
    for path in sorted((REPO / "relay").rglob("*.py")):
        if path.name == "spreadsheet.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("writer", "DictWriter")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "csv"
            ):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno} calls csv.{node.func.attr}()")
    assert not calls, calls


def store_import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the modules of `sources` it imports anywhere: top level, under TYPE_CHECKING, in a function."""
    graph: dict[str, set[str]] = {}
    for module, text in sources.items():
        found = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from relay.store import base` imports the module relay.store.base, not relay.store's names
                names = {f"{node.module}.{alias.name}" for alias in node.names}
                found |= names if names <= sources.keys() else names | {node.module}
        graph[module] = {m for m in found if m in sources and m != module}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of imports (its modules in order, the first again at the end), or []."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return []
        for imported in sorted(graph[module]):
            if cycle := visit(imported, path + [module]):
                return cycle
        done.add(module)
        return []

    for module in sorted(graph):
        if cycle := visit(module, []):
            return cycle
    return []


def test_the_store_modules_import_each_other_one_way() -> None:
    """An import circle broken by an import inside a function is a sign two modules are one job or a third
    one is missing (docs/STYLE.md): relay/store has none, even under TYPE_CHECKING."""
    sources = {
        "relay.store." + path.stem if path.stem != "__init__" else "relay.store": path.read_text(encoding="utf-8")
        for path in sorted((REPO / "relay" / "store").glob("*.py"))
    }
    assert len(sources) > 10
    assert import_cycle(store_import_graph(sources)) == []


def test_the_cycle_check_finds_a_circle_through_a_function_import() -> None:
    sources = {
        "relay.store.a": "from relay.store import b\n",
        "relay.store.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.store.c import C\n",
        "relay.store.c": "def f():\n    from relay.store.a import x\n",
    }
    assert import_cycle(store_import_graph(sources)) == ["relay.store.a", "relay.store.b", "relay.store.c", "relay.store.a"]
