"""The machine set-up a new user meets first: scripts/setup-machine behind `make test`, the tool
errors tests show, and a warning-free install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from tests.conftest import run_tool

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup-machine"


def _packages(list_name: str) -> list[str]:
    """The Debian package names of one bash array in scripts/setup-machine."""
    text = SETUP.read_text()
    body = re.search(rf"^{list_name}=\(\n(.*?)^\)", text, re.S | re.M)
    assert body, list_name
    return [line.split("#")[0].strip() for line in body[1].splitlines() if line.split("#")[0].strip()]


def _fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    run_tool(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], timeout=120)
    return clone  # of the last commit, as a new user gets it


def test_ci_runs_exactly_the_readme_command() -> None:
    """What CI proves is what the README says: `.ci/run` only calls `make test`."""
    commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands[-1] == "exec make test", commands
    assert all(c.startswith(("set ", "cd ")) for c in commands[:-1]), commands
    assert "make test" in (REPO / "README.md").read_text()


def test_every_package_the_suite_needs_is_in_the_one_list() -> None:
    packages = _packages("APT_PACKAGES")
    for needed in ("libcryptx-perl", "chromium", "clamav", "postgresql", "prometheus", "postfix", "libmail-dkim-perl"):
        assert needed in packages


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the script as another user")
def test_make_test_as_non_root_stops_before_any_test_naming_what_is_missing() -> None:
    """A non-root user on a machine without Chromium and CryptX: one message listing both and the
    command that installs them, exit non-zero, and no venv built and no test run."""
    with tempfile.TemporaryDirectory(prefix="consent-relay-nonroot-") as tmp:  # pytest's tmp is root-only
        os.chmod(tmp, 0o755)
        _make_test_as_nobody(Path(tmp))


def _make_test_as_nobody(tmp_path: Path) -> None:
    clone = _fresh_clone(tmp_path)
    # The machine "lacks" two packages: dpkg-query answers as if they were not installed.
    fake = tmp_path / "bin"
    fake.mkdir()
    real = shutil.which("dpkg-query")
    assert real
    (fake / "dpkg-query").write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in chromium|libcryptx-perl) exit 1;; esac; done\n'
        f'exec {real} "$@"\n'
    )
    (fake / "dpkg-query").chmod(0o755)
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "make", "-C", str(clone), "test"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "HOME": str(tmp_path)},
    )
    assert done.returncode != 0
    messages = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert messages == [
        "missing Debian packages: libcryptx-perl chromium",
        "install them (and start PostgreSQL with its test database) with: sudo scripts/setup-machine test",
    ], done.stderr
    assert not (clone / ".venv").exists()
    assert "pytest" not in done.stdout and "passed" not in done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="as root the script installs; this checks it is a no-op when all is there")
def test_setup_machine_as_root_on_a_ready_machine_does_nothing_and_succeeds() -> None:
    done = subprocess.run([str(SETUP), "test"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "installing" not in done.stderr, done.stderr
    # and it left PostgreSQL answering with the test database
    run_tool(["psql", "-h", "127.0.0.1", "-U", "postgres", "-w", "-d", "test", "-tAc", "SELECT 1"])


def test_setup_machine_refuses_an_unknown_profile() -> None:
    done = subprocess.run([str(SETUP), "everything"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.strip() == "usage: scripts/setup-machine run|test"


def test_a_failing_tool_shows_its_own_stderr() -> None:
    verifier = REPO / "tests" / "relay" / "dkim_verify.pl"
    with pytest.raises(AssertionError) as caught:
        run_tool(["perl", str(verifier), "/nonexistent/keys.txt"], input=b"")
    text = str(caught.value)
    assert "exited" in text and "/nonexistent/keys.txt" in text, text


def test_a_missing_tool_says_so() -> None:
    with pytest.raises(AssertionError) as caught:
        run_tool(["no-such-tool-consent-relay"])
    assert "no-such-tool-consent-relay is not installed" in str(caught.value)


def test_install_prints_no_packaging_warnings(tmp_path: Path) -> None:
    """Building the package (what `make` does on first use, here in a fresh clone) emits no
    setuptools warnings."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(pyproject["project"]["license"], str)  # SPDX expression, not the deprecated table
    clone = _fresh_clone(tmp_path)
    run_tool([sys.executable, "-m", "venv", str(tmp_path / "venv")], timeout=120)
    done = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "pip"), "install", "--no-deps", "--disable-pip-version-check", "-e", str(clone)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_VERBOSE": "1"},
    )
    assert done.returncode == 0, done.stderr
    warnings = [
        line for line in (done.stdout + done.stderr).splitlines()
        if re.search(r"BuildBackendWarning|Setuptools\w*Warning|InformationOnly|is deprecated", line)
    ]
    assert warnings == []


def test_the_core_installs_and_runs_without_a_c_compiler(tmp_path: Path) -> None:
    """The C passes are optional (issue 17): with no working compiler (CC=/bin/false) the build
    warns and goes on, the wheel carries no extension, and the core runs on the pure-Python passes."""
    clone = _fresh_clone(tmp_path)
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(wheels), str(clone)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CC": "/bin/false"},
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("consent_relay-*.whl")
    unpacked = tmp_path / "unpacked"
    shutil.unpack_archive(wheel, unpacked, "zip")
    assert not list(unpacked.glob("policies/_speedups*.so")), "the compiler failed: no extension"
    assert (unpacked / "policies" / "_passes_py.py").is_file()
    code = (
        f"import sys; sys.path.insert(0, {str(unpacked)!r})\n"
        "import policies.registry, policies.message\n"
        "from policies import _passes\n"
        "assert policies.message.__file__.startswith(sys.path[0]) and not _passes.NATIVE\n"
        "print(sorted(policies.message.parse_message(b'Subject: Hi\\r\\n\\r\\nBuy now').words))\n"
    )
    ran = run_tool([sys.executable, "-I", "-c", code], timeout=60)
    assert ran.stdout.decode().strip() == "['buy', 'hi', 'now']"
