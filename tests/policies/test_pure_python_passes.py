"""The core without its C extension (issue 17): `import policies` and every rule work on the
pure-Python passes (policies/_passes_py.py), with the same findings as with the C passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from policies import _passes

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "pure_python_findings.py"


def run(*flags: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=300, check=True, cwd=HERE
    )
    return json.loads(done.stdout)


def test_the_policy_corpora_give_the_same_text_links_and_findings_without_the_extension() -> None:
    # policy: mailpro M-code-of-conduct, M-opt-out, M-legal-notice; clang E-misleiden — every content,
    # identity and opt-out rule decides the same whichever passes parsed the message
    native, pure = run(), run("--pure-python")
    assert native.pop("native") is True, "the C extension is built here (make .venv/.installed-stamp)"
    assert pure.pop("native") is False, "the extension was blocked: the fallback ran"
    messages = native["messages"]
    assert isinstance(messages, dict) and len(messages) > 100
    assert sum(bool(m["findings"]) for m in messages.values()) > 50  # the comparison sees real hits
    differ = [name for name in messages if messages[name] != pure["messages"][name]]  # type: ignore[index]
    assert not differ, differ


def test_the_package_imports_without_the_extension() -> None:
    code = (
        "import sys; sys.modules['policies._speedups'] = None\n"
        "import policies.registry, policies.message\n"
        "from policies import _passes\n"
        "assert not _passes.NATIVE and _passes.passes.__name__ == 'policies._passes_py'\n"
        "m = policies.message.parse_message(b'Subject: x\\r\\nContent-Type: text/html\\r\\n\\r\\n<p>Hi <a href=\"https://a.example\">a</a></p>')\n"
        "print(m.text, [l[0] for l in m.links], sorted(m.words))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "Hi a ['https://a.example'] ['a', 'hi', 'x']"


def test_the_selector_prefers_the_c_passes_when_built() -> None:
    assert _passes.NATIVE and _passes.passes.__name__ == "policies._speedups"
