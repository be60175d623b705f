"""Shared fixtures: a recording aiosmtpd upstream, configs written as real TOML files, a started
relay on ephemeral ports, a self-signed certificate, and a small smtplib client."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import ipaddress
import json
import os
import secrets
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from relay.config import Config, load_config
from relay.metrics import Metrics
from relay.passwords import hash_password

# Test modules import these helpers as `conftest` or as `tests.conftest`: make both names one module.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
sys.modules.setdefault("tests.conftest", sys.modules[__name__])
sys.modules.setdefault("conftest", sys.modules[__name__])

def cheap_hash(secret: str) -> str:
    """`secret` hashed in relay.passwords' own format (`scrypt$n$r$p$salt$hash`) at a test cost of
    n = 16 instead of hash_password's 2**14. The relay verifies with the n, r, p the hash carries,
    so the same code checks it; what changes is the ~50 ms of scrypt per check, which tests that
    try hundreds of tokens and logins paid every time. hash_password itself has its own tests."""
    import base64
    import hashlib

    from relay.passwords import verify_password

    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=16, r=8, p=1, dklen=32)
    b64 = lambda data: base64.b64encode(data).decode("ascii").rstrip("=")  # noqa: E731
    hashed = f"scrypt$16$8$1${b64(salt)}${b64(digest)}"
    assert verify_password(secret, hashed) and not verify_password(secret + "x", hashed)
    return hashed


PASSWORD = "correct horse battery"
PASSWORD_HASH = cheap_hash(PASSWORD)
SENDER = "orders@shop.example"
BODY_FOOTER = "Shop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678"
# The base account has a marketing stream, and the loader refuses marketing without a secret.
UNSUBSCRIBE_SECRET = "unsubscribe-secret-for-tests-0123456789"


# --- hypothesis: no per-example deadline -------------------------------------------------------
# Hypothesis' default 200 ms deadline is a timed assertion: on a loaded 2-core machine a single
# example (first call, cold caches) can take longer and fail the run as "flaky" with nothing wrong.
# Tests that set their own @settings inherit this for whatever they leave unset.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("consent-relay", deadline=None)
_hypothesis_settings.load_profile("consent-relay")


# --- the event loop ----------------------------------------------------------------------------


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on uvloop, the loop `consent-relay serve` runs on (relay/cli/main.py)."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


# --- a clock the test moves ---------------------------------------------------------------------


@dataclass
class Clocked:
    """A clock the test moves forward: deadlines pass and buckets refill without sleeping."""

    now: dt.datetime

    def clock(self) -> Any:
        from relay.services import Clock

        return Clock(now=lambda: self.now)

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


# --- polling instead of sleeping ---------------------------------------------------------------


async def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` (sync or async) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def until_sync(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_tool(argv: list[str], *, input: bytes | None = None, timeout: float = 60, **kwargs: Any) -> "subprocess.CompletedProcess[bytes]":
    """Run an external tool (perl, sigtool, …) the test relies on. When it is missing or fails, the
    assertion message is the tool's own stderr, not a bare exit status."""
    try:
        done = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, **kwargs)
    except FileNotFoundError as exc:
        raise AssertionError(f"{argv[0]} is not installed ({exc}); scripts/setup-machine test installs it") from None
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise AssertionError(f"{' '.join(map(str, argv))} exited {done.returncode}: {stderr or '(no stderr)'}")
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """In-process CLI runs reconfigure structlog (level, stream); give every test the defaults back."""
    import structlog

    yield
    structlog.reset_defaults()


# --- the upstream: a real aiosmtpd server that records what it accepted -------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool = False
    login: str | None = None
    mail_options: list[str] = field(default_factory=list)  # e.g. BODY=8BITMIME


