"""Run one in-process bench's `measure(rounds)` in two checkouts, alternating, for a same-run
ratio (each checkout with its own .venv). Used by bench_consent_rules and bench_content_share."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def in_tree(module: str, tree: Path, rounds: int) -> dict[str, float]:
    """`module.measure(rounds)` in a subprocess of `tree`'s own venv, with `tree` first on sys.path
    (the bench module itself comes from this checkout's bench/)."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(tree)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r});"
        f"import {module} as b; print(json.dumps(b.measure({rounds})))"
    )
    out = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True, cwd=tree
    )
    return json.loads(out.stdout)


def compare(module: str, cases: Sequence[str], base: Path, rounds: int, runs: int) -> None:
    """Alternate `base` and this checkout `runs` times each; print a table of the medians' ratio."""
    here: dict[str, list[float]] = {case: [] for case in cases}
    there: dict[str, list[float]] = {case: [] for case in cases}
    for run in range(runs):
        order = ((base, there), (ROOT, here)) if run % 2 == 0 else ((ROOT, here), (base, there))
        for tree, into in order:
            result = in_tree(module, tree, rounds)
            for case in cases:
                into[case].append(result[case])
            print(f"run {run + 1} {tree.name}: " + ", ".join(f"{c} {result[c]:.1f} µs" for c in cases), file=sys.stderr)
    print(f"\n| case | {base.name} µs | {ROOT.name} µs | {ROOT.name} ÷ {base.name} |")
    print("|---|---|---|---:|")
    for case in cases:
        before, after = statistics.median(there[case]), statistics.median(here[case])
        print(
            f"| {case} | {', '.join(f'{v:.0f}' for v in there[case])} | {', '.join(f'{v:.0f}' for v in here[case])} "
            f"| {after / before:.2f} |"
        )


def main(
    module: str, doc: str | None, cases: Sequence[str], measure: Callable[[int], dict[str, float]], argv: list[str] | None
) -> int:
    """The command line of such a bench: `--rounds`, and `--against TREE --runs N` to alternate."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=(doc or module).splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--against", type=Path, help="another checkout with its own .venv: alternate with it")
    parser.add_argument("--runs", type=int, default=3, help="with --against: runs per tree")
    args = parser.parse_args(argv)
    if args.against is not None:
        compare(module, cases, args.against.resolve(), args.rounds, args.runs)
        return 0
    for case, micros in measure(args.rounds).items():
        print(f"{case}: {micros:.1f} µs CPU per message (median of {args.rounds})")
    return 0
