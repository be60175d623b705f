"""The text passes policies.message runs: the C ones (policies/_speedups.c) when the extension was
built, else the pure-Python ones (policies/_passes_py.py), which give the same output more slowly.

The extension is optional (setup.py): a machine without a C compiler installs and runs the same core.
"""

from __future__ import annotations

from types import ModuleType

passes: ModuleType
try:
    from policies import _speedups as passes
except ImportError:  # not built (no compiler, no Python headers) or blocked on purpose
    from policies import _passes_py as passes

# True when the C passes run: `consent-relay` reports it, the benchmarks name it.
NATIVE = passes.__name__ == "policies._speedups"
