"""A capture upstream for trying the relay out: an SMTP server that writes every copy it accepts
to a directory as one `.eml` file (like Mailpit or `python -m smtpd`), and lists them.

`consent-relay sink` runs it on the configured upstream's address; `consent-relay serve --sink`
(what `make run` runs) starts it inside the relay's process when nothing answers there, so a
fresh checkout delivers somewhere visible. Never meant for production: it accepts everything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.parser
import email.policy
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay import replies

DELIVERED_DIR = "var/delivered"  # relative to the config file's directory, like the SQLite store
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def delivered_dir(config_path: Path) -> Path:
    return config_path.resolve().parent / DELIVERED_DIR


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is inside it (what a user can open), else absolute."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


@dataclass
class CapturedCopy:
    path: Path
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    relay_id: str


class CaptureHandler:
    """aiosmtpd handler: each accepted DATA becomes `DIR/<X-Relay-Id or time>[-N].eml`."""

    def __init__(self, directory: Path, on_copy: Callable[[CapturedCopy], None] | None = None) -> None:
        self.directory = directory
        self.on_copy = on_copy

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(content)
        relay_id = _SAFE.sub("_", str(headers.get("X-Relay-Id", "")).strip())[:64]
        stem = relay_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = _write_new(self.directory, stem, _with_envelope(envelope, content))
        copy = CapturedCopy(
            path=path,
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            subject=str(headers.get("Subject", "")),
            relay_id=relay_id,
        )
        if self.on_copy is not None:
            self.on_copy(copy)
        return replies.saved(shown(path))


def _with_envelope(envelope: Envelope, content: bytes) -> bytes:
    """The copy as delivered, with the envelope on top the way an MTA's local delivery records it."""
    lines = [f"Return-Path: <{envelope.mail_from or ''}>"]
    lines += [f"X-Envelope-To: <{rcpt}>" for rcpt in envelope.rcpt_tos]
    return ("\r\n".join(lines) + "\r\n").encode() + content


def _write_new(directory: Path, stem: str, data: bytes) -> Path:
    """Write `data` to a new file named after `stem` (`stem-2`, `stem-3`, … when taken), atomically."""
    n = 1
    while True:
        path = directory / (f"{stem}.eml" if n == 1 else f"{stem}-{n}.eml")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            n += 1
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path


def print_copy(copy: CapturedCopy) -> None:
    print(
        f"sink: {shown(copy.path)}  from <{copy.mail_from}> to {', '.join(f'<{r}>' for r in copy.rcpt_tos)}"
        f"  subject {copy.subject!r}",
        flush=True,
    )


async def start_sink(host: str, port: int, directory: Path, hostname: str = "sink.localhost") -> asyncio.AbstractServer:
    handler = CaptureHandler(directory, print_copy)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SMTP(handler, hostname=hostname, ident="consent-relay sink"), host, port)


async def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts a TCP connection at host:port (the upstream is there)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


def list_copies(directory: Path) -> list[CapturedCopy]:
    copies = []
    for path in sorted(directory.glob("*.eml"), key=lambda p: (p.stat().st_mtime, p.name)):
        with path.open("rb") as f:
            headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parse(f)
        copies.append(
            CapturedCopy(
                path=path,
                mail_from=str(headers.get("Return-Path", "")).strip("<>"),
                rcpt_tos=[str(v).strip("<>") for v in headers.get_all("X-Envelope-To", [])],
                subject=str(headers.get("Subject", "")),
                relay_id=str(headers.get("X-Relay-Id", "")),
            )
        )
    return copies


async def run_sink(host: str, port: int, directory: Path) -> int:
    import signal

    try:
        server = await start_sink(host, port, directory)
    except OSError as exc:
        print(f"consent-relay: error: sink cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"sink: listening on {host}:{port}, writing each delivered copy to {shown(directory)}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()
    return 0


def describe(copy: CapturedCopy) -> dict[str, Any]:
    return {
        "path": shown(copy.path),
        "mail_from": copy.mail_from,
        "rcpt_tos": copy.rcpt_tos,
        "subject": copy.subject,
        "relay_id": copy.relay_id,
    }
