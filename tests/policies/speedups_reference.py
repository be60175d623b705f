"""The pure-Python passes that policies/_speedups.c replaced, kept as its reference.

They now ship as the runtime fallback, policies/_passes_py.py; this module keeps the names the tests
and bench/bench_policy.py have always used for them.
"""

from __future__ import annotations

from policies._passes_py import (  # noqa: F401 (re-exported)
    _URL_ANY_CASE,
    _html_to_text,
    _urls,
    anchors_with_offset,
    number_windows,
    split_words,
)
from policies._passes_py import fold_reference as fold  # noqa: F401
