"""The dependency direction (docs/STYLE.md): policies/ is a pure core that imports nothing from relay/,
does no I/O and reads no clock."""

from __future__ import annotations

import ast
import re
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


# --- markup only in templates ------------------------------------------------------------------------

WEB_FILES = sorted(
    {*(REPO / "relay" / "web").rglob("*.py"), *(REPO / "relay").glob("http_*.py"), *(REPO / "relay").glob("http/**/*.py")}
)
# An opening or closing tag, or the start of one that an f-string goes on to fill: "<td", "</b>", "<br>".
HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(?=[\s/>]|$)")


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def markup_in_code(source: str) -> list[str]:
    tree = ast.parse(source)
    skip = docstrings(tree)
    found = [
        f"line {node.lineno}: {node.value[:60]!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        and HTML_TAG.search(node.value)
    ]
    for node in ast.walk(tree):  # f"<{name} ...>": the tag's name itself filled in
        if isinstance(node, ast.JoinedStr):
            for part, following in zip(node.values, node.values[1:]):
                if isinstance(part, ast.Constant) and str(part.value).endswith(("<", "</")) and isinstance(following, ast.FormattedValue):
                    found.append(f"line {node.lineno}: a tag named by an f-string")
    return found


def test_there_are_web_modules() -> None:
    assert len(WEB_FILES) > 5 and any(p.name == "ui.py" for p in WEB_FILES)


@pytest.mark.parametrize("path", WEB_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_web_modules_build_no_html_in_strings(path: Path) -> None:
    """HTML comes from the autoescaping templates (relay/web/templates); markup in a Python string is
    where one forgotten escape() becomes an XSS."""
    assert not markup_in_code(path.read_text(encoding="utf-8")), markup_in_code(path.read_text(encoding="utf-8"))


def test_the_markup_check_catches_an_f_string_tag() -> None:
    source = '"""A <b>docstring</b> may show markup."""\ndef f(x):\n    """So may <i>this</i>."""\n    return f\'<td class="a">{x}</td>\'\n'
    assert [m.split(":")[0] for m in markup_in_code(source)] == ["line 4", "line 4"]
    assert markup_in_code('a = "<br>"\n') and markup_in_code("a = '</section>'\n")
    assert markup_in_code("def tag(name):\n    return f'<{name}>'\n") and markup_in_code("x = f'</{n}>'\n")
    assert not markup_in_code('to = "Anna <anna@example.nl>"\nlimit = "a < b"\nx = "1<2"\ny = f"{a} < {b}"\n')


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the modules of `sources` it imports anywhere: top level, under TYPE_CHECKING, in a function."""
    graph: dict[str, set[str]] = {}
    for module, text in sources.items():
        found = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from relay.web import ui_base` imports the module relay.web.ui_base, not relay.web's names
                names = {f"{node.module}.{alias.name}" for alias in node.names}
                found |= names if names <= sources.keys() else names | {node.module}
        graph[module] = {m for m in found if m in sources and m != module}
    return graph


def package_imports(package: str) -> dict[str, set[str]]:
    """A package's modules and which of each other they import."""
    files = [p for p in REPO.joinpath(*package.split(".")).glob("*.py") if p.stem != "__init__"]
    return import_graph({f"{package}.{p.stem}": p.read_text(encoding="utf-8") for p in files})


def web_imports() -> dict[str, set[str]]:
    return package_imports("relay.web")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                walk(nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_web_modules_import_each_other_without_a_circle() -> None:
    graph = web_imports()
    assert "relay.web.ui_base" in graph["relay.web.ui_complaints"]
    assert not cycles(graph), cycles(graph)


def test_the_circle_check_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_store_modules_import_each_other_without_a_circle() -> None:
    """An import circle broken by an import inside a function is a sign two modules are one job or a third
    one is missing (docs/STYLE.md): relay/store has none, even under TYPE_CHECKING."""
    graph = package_imports("relay.store")
    assert len(graph) > 10 and "relay.store.sql" in graph["relay.store.tables"]
    assert not cycles(graph), cycles(graph)


def test_the_circle_check_finds_a_circle_through_a_function_import() -> None:
    sources = {
        "relay.store.a": "from relay.store import b\n",
        "relay.store.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.store.c import C\n",
        "relay.store.c": "def f():\n    from relay.store.a import x\n",
    }
    assert cycles(import_graph(sources)) == [["relay.store.a", "relay.store.b", "relay.store.c", "relay.store.a"]]

# --- every SMTP reply the relay sends is a named constant or renderer in relay/replies.py ---

RELAY_FILES = sorted(p for p in (REPO / "relay").rglob("*.py") if p.name != "replies.py")
# an SMTP reply line: a code, then a space or a hyphen, then an enhanced code or aiosmtpd's capitalised wording
SMTP_REPLY = re.compile(r"^[2345]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\b|[A-Z<])")


def reply_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants (and the literal start of f-strings) shaped like an SMTP reply, docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    docstrings |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            text = node.values[0].value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        else:
            continue
        if isinstance(text, str) and SMTP_REPLY.match(text):
            found.append((node.lineno, text))
    return found


def test_there_are_relay_modules() -> None:
    assert len(RELAY_FILES) > 20


def test_smtp_replies_live_only_in_relay_replies() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} {text!r}"
        for path in RELAY_FILES
        for line, text in reply_literals(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not bad, "move these into relay/replies.py as named constants: " + "; ".join(bad)


def test_the_reply_check_catches_literals_and_f_strings_but_not_docstrings() -> None:
    source = (
        'def f(x):\n    """250 2.0.0 in a docstring is prose."""\n'
        '    a = "503 5.5.1 Error: need MAIL command"\n    b = f"250 2.0.0 Saved as {x}"\n'
        '    c = "552 Error: Too much mail data"\n    d = "250-PIPELINING"\n    e = "404 not a reply"\n'
    )
    assert [line for line, _ in reply_literals(ast.parse(source))] == [3, 4, 5, 6]


# --- one spelling of "no value" in a metric label: relay.metrics.NO_VALUE, never "" ---


def empty_label_values(tree: ast.AST) -> list[int]:
    """Lines of `.labels(...)` calls that could pass "": a "" anywhere in an argument (x or "", a if b else "")."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "labels"
        for arg in [*node.args, *(k.value for k in node.keywords)]
        if any(isinstance(part, ast.Constant) and part.value == "" for part in ast.walk(arg))
    ]


def test_metric_labels_never_spell_no_value_as_empty() -> None:
    from relay.metrics import NO_VALUE
    from relay.pipeline import UNKNOWN_STREAM

    assert NO_VALUE == UNKNOWN_STREAM == "unknown"
    bad = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted((REPO / "relay").rglob("*.py"))
        for line in empty_label_values(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not bad, 'use relay.metrics.NO_VALUE ("unknown") for a label without a value: ' + ", ".join(bad)


def test_the_label_check_catches_an_empty_string() -> None:
    source = 'm.labels(a, "", o)\nm.labels(a or "", o)\nm.labels(x.id if x else "", o)\nm.labels(a or NO_VALUE, o)\n'
    assert empty_label_values(ast.parse(source)) == [1, 2, 3]
