"""The instruction totals of child processes run under `valgrind --tool=callgrind`, for the benches
that count instructions per unit of work (bench/callgrind_edges.py, bench/callgrind_copies.py):
each starts its children, then hands them here to be waited for and read.

Imported by the parent side only: the children run the bench's file under another checkout's venv,
whose bench/ may not have this module."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

VALGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def collected(runs: Mapping[K, subprocess.Popen[str]]) -> dict[K, int] | None:
    """Each run's "Collected :" total from its stderr; None (the failed run's stderr tail printed)
    when one failed or printed no total."""
    out: dict[K, int] = {}
    for key, proc in runs.items():
        _, err = proc.communicate()
        found = [line for line in err.splitlines() if "Collected :" in line]
        if proc.returncode != 0 or not found:
            print(err[-3000:], file=sys.stderr)
            return None
        out[key] = int(found[-1].rsplit(":", 1)[1])
    return out
