"""The C passes of policies.message (HTML to text, word splitting): policies/_speedups.c.

Everything else about the package is in pyproject.toml. The extension is optional: without a C
compiler or Python's headers (Debian: gcc, python3-dev) the build prints a warning and the package
installs without it, running the same passes in pure Python (policies/_passes_py.py), more slowly.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "policies._speedups",
            sources=["policies/_speedups.c"],
            depends=["policies/_speedups_buf.h", "policies/_speedups_html.h", "policies/_speedups_kinds.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
