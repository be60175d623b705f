"""The C passes of policies.message (HTML to text, word splitting): policies/_speedups.c.

Everything else about the package is in pyproject.toml. Installing needs a C compiler and
Python's headers (Debian: gcc, python3-dev).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "policies._speedups",
            sources=["policies/_speedups.c"],
            depends=["policies/_speedups_buf.h", "policies/_speedups_html.h", "policies/_speedups_kinds.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
