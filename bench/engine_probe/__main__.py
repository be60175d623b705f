"""`python -m bench.engine_probe DIR`: per target, the median over its workers' 500-verdict windows
(the first window, warm-up, left out when there are more) of Engine.message's thread CPU, and relay - relay-nocontent."""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(argv: list[str]) -> int:
    medians: dict[str, list[float]] = defaultdict(list)
    for path in sorted(Path(argv[0]).glob("*.txt")):
        target = re.sub(r"-\d+$", "", path.stem)
        lines = path.read_text().splitlines()
        medians[target].extend(float(line.split()[1]) for line in lines[1:] or lines)
    result = {target: statistics.median(values) for target, values in medians.items() if values}
    for target, micros in sorted(result.items()):
        print(f"{target}: Engine.message {micros:.0f} µs thread CPU (median of {len(medians[target])} windows)")
    if "relay" in result and "relay-nocontent" in result:
        print(f"content share: {result['relay'] - result['relay-nocontent']:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
