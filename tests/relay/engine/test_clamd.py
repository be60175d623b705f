"""The optional clamd scan against a real clamd (Debian's clamav-daemon) with a local signature
file built by sigtool; no fake server. clamd unreachable: tempfail by default, or pass."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from relay.engine.clamd import Clamd
from relay.errors import ScannerUnavailable
from tests.conftest import asend, make_config, message, run_tool

PAYLOAD = b"consent-relay test payload that only our local signature knows 7f3a9c\n"


@pytest.fixture(scope="module")
def clamd_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("clamd")
    (base / "db").mkdir()
    (base / "payload.bin").write_bytes(PAYLOAD)
    signature = run_tool(["sigtool", "--md5", str(base / "payload.bin")], timeout=30)
    (base / "db" / "local.hdb").write_bytes(signature.stdout)
    socket_path = base / "clamd.sock"
    (base / "clamd.conf").write_text(
        f"LocalSocket {socket_path}\nDatabaseDirectory {base / 'db'}\nForeground yes\n"
        f"LogFile {base / 'clamd.log'}\nPidFile {base / 'clamd.pid'}\nUser root\n"
    )
    daemon = subprocess.Popen([shutil.which("clamd") or "/usr/sbin/clamd", "-c", str(base / "clamd.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            assert daemon.poll() is None, (base / "clamd.log").read_text() if (base / "clamd.log").exists() else "clamd exited"
            assert time.monotonic() < deadline, "clamd did not open its socket"
            time.sleep(0.1)
        yield f"unix:{socket_path}"
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def with_attachment(data: bytes, name: str = "catalogus.bin") -> bytes:
    head = message(headers=("MIME-Version: 1.0",), body="")
    headers = head.split(b"\r\n\r\n")[0].replace(b"Content-Type: text/plain; charset=utf-8\r\n", b"")
    headers = headers.replace(b"Content-Transfer-Encoding: 8bit\r\n", b"")
    body = (
        "--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThank you for your order 1234.\r\n"
        "Shop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678\r\n"
        f"--XX\r\nContent-Type: application/octet-stream; name={name}\r\n"
        f"Content-Disposition: attachment; filename={name}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(data).decode() + "\r\n--XX--\r\n"
    )
    return headers + b'\r\nContent-Type: multipart/mixed; boundary="XX"\r\n\r\n' + body.encode()


async def test_instream_finds_the_local_signature(clamd_socket: str) -> None:
    clamd = Clamd(clamd_socket, 30)
    await clamd.ping()
    assert (await clamd.scan(with_attachment(PAYLOAD))).startswith("payload.bin")
    assert await clamd.scan(with_attachment(b"a harmless catalogue\n")) == ""


async def test_unreachable_clamd_raises(tmp_path: Path) -> None:
    with pytest.raises(ScannerUnavailable):
        await Clamd(f"unix:{tmp_path}/nothing.sock", 2).scan(b"x")
    with pytest.raises(ValueError):
        Clamd("http://clamd", 2)


async def test_relay_rejects_what_clamd_finds(clamd_socket: str, tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    # policy: mailpro M-code-of-conduct ("kwaadaardige inhoud … virussen of spyware")
    relay = await start_relay(make_config(tmp_path, upstream.port, malware={"clamd": clamd_socket}))
    bad = await asend(relay.smtp_port, with_attachment(PAYLOAD))
    assert bad.code == 550 and "[content.malware]" in bad.text, bad.text
    good = await asend(relay.smtp_port, with_attachment(b"a harmless catalogue\n"))
    assert good.code == 250, good.text
    assert len(upstream.messages) == 1


@pytest.mark.parametrize(("setting", "code"), [("tempfail", 451), ("pass", 250)])
async def test_clamd_unavailable(setting: str, code: int, tmp_path: Path, upstream: Any, start_relay: Any) -> None:
    config = make_config(
        tmp_path, upstream.port,
        malware={"clamd": f"unix:{tmp_path}/no-clamd.sock", "clamd_unavailable": setting, "clamd_timeout": 2},
    )
    relay = await start_relay(config)
    out = await asend(relay.smtp_port, with_attachment(b"a harmless catalogue\n"))
    assert out.code == code, out.text
    if code == 451:
        assert out.text.startswith("4.3.0") and upstream.messages == []
