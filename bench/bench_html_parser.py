"""A real HTML parser (selectolax's Lexbor, or lxml) in place of the C passes of policies/_speedups.c
(issue 17): does it read the corpus the same (visible text, hidden text, links) and how fast is it?

    .venv/bin/pip install selectolax lxml            # the `bench` extra of pyproject.toml
    .venv/bin/python -m bench.bench_html_parser [--rounds 200]

Each parser gets the same job as _speedups.html_to_text: the visible text (scripts, styles, head,
comments dropped; block elements as line breaks; an image as its alt text), the text of elements
styled display:none / visibility:hidden / mso-hide:all apart, and each anchor's span in the text;
whitespace is then normalised exactly as the C passes do. Correctness is counted twice: HTML parts
whose (text, hidden text, anchors) equal the C passes' exactly, and messages whose findings (every
rule, profile strict) are the same when the whole core runs on the parser.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "policies"))

import policies.message  # noqa: E402
import policies.rules.content  # noqa: E402
from policies import _passes_py  # noqa: E402
from policies._passes import NATIVE, passes  # noqa: E402

from bench.bench_policy import passes_swapped  # noqa: E402

_DROP = ("script", "style", "head", "title", "noscript", "template", "object", "iframe")
_BLOCK = frozenset(
    "br hr p div tr td th li h1 h2 h3 h4 h5 h6 table tbody thead ul ol blockquote center section article".split()
)
# the C passes break the line at the close tag of these too (not br, hr: void elements)
_BLOCK_CLOSE = _BLOCK - {"br", "hr"}
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all", re.I)
_OPEN, _CLOSE = "\x01", "\x02"


def _normalise(raw: str) -> str:
    """_markup_to_text's whitespace steps, on text a parser already freed of tags and entities."""
    for char in _passes_py._INVISIBLE_CHARS:
        raw = raw.replace(char, "")
    for char in _passes_py._OTHER_SPACES:
        raw = raw.replace(char, " ")
    raw = _passes_py._SPACE_RUN.sub(" ", raw)
    raw = raw.replace(" \n", "\n").replace("\n ", "\n")
    return _passes_py._NEWLINE_RUN.sub("\n", raw).strip()


def _spans(marked: str, hrefs: list[str]) -> tuple[str, list[tuple[str, int, int]]]:
    """Text without the anchor marks and (href, start, end) of each anchor: as _html_to_text does."""
    parts = _passes_py._MARK_SPLIT.split(marked)
    pieces, marks = parts[0::2], parts[1::2]
    offsets = [0]
    for piece in pieces:
        offsets.append(offsets[-1] + len(piece))
    spans: list[tuple[str, int, int]] = []
    stack: list[tuple[str, int]] = []
    index = 0
    for k, mark in enumerate(marks):
        at = offsets[k + 1]
        if mark == _OPEN:
            stack.append((hrefs[index], at))
            index += 1
        elif stack:
            href, start = stack.pop()
            spans.append((href, start, at))
    spans.sort(key=lambda s: s[1])
    return "".join(pieces), spans


def _render(walk: Callable[[list[str], list[str], list[str]], None]) -> tuple[str, str, list[tuple[str, int, int]]]:
    out: list[str] = []
    hidden: list[str] = []
    hrefs: list[str] = []
    walk(out, hidden, hrefs)
    text, spans = _spans(_normalise("".join(out)), hrefs)
    return text, "\n".join(_normalise(h) for h in hidden), spans


# --- selectolax (Lexbor) ----------------------------------------------------------------------------


