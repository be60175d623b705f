"""The README's "Try it", pasted as written into a shell in a fresh clone: `make run &` (which builds
.venv on the way), the Python that waits for readiness and sends, and `sink --list`. Its printed
output must be the one the README shows, and the delivered copy must be where it says.

Slow (a fresh clone builds its own .venv: a minute or two) and uses the README's fixed ports
(2525, 2526, 8025, 8080) on 127.0.0.1: it checks first that nothing else holds them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_tool, until_sync

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PORTS = (2525, 2526, 8025, 8080)


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n### {title}\n")
    end = text.index("\n## ", start)
    return text[start:end]


def code_blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)]


def expected_lines(block: str) -> list[re.Pattern[str]]:
    """Each printed line of the README as a pattern: ids (hex, they differ per run) and the width of
    the gaps between columns may differ."""
    patterns = []
    for line in block.splitlines():
        escaped = re.sub(r"[0-9a-f]{12,}", "[0-9a-f]+", re.escape(line.strip()))
        patterns.append(re.compile(r"\s*" + re.sub(r"(?:\\ )+", r"\\s+", escaped) + r"\s*"))
    return patterns


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_names_the_admin_token_next_to_the_ui_url() -> None:
    text = README.read_text()
    assert re.search(r"http://127\.0\.0\.1:8025/ui/`[^\n]*\n?[^\n]*`change-me-admin-token`", text)
    assert "change-me-admin-token" in (REPO / "config.example.toml").read_text()


@pytest.mark.timeout(900)
def test_try_it_block_runs_as_written_in_a_fresh_clone(tmp_path: Path) -> None:
    section = readme_section("Try it")
    blocks = code_blocks(section)
    (lang, script), (_, printed) = blocks[0], blocks[1]
    assert lang == "sh" and script.startswith("make run &\n")
    busy = [p for p in PORTS if not port_free(p)]
    assert not busy, f"ports {busy} are taken on 127.0.0.1: the README's example needs them free"

    clone = tmp_path / "clone"
    run_tool(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], timeout=120)
    assert (clone / "README.md").read_text() == README.read_text(), "commit the README first: the clone is of the last commit"
    env = {k: v for k, v in os.environ.items() if k not in ("CONSENT_RELAY_CONFIG", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO)))
    started = time.monotonic()
    # Files, not pipes: `make run &` keeps writing to the script's stdout after the script is done.
    out_file, err_file = (tmp_path / "stdout").open("w+"), (tmp_path / "stderr").open("w+")
    shell = subprocess.Popen(
        ["bash", "-c", script], cwd=clone, env=env, stdout=out_file, stderr=err_file, text=True,
        start_new_session=True,  # `make run &` outlives the script: the whole group is stopped below
    )
    try:
        shell.wait(timeout=840)
        out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
        elapsed = time.monotonic() - started
        assert shell.returncode == 0, f"exit {shell.returncode}\n--- stdout\n{out}\n--- stderr\n{err[-4000:]}"
        # every line the README shows, in its order (make run's own lines may come in between)
        lines = out.splitlines()
        position = 0
        for pattern in expected_lines(printed):
            while position < len(lines) and not pattern.fullmatch(lines[position]):
                position += 1
            assert position < len(lines), f"README line {pattern.pattern!r} not printed; stdout:\n{out}"
            position += 1
        # the delivered copy is where the reply says, with the id of the reply
        delivered = re.search(r"Delivered as ([0-9a-f]+); upstream: 2\.0\.0 Saved as (var/delivered/\S+\.eml)", out)
        assert delivered, out
        copy = (clone / delivered[2]).read_text()
        assert f"X-Relay-Id: {delivered[1]}" in copy and "Subject: Your order 1234" in copy
        assert "Thank you for your order." in copy
        assert "piet@example.net" not in copy
        print(f"fresh clone to Try-it output: {elapsed:.0f} s")
    finally:
        try:
            os.killpg(shell.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        shell.wait(timeout=30)
        until_sync(lambda: all(port_free(p) for p in PORTS), timeout=60, what="the relay to stop and free its ports")
        out_file.close()
        err_file.close()