@dataclass
class RecordingHandler:
    messages: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # lower-cased address -> reply
    data_reply: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # A slow but working upstream: each RCPT and the end of DATA answered after this many seconds.
    delay: float = 0.0

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_reply is not None:
            return self.data_reply
        with self.lock:
            login = session.auth_data if isinstance(session.auth_data, str) else None
            self.messages.append(
                Received(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, session.ssl is not None, login,
                    list(envelope.mail_options),
                )
            )
            n = len(self.messages)
        return f"250 2.0.0 Ok: queued as UP{n:05d}"


class _TrackingController(Controller):
    """A Controller that hangs up on its clients when stopped, as a real MTA going down does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: list[SMTP] = []

    def factory(self) -> SMTP:
        smtp = SMTP(self.handler, **self.SMTP_kwargs)
        self.sessions.append(smtp)
        return smtp

    def stop(self, no_assert: bool = False) -> None:
        def hang_up() -> None:
            assert self.server is not None
            self.server.close()
            for smtp in self.sessions:
                if smtp.transport is not None:
                    smtp.transport.abort()

        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (hang_up(), done.set()))
        done.wait(5)
        super().stop(no_assert)


class RecordingUpstream:
    """Start/stop/restart on one fixed port; tell it to answer 4xx/5xx per recipient or at DATA."""

    def __init__(self, port: int | None = None, **smtp_kwargs: Any) -> None:
        self.port = port or free_port()
        self.handler = RecordingHandler()
        self.smtp_kwargs = smtp_kwargs  # e.g. tls_context, require_starttls, authenticator
        self._controller: _TrackingController | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> RecordingUpstream:
        assert self._controller is None
        controller = _TrackingController(
            self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10, **self.smtp_kwargs
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]

    def answer_rcpt(self, address: str, reply: str | None) -> None:
        if reply is None:
            self.handler.rcpt_replies.pop(address.lower(), None)
        else:
            self.handler.rcpt_replies[address.lower()] = reply

    def answer_data(self, reply: str | None) -> None:
        self.handler.data_reply = reply


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    up = RecordingUpstream().start()
    try:
        yield up
    finally:
        up.stop()


# --- configs: written as TOML, loaded by the real loader ---------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Top-level tables as [sections], everything deeper as inline tables/arrays (enough for configs)."""
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()]
        else:
            lines.insert(0, f"{json.dumps(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_account() -> dict[str, Any]:
    return {
        "id": "shop",
        "name": "Shop",
        "password_hash": PASSWORD_HASH,
        "domains": ["shop.example"],
        "trusted_networks": ["127.0.0.1/32"],
        "legal_name": "Shop B.V.",
        "postal_address": "Keizersgracht 1, 1015 AA Amsterdam",
        "registration_number": "12345678",
        "abuse_contact": "abuse@shop.example",
        "default_stream": "orders",
        "streams": [
            {"id": "orders", "kind": "transactional"},
            {"id": "newsletter", "kind": "marketing", "topic": "newsletter"},
        ],
    }


def config_dict(tmp_path: Path, upstream_port: int, **overrides: Any) -> dict[str, Any]:
    """The test config as a dict. `account={...}` merges into the first account."""
    account_overrides = overrides.pop("account", {})
    data: dict[str, Any] = {
        "smtp": {
            "listen": "127.0.0.1:0",
            "hostname": "relay.test",
            "idle_timeout": 30,
            "shutdown_grace": 5,
            # One process, whatever the machine's cores (the default is "auto": one per core); a
            # test that needs workers says how many.
            "workers": 1,
            # Off, not "auto": "auto" starts a helper child per relay on a machine with 2+ cores, and
            # every relay stop then waits for that child to finish importing (policies, dkim,
            # cryptography): about 0.5 s of CPU per relay a test starts, hundreds of times, and a
            # suite that covered different paths on 1 and 2+ cores. The helper's own tests
            # (tests/relay/engine/test_helper.py, the supervisor's) turn it on explicitly.
            "helper_process": False,
        },
        "upstream": {"host": "127.0.0.1", "port": upstream_port, "starttls": "off", "timeout": 5, "pool_size": 4},
        "store": {"url": "sqlite:///var/relay.db"},
        "http": {"admin_listen": "127.0.0.1:0"},
        "unsubscribe": {"secrets": [UNSUBSCRIBE_SECRET]},
        "outbox": {"retry_initial_seconds": 1, "retry_max_seconds": 4, "poll_seconds": 0.1},
        "logging": {"log_recipients": "plain"},
        "accounts": [deep_merge(base_account(), account_overrides)],
    }
    return deep_merge(data, overrides)


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def make_config(tmp_path: Path, upstream_port: int | None = None, **overrides: Any) -> Config:
    """Write a config (every key overridable, nested tables merged) and load it with the real loader."""
    port = upstream_port if upstream_port is not None else free_port()
    return load_config(write_config(tmp_path, config_dict(tmp_path, port, **overrides)))


# --- messages and an smtplib client --------------------------------------------------------------


def zipped(members: dict[str, bytes]) -> bytes:
    """A deflated zip archive of `members` (name -> bytes), for attachment tests."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def message(
    *,
    sender: str = SENDER,
    display: str = "Shop",
    to: str = "anna@example.nl",
    subject: str = "Your order 1234",
    stream: str | None = None,
    headers: tuple[str, ...] = (),
    body: str = "Thank you for your order 1234. It ships tomorrow.",
) -> bytes:
    """A transactional message that passes the identity rules for account `shop`."""
    lines = [
        f"From: {display} <{sender}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        "Date: Sun, 15 Mar 2026 12:00:00 +0000",
        f"Message-ID: <{time.monotonic_ns()}@shop.example>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if stream is not None:
        lines.append(f"X-Relay-Stream: {stream}")
    lines += list(headers)
    text = "\r\n".join(lines) + "\r\n\r\n" + body + "\r\n\r\n" + BODY_FOOTER + "\r\n"
    return text.encode("utf-8")


def insecure_client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Outcome:
    """Every reply of one transaction; `final` is the one that decided it."""

    mail: tuple[int, str] = (0, "")
    rcpts: list[tuple[int, str]] = field(default_factory=list)
    data: tuple[int, str] | None = None

    @property
    def final(self) -> tuple[int, str]:
        if self.data is not None:
            return self.data
        if self.mail[0] != 250:
            return self.mail
        return self.rcpts[-1] if self.rcpts else self.mail

    @property
    def code(self) -> int:
        return self.final[0]

    @property
    def text(self) -> str:
        return self.final[1]


def _decode(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def transaction(
    client: smtplib.SMTP, mail_from: str, rcpts: list[str] | str, content: bytes, mail_options: list[str] | None = None
) -> Outcome:
    """MAIL, RCPT…, DATA on an open client, recording each reply."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    out = Outcome()
    code, msg = client.mail(mail_from, mail_options or [])
    out.mail = (code, _decode(msg))
    if code != 250:
        client.rset()
        return out
    for rcpt in rcpts:
        code, msg = client.rcpt(rcpt)
        out.rcpts.append((code, _decode(msg)))
    if not any(c == 250 for c, _ in out.rcpts):
        client.rset()
        return out
    code, msg = client.data(content)
    out.data = (code, _decode(msg))
    return out


def send(
    port: int,
    content: bytes | None = None,
    *,
    mail_from: str = SENDER,
    rcpts: list[str] | str = "anna@example.nl",
    login: tuple[str, str] | None = None,
    starttls: bool = False,
    implicit_tls: bool = False,
    mail_options: list[str] | None = None,
    source: str | None = None,
) -> Outcome:
    """One connection, one transaction (synchronous: call it through asyncio.to_thread).
    `source="127.0.0.2"` binds the client there: outside a config that trusts only 127.0.0.1."""
    content = message() if content is None else content
    client: smtplib.SMTP
    bind = (source, 0) if source else None
    if implicit_tls:
        client = smtplib.SMTP_SSL("127.0.0.1", port, timeout=15, context=insecure_client_context(), source_address=bind)
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=15, source_address=bind)
    try:
        client.ehlo("client.test")
        if starttls:
            client.starttls(context=insecure_client_context())
            client.ehlo("client.test")
        if login is not None:
            client.login(*login)
        return transaction(client, mail_from, rcpts, content, mail_options)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