def lexbor_html_to_text(markup: str) -> tuple[str, str, list[tuple[str, int, int]]]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(markup.replace(_OPEN, "").replace(_CLOSE, ""))
    root = tree.root

    def walk(out: list[str], hidden: list[str], hrefs: list[str]) -> None:
        if root is None:
            return
        stack: list[Any] = [(root, False)]
        while stack:
            node, leaving = stack.pop()
            if leaving:
                if node.tag == "a":
                    out.append(_CLOSE)
                if node.tag in _BLOCK_CLOSE:
                    out.append("\n")
                continue
            tag = node.tag
            if tag == "-text":
                out.append(node.text_content or "")
                continue
            if tag in _DROP or tag == "_comment" or tag == "-comment":
                continue
            style = node.attributes.get("style") if tag not in ("-document", "html") else None
            if style and _HIDDEN.search(style):
                inner: list[str] = []
                _lexbor_text(node, inner)
                hidden.append("".join(inner))
                continue
            if tag in _BLOCK:
                out.append("\n")
            if tag == "img":
                alt = node.attributes.get("alt")
                if alt is not None:
                    out.append(f"\n{alt} ")
            href = node.attributes.get("href") if tag == "a" else None
            if href is not None:
                hrefs.append(href.strip())
                out.append(_OPEN)
            if href is not None or tag in _BLOCK_CLOSE:
                stack.append((node, True))
            children = list(node.iter(include_text=True))
            stack.extend((child, False) for child in reversed(children))

    return _render(walk)


def _lexbor_text(node: Any, out: list[str]) -> None:
    for child in node.iter(include_text=True):
        if child.tag == "-text":
            out.append(child.text_content or "")
        elif child.tag not in _DROP:
            if child.tag in _BLOCK:
                out.append("\n")
            _lexbor_text(child, out)


# --- lxml ---------------------------------------------------------------------------------------------


def lxml_html_to_text(markup: str) -> tuple[str, str, list[tuple[str, int, int]]]:
    import lxml.html
    from lxml import etree

    cleaned = markup.replace(_OPEN, "").replace(_CLOSE, "")
    try:
        root = lxml.html.document_fromstring(cleaned) if cleaned.strip() else None
    except (etree.ParserError, ValueError):
        root = None

    def walk(out: list[str], hidden: list[str], hrefs: list[str]) -> None:
        if root is None:
            return

        def visit(el: Any) -> None:
            tag = el.tag if isinstance(el.tag, str) else ""
            if not tag or tag in _DROP:
                out.append(el.tail or "")
                return
            style = el.get("style")
            if style and _HIDDEN.search(style):
                hidden.append("\n".join(el.itertext()))
                out.append(el.tail or "")
                return
            if tag in _BLOCK:
                out.append("\n")
            if tag == "img" and el.get("alt") is not None:
                out.append(f"\n{el.get('alt')} ")
            anchor = tag == "a" and el.get("href") is not None
            if anchor:
                hrefs.append(el.get("href").strip())
                out.append(_OPEN)
            out.append(el.text or "")
            for child in el:
                visit(child)
            if anchor:
                out.append(_CLOSE)
            if tag in _BLOCK_CLOSE:
                out.append("\n")
            out.append(el.tail or "")

        visit(root)

    return _render(walk)


# --- comparison -----------------------------------------------------------------------------------------


def c_html_to_text(markup: str) -> tuple[str, str, list[tuple[str, int, int]]]:
    return passes.html_to_text(markup)


def with_offset(convert: Callable[[str], tuple[str, str, list[tuple[str, int, int]]]]) -> Callable[..., Any]:
    def html_to_text(markup: str, offset: int | None = None) -> Any:
        text, hidden, spans = convert(markup)
        if offset is None:
            return text, hidden, spans
        return text, hidden, [(href, text[s:e].strip(), offset + s, offset + e) for href, s, e in spans]

    return html_to_text


def core_on(convert: Callable[[str], Any]) -> contextlib.AbstractContextManager[None]:
    """The whole core with `convert` as its HTML pass (the other passes stay)."""
    shim = type(sys)("shim")
    for name in ("words", "urls", "fold", "qp_decode", "number_windows"):
        setattr(shim, name, getattr(passes, name))
    shim.html_to_text = with_offset(convert)  # type: ignore[attr-defined]
    return passes_swapped(shim)


