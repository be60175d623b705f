"""Every corpus message through the whole core, printed as JSON: what it parsed (text, hidden text,
links, words) and what the rules found. tests/policies/test_pure_python_passes.py runs it twice, with
the C passes and with them blocked, and compares.

    python tests/policies/pure_python_findings.py [--pure-python]

--pure-python blocks the extension before policies is imported (sys.modules["policies._speedups"] =
None makes its import fail, as on a machine where it was never built).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if "--pure-python" in sys.argv:
    sys.modules["policies._speedups"] = None  # type: ignore[assignment]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from factories import CORPUS, corpus_facts, evaluate  # noqa: E402
from policies import _passes  # noqa: E402
from real_corpus import load_samples  # noqa: E402
from real_corpus import evaluate as evaluate_real  # noqa: E402
from real_corpus import paste_footer  # noqa: E402

from policies.message import ParsedMessage, parse_message  # noqa: E402


def parsed(message: ParsedMessage) -> dict[str, object]:
    return {
        "text": message.text,
        "hidden": message.hidden_text,
        "folded": message.folded_text,
        "links": [list(link) for link in message.links],
        "words": sorted(message.words),
    }


def findings(verdict: object) -> list[list[str]]:
    return [[f.rule, f.detail, str(f.evidence)] for f in verdict.findings]  # type: ignore[attr-defined]


def main() -> int:
    out: dict[str, object] = {"native": _passes.NATIVE, "messages": {}}
    messages: dict[str, object] = out["messages"]  # type: ignore[assignment]
    for path in sorted(CORPUS.glob("*.eml")):
        facts = corpus_facts(path)
        assert facts.message is not None
        messages[path.name] = {"parsed": parsed(facts.message), "findings": findings(evaluate(facts))}
    for sample in load_samples():
        raw = sample.path.read_bytes()
        message = parse_message(paste_footer(raw) if sample.kind == "spam" else raw)
        result = evaluate_real(sample)
        messages[f"real/{sample.kind}/{sample.path.name}"] = {
            "parsed": parsed(message),
            "findings": findings(result.verdict),
            "outcome": result.verdict.outcome.name,
        }
    json.dump(out, sys.stdout, ensure_ascii=False, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