async def asend(port: int, content: bytes | None = None, **kwargs: Any) -> Outcome:
    return await asyncio.to_thread(send, port, content, **kwargs)


# --- PostgreSQL: a fresh schema per test, and the stores a test runs on ---------------------------

PG_URL = os.environ.get("RELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """The URL of a fresh schema in the test database (search_path), dropped afterwards."""
    import asyncpg

    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={name}"
    finally:
        await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A test taking `store_url` runs on both stores: the behaviour is the same on each."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/relay.db"
        return
    async with pg_schema() as url:
        yield url


# --- the CLI in-process ----------------------------------------------------------------------------


def cli_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`consent-relay ARGV` in this process: (exit code, stdout, stderr)."""
    from relay.cli import main as cli

    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# --- an aiohttp app on an ephemeral port -------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`app` (an aiohttp Application) served on 127.0.0.1 on a free port: yields its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def no_readiness() -> dict[str, Any]:
    """The admin app's readiness callback for tests that do not look at /readyz."""
    return {}


# --- a started relay --------------------------------------------------------------------------


RelayFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def start_relay() -> AsyncIterator[RelayFactory]:
    """`await start_relay(config, background=False)` → a started relay.app.Relay, stopped at the end."""
    from relay.app import Relay

    started: list[Relay] = []

    async def start(config: Config, **kwargs: Any) -> Relay:
        kwargs.setdefault("metrics", Metrics())
        kwargs.setdefault("background", False)
        relay = Relay(config, **kwargs)
        await relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in reversed(started):
        if relay._servers:
            await relay.stop(grace=1)


@pytest.fixture
def config(tmp_path: Path, upstream: RecordingUpstream) -> Config:
    return make_config(tmp_path, upstream.port)


@pytest.fixture
async def relay(start_relay: RelayFactory, config: Config) -> Any:
    return await start_relay(config)


# --- the relay as real processes ----------------------------------------------------------------


class ServeProcess:
    """`consent-relay serve -c FILE` in a subprocess, with its JSON log lines read from stderr.

    Separate ServeProcess objects on one shared store stand in for separate hosts; one with
    `[smtp] workers = N` is a supervisor whose N workers log to the same stderr."""

    def __init__(self, config: Path, *serve_args: str, cpus: set[int] | None = None) -> None:
        self.config = config
        self.serve_args = serve_args  # e.g. "--sink"
        self.cpus = cpus  # the CPUs it may run on (its affinity), when not the test's own
        self.lines: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, *, started: int = 1) -> list[dict[str, Any]]:
        """Start it; return the `relay_started` lines once `started` processes (workers) logged one."""
        script = Path(sys.executable).parent / "consent-relay"
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "relay.cli.main"]
        cpus = self.cpus
        self.proc = await asyncio.create_subprocess_exec(
            *argv, "serve", "-c", str(self.config), *self.serve_args,
            cwd=self.config.parent, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        self._reader = asyncio.create_task(self._read())

        def ready() -> list[dict[str, Any]] | None:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {b''.join(self.raw).decode(errors='replace')}")
            found = self.events("relay_started")
            return found if len(found) >= started else None

        try:
            return await until(ready, timeout=30, what=f"{started} relay_started line(s)")
        except AssertionError as exc:  # what it logged tells why it did not start
            raise AssertionError(f"{exc}; it logged:\n{b''.join(self.raw).decode(errors='replace')}") from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.lines if e.get("event") == name]

    async def stop(self) -> int:
        """SIGTERM, then its exit code (killed after 30 s)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            await self.ensure_stopped()
        return code

    async def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
            self._reader = None


# --- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A self-signed certificate for localhost / 127.0.0.1, made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return CertFiles(cert_path, key_path)


# --- Chromium (tests/browser) --------------------------------------------------------------------
# Debian's chromium, never a downloaded browser: the machines reach no browser download site.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()
