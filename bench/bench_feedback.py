"""Parsing rate of the feedback loop on the genuine corpus (tests/corpus/feedback), one core.

    .venv/bin/python -m bench.bench_feedback [--seconds 5]

Reports/s for parse_feedback_report (ARF, JMRP, redacted) and parse_dsn (RFC 3464 and the
non-standard formats through flufl.bounce), each over its whole corpus in a loop.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

from policies.dsn import MalformedDsn, parse_dsn
from policies.feedback_report import MalformedReport, parse_feedback_report

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "corpus"


def rate(parse: Callable[[bytes], object], samples: list[bytes], seconds: float) -> float:
    done = 0
    started = time.process_time()  # one core: CPU time of this process
    while time.process_time() - started < seconds:
        for raw in samples:
            try:
                parse(raw)
            except (MalformedReport, MalformedDsn):
                pass
            done += 1
    return done / (time.process_time() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_feedback", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="CPU seconds per parser")
    args = parser.parse_args(argv)
    arf = [p.read_bytes() for p in sorted((CORPUS / "feedback" / "arf").glob("*.eml")) + sorted((CORPUS / "arf").glob("*.eml"))]
    dsn = [p.read_bytes() for p in sorted((CORPUS / "feedback" / "dsn").glob("*.eml"))]
    print(f"| parser | corpus | reports/s (one core) |\n|---|---|---|")
    print(f"| parse_feedback_report | {len(arf)} genuine ARF/JMRP reports | {rate(parse_feedback_report, arf, args.seconds):,.0f} |")
    print(f"| parse_dsn | {len(dsn)} genuine DSNs | {rate(parse_dsn, dsn, args.seconds):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
