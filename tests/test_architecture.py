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
    """relay.http.common.form_body/json_body turn a body the client got wrong into a 400; a handler
    calling request.post() or request.json() itself would answer the same mistake with a 500."""
    calls = []
    for path in sorted((REPO / "relay").rglob("*.py")):
        if path.relative_to(REPO).as_posix() == "relay/http/common.py":
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


# --- import circles -----------------------------------------------------------------------------
#
# Every import between relay/ modules is an edge, wherever it is written: at module level, inside a
# function (a circle "broken" that way still means two modules that need each other), and under
# `if TYPE_CHECKING:` (a circle of types is one of design too). A circle found is a test failure.

RELAY_FILES = sorted((REPO / "relay").rglob("*.py"))

# Circles that other branches of issue 17 are taking apart, as the imports that close them. Shrink
# it: an entry whose import is gone, or no longer closes a circle, fails the test until removed.
ALLOWED_CIRCLE_EDGES: set[tuple[str, str]] = set()  # empty since branches `sql` and `web` merged: keep it so


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def relay_import_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """module -> the relay modules it imports. `files`: module name -> source. `from pkg import name`
    is an edge to pkg.name when that is a module, else to pkg; importing a submodule is not counted
    as importing its package's __init__ (every submodule would otherwise be on a circle with it)."""
    names = set(files)

    def known(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    packages = {n.rpartition(".")[0] for n in names}
    graph: dict[str, set[str]] = {}
    for module, source in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets.update(t for alias in node.names if (t := known(alias.name)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package (a package's own __init__ is in it)
                    anchor = module if module in packages else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}".rstrip(".") if base else anchor
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else known(base)
                    if target:
                        targets.add(target)
        graph[module] = targets - {module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def relay_graph() -> dict[str, set[str]]:
    # every module: RELAY_FILES is redefined further down without replies.py
    return relay_import_graph({module_name(p): p.read_text(encoding="utf-8") for p in (REPO / "relay").rglob("*.py")})


def test_no_import_circles_among_relay_modules() -> None:
    graph = relay_graph()
    for importer, imported in ALLOWED_CIRCLE_EDGES:
        graph.get(importer, set()).discard(imported)
    assert circles(graph) == [], "import circles (module groups that import each other)"


def test_the_allowed_circles_only_shrink() -> None:
    graph = relay_graph()
    stale = []
    for edge in sorted(ALLOWED_CIRCLE_EDGES):
        importer, imported = edge
        if imported not in graph.get(importer, ()):
            stale.append(f"{importer} no longer imports {imported}")
            continue
        if not any(importer in c and imported in c for c in circles(graph)):
            stale.append(f"{importer} -> {imported} closes no circle any more")
    assert not stale, f"remove from ALLOWED_CIRCLE_EDGES: {stale}"


def test_the_circle_check_sees_every_kind_of_import() -> None:
    files = {
        "relay.a": "from relay import b\n",
        "relay.b": "def late():\n    from relay.c import thing\n",
        "relay.c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import relay.a\n",
        "relay.d": "from relay.a import x\nfrom . import e\n",
        "relay.e": "",
        "relay": "",
    }
    graph = relay_import_graph(files)
    assert graph["relay.a"] == {"relay.b"} and graph["relay.b"] == {"relay.c"} and graph["relay.c"] == {"relay.a"}
    assert graph["relay.d"] == {"relay.a", "relay.e"}
    assert circles(graph) == [["relay.a", "relay.b", "relay.c"]]
    del files["relay.c"]
    assert circles(relay_import_graph(files)) == []



# --- one-way arrows between relay/ packages ---------------------------------------------------------
#
# The same imports, read one level up: relay/store, relay/http, relay/web… are the nodes; a package
# imports another when any of its modules does (at module level, in a function, under TYPE_CHECKING).
# Two packages that import each other through different modules have no module circle, yet neither
# can be understood, tested or moved without the other. The top-level modules (relay/assembly.py,
# relay/routes.py, relay/config.py…) are not packages: wiring at the top, tools at the bottom.

ALLOWED_TWO_WAY_PACKAGES: set[frozenset[str]] = set()  # empty since branch `arrows`: keep it so


_RELAY_PACKAGES = {module_name(p) for p in RELAY_FILES if p.name == "__init__.py"}


def package_graph(graph: dict[str, set[str]], packages: set[str] | None = None) -> dict[str, dict[str, set[str]]]:
    """package -> package it imports -> the module imports ("a -> b") that make that arrow."""
    known = _RELAY_PACKAGES if packages is None else packages

    def of(module: str) -> str | None:
        parts = module.split(".")
        if len(parts) >= 3 or (len(parts) == 2 and module in known):  # relay/__init__.py is the root, no node
            return ".".join(parts[:2])
        return None

    arrows: dict[str, dict[str, set[str]]] = {}
    for importer, imported in graph.items():
        source = of(importer)
        if source is None:
            continue
        arrows.setdefault(source, {})
        for target in imported:
            dest = of(target)
            if dest is not None and dest != source:
                arrows[source].setdefault(dest, set()).add(f"{importer} -> {target}")
    return arrows


def two_way_pairs(arrows: dict[str, dict[str, set[str]]]) -> list[str]:
    found = []
    for a in sorted(arrows):
        for b in sorted(arrows[a]):
            if a < b and a in arrows.get(b, {}) and frozenset((a, b)) not in ALLOWED_TWO_WAY_PACKAGES:
                found.append(f"{a} <-> {b}: {sorted(arrows[a][b])} / {sorted(arrows[b][a])}")
    return found


def test_relay_packages_import_each_other_one_way() -> None:
    """The package graph of relay/ is a DAG: no two packages import each other, no longer cycle either."""
    arrows = package_graph(relay_graph())
    assert {"relay.store", "relay.http", "relay.web", "relay.engine"} <= arrows.keys()
    assert "relay.store" in arrows["relay.engine"]  # the walk sees arrows at all
    pairs = two_way_pairs(arrows)
    assert not pairs, "packages that import each other:\n" + "\n".join(pairs)
    nodes = {a: set(b) for a, b in arrows.items()}
    for pair in ALLOWED_TWO_WAY_PACKAGES:
        a, b = sorted(pair)
        nodes[a].discard(b)
    assert circles(nodes) == [], f"package cycles: {circles(nodes)}"


def test_packages_and_top_level_modules_together_import_one_way() -> None:
    """Read as nodes of the same graph, the top-level modules (services, outgoing, config, ...) and
    the packages form a DAG too: a top-level module every package imports must not reach back into
    one (relay/outgoing.py is typed by protocols, the Feature protocol lives in relay/engine)."""
    graph = relay_graph()
    nodes = {".".join(module.split(".")[:2]) for module in graph if module.count(".") >= 1}
    assert {"relay.services", "relay.outgoing", "relay.engine"} <= nodes
    arrows = package_graph(graph, nodes)
    pairs = two_way_pairs(arrows)
    assert not pairs, "import each other:\n" + "\n".join(pairs)
    assert circles({a: set(b) for a, b in arrows.items()}) == []


def test_the_allowed_two_way_packages_only_shrink() -> None:
    arrows = package_graph(relay_graph())
    stale = [sorted(p) for p in ALLOWED_TWO_WAY_PACKAGES if not all(b in arrows.get(a, {}) for a, b in (sorted(p), sorted(p)[::-1]))]
    assert not stale, f"remove from ALLOWED_TWO_WAY_PACKAGES: {stale}"


def test_the_package_check_sees_pairs_and_cycles_through_any_import() -> None:
    files = {
        "relay": "",
        "relay.config": "import relay.a.x\n",  # a top-level module: no node
        "relay.a": "", "relay.a.x": "from relay.b import y\n",
        "relay.b": "", "relay.b.y": "", "relay.b.z": "def late():\n    from relay.a.x import thing\n",
        "relay.c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.a import x\n",
        "relay.d": "", "relay.d.w": "from relay.c import C\n",
    }
    packages = {"relay.a", "relay.b", "relay.c", "relay.d"}
    arrows = package_graph(relay_import_graph(files), packages)
    assert {a: sorted(b) for a, b in arrows.items()} == {
        "relay.a": ["relay.b"], "relay.b": ["relay.a"], "relay.c": ["relay.a"], "relay.d": ["relay.c"],
    }
    assert two_way_pairs(arrows) == ["relay.a <-> relay.b: ['relay.a.x -> relay.b.y'] / ['relay.b.z -> relay.a.x']"]
    files["relay.b.z"] = "from relay.d import w\n"  # a -> b -> d -> c -> a: no pair, one cycle
    arrows = package_graph(relay_import_graph(files), packages)
    assert two_way_pairs(arrows) == []
    assert circles({a: set(b) for a, b in arrows.items()}) == [["relay.a", "relay.b", "relay.c", "relay.d"]]

# --- explicit wiring (relay/assembly.py) ------------------------------------------------------------

WIRING_ATTRIBUTES = {"pipeline", "services", "outbox", "relay"}


def test_no_relay_module_is_loaded_by_name() -> None:
    """A module loaded by name with a silent skip drops a feature when it is renamed: imports only."""
    calls = []
    for path in RELAY_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
            ):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node.func)}()")
    assert not calls, calls


def patched_parts(source: str) -> list[str]:
    """Assignments to, and appends onto, attributes of another object's pipeline, services, outbox or
    relay (`relay.pipeline.copy_builder = …`, `x.pipeline.hooks.append(…)`, `x.services.signer = …`)."""

    def reaches_part(node: ast.expr) -> bool:
        # the changed attribute is on an object reached through a wiring attribute of something else
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            inner = node.value
            if isinstance(inner, ast.Attribute) and inner.attr in WIRING_ATTRIBUTES:
                return True
            if isinstance(inner, ast.Name) and inner.id == "relay" and isinstance(node, ast.Attribute):
                return True
            node = inner
        return False

    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("append", "extend", "update"):
            targets = [node.func.value]
        found += [f"{node.lineno}: {ast.unparse(t)}" for t in targets if isinstance(t, (ast.Attribute, ast.Subscript)) and reaches_part(t)]
    return found


def test_parts_are_handed_over_in_constructors_not_patched_in() -> None:
    patched = [f"{p.relative_to(REPO)}:{line}" for p in RELAY_FILES for line in patched_parts(p.read_text(encoding="utf-8"))]
    assert not patched, patched


def test_the_patching_check_sees_the_old_wiring() -> None:
    old = (
        "relay.pipeline.copy_builder = CopyMaker()\n"
        "relay.pipeline.own_mail['fbl'] = handle\n"
        "relay.pipeline.extra_facts.append(scan)\n"
        "self.services.pipeline = self.pipeline\n"
        "relay.copy_signer = signer\n"
        "self.offload.busy += 1\n"  # a part's own counter, kept by its owner: fine
    )
    assert sorted(line.partition(":")[0] for line in patched_parts(old)) == ["1", "2", "3", "4", "5"]


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
    from relay.engine.pipeline import UNKNOWN_STREAM
    from relay.metrics import NO_VALUE

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