def corpus_messages() -> list[tuple[str, bytes]]:
    from real_corpus import load_samples, paste_footer

    corpus = ROOT / "tests" / "corpus"
    out = [(p.name, p.read_bytes()) for p in sorted(corpus.glob("*.eml"))]
    for sample in load_samples():
        raw = sample.path.read_bytes()
        out.append((f"real/{sample.path.name}", paste_footer(raw) if sample.kind == "spam" else raw))
    return out


def findings_of_corpus() -> dict[str, list[tuple[str, str]]]:
    from factories import CORPUS, corpus_facts, evaluate
    from real_corpus import evaluate as evaluate_real
    from real_corpus import load_samples

    out: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(CORPUS.glob("*.eml")):
        out[path.name] = [(f.rule, str(f.evidence)) for f in evaluate(corpus_facts(path)).findings]
    for sample in load_samples():
        out[f"real/{sample.path.name}"] = [(f.rule, str(f.evidence)) for f in evaluate_real(sample).verdict.findings]
    return out


def cpu_ms(convert: Callable[[str], Any], pages: list[str]) -> float:
    start = time.thread_time_ns()
    for page in pages:
        convert(page)
    return (time.thread_time_ns() - start) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    if not NATIVE:
        print("the C extension is not built: nothing to compare against", file=sys.stderr)
        return 2
    from bench.bench_policy import newsletter

    pages = [page for _, raw in corpus_messages() for page in policies.message.parse_message(raw).html_parts]
    marketing = policies.message.parse_message((ROOT / "bench" / "message.eml").read_bytes()).html_parts
    letter = policies.message.parse_message(newsletter()).html_parts
    parsers = {
        "lexbor (selectolax)": lexbor_html_to_text,
        "lxml": lxml_html_to_text,
        "pure Python (fallback)": _passes_py._html_to_text,
    }
    baseline = findings_of_corpus()
    print(f"{len(pages)} HTML parts in the corpus (tests/corpus and tests/corpus/real, {len(baseline)} messages)")
    print(f"{'parser':<24} {'parts same':>11} {'text same':>10} {'links same':>11} {'hidden same':>12} {'messages, same findings':>24}")
    for name, convert in parsers.items():
        same = text = links = hidden = 0
        for page in pages:
            want, got = c_html_to_text(page), convert(page)
            same += want == got
            text += want[0] == got[0]
            hidden += want[1] == got[1]
            links += [h for h, _, _ in want[2]] == [h for h, _, _ in got[2]]
        with core_on(convert):
            found = findings_of_corpus()
        agree = sum(found[k] == baseline[k] for k in baseline)
        differ = [k for k in baseline if found[k] != baseline[k]]
        print(f"{name:<24} {same:>11} {text:>10} {links:>11} {hidden:>12} {agree:>17} of {len(baseline)}"
              + (f"  (differ: {', '.join(differ[:6])}{' …' if len(differ) > 6 else ''})" if differ else ""))

    print(f"\nCPU ms for the HTML pass alone, {args.rounds} rounds alternating, median (ratio to the C passes):")
    print(f"{'pages':<30} {'C':>7} " + " ".join(f"{n:>24}" for n in parsers))
    for label, group, rounds in (
        ("corpus (all HTML parts)", pages, max(5, args.rounds // 20)),
        ("bench/message.eml", marketing, args.rounds),
        ("generated 100 KB newsletter", letter, max(20, args.rounds // 4)),
    ):
        times: dict[str, list[float]] = {"C": [], **{n: [] for n in parsers}}
        for _ in range(rounds):
            times["C"].append(cpu_ms(c_html_to_text, group))
            for n, convert in parsers.items():
                times[n].append(cpu_ms(convert, group))
        c = statistics.median(times["C"])
        cells = " ".join(f"{statistics.median(times[n]):>15.3f} ({statistics.median(times[n]) / c:>5.1f}x)" for n in parsers)
        print(f"{label:<30} {c:>7.3f} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
