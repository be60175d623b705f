"""Wire one relay process together (store, upstream, SMTP, HTTP, background tasks), and `serve`
with signal handling, a drain on SIGTERM, and `[smtp] workers = N` processes on one port."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from typing import Any

from aiohttp import web

from relay.config import Config, Listen, helper_enabled
from relay.decisions import DecisionRecorder
from relay.errors import ConfigError, StoreUnavailable, UpstreamUnavailable
from relay.http_admin import build_admin_app
from relay.helper import Helper
from relay.log import configure_logging, get_logger
from relay.metrics import Metrics
from relay.outbox import OutboxWorker
from relay.pipeline import Pipeline
from relay.services import Clock, Services
from relay.signing import CopySigner
from relay.smtp_handler import RelayHandler
from relay.smtp_server import AuthLockout, ConnectionLimits, RelaySMTP
from relay.upstream import Upstream

_UPSTREAM_PROBE_SECONDS = 10.0
_GAUGE_SECONDS = 30.0


def listener_tls_context(config: Config) -> ssl.SSLContext | None:
    """The listeners' TLS context; a certificate or key OpenSSL cannot load is a ConfigError naming it."""
    if config.smtp.tls_cert is None or config.smtp.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(config.smtp.tls_cert), str(config.smtp.tls_key))
    except ssl.SSLError as exc:
        # OpenSSL says "PEM lib" for either file: tell which one is wrong when we can.
        try:
            ssl.create_default_context().load_verify_locations(str(config.smtp.tls_cert))
        except ssl.SSLError:
            raise ConfigError("smtp.tls_cert", f"{config.smtp.tls_cert}: not a PEM certificate ({exc.reason or exc})") from exc
        raise ConfigError(
            "smtp.tls_key", f"{config.smtp.tls_key}: not a private key matching smtp.tls_cert ({exc.reason or exc})"
        ) from exc
    return context


_READINESS_PROBE_SECONDS = 3.0


class Relay:
    """One relay process. Tests start it in-process on ephemeral ports (port 0)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        reuse_port: bool = False,
        http: bool = True,
        background: bool = True,
    ) -> None:
        self.config = config
        self.services = Services.build(config, metrics=metrics, clock=clock)
        self.upstream = Upstream(config.upstream, self.services.metrics, local_hostname=config.smtp.hostname)
        self.recorder = DecisionRecorder(self.services.store.decisions)
        self.pipeline = Pipeline(self.services, self.upstream, self.recorder)
        self.services.pipeline = self.pipeline
        self.limits = ConnectionLimits(config.smtp.max_connections, config.smtp.max_connections_per_ip, self.services.metrics)
        self.lockout = AuthLockout(config.smtp.auth_max_failures, config.smtp.auth_lockout_seconds)
        self.handler = RelayHandler(self.pipeline, self.lockout)
        self.outbox = OutboxWorker(
            self.services.store.outbox, self.upstream, config.outbox, self.services.metrics, self.services.clock
        )
        self.pipeline.on_outbox_enqueued = self.outbox.wake
        self.reuse_port = reuse_port
        self.http = http
        self.background = background
        self.log = get_logger()
        self._servers: list[asyncio.base_events.Server] = []
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.upstream_ok: bool | None = None
        self.upstream_problem = ""
        self.smtp_port = 0
        self.tls_port = 0
        self.admin_port = 0
        self.public_port = 0
        self.features: list[Any] = []
        self.helper: Helper | None = None
        self.copy_signer: CopySigner | None = None  # set by relay.features

    # --- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.services.store.open()
        await self.pipeline.delivery_ids.refill()
        await self._load_features()
        if helper_enabled(self.config.smtp):
            await self._start_helper()
        self.recorder.start()
        await self._check_upstream()
        tls = listener_tls_context(self.config)
        smtp = self.config.smtp
        self._servers.append(await self._listen(smtp.listen, tls_context=tls, implicit=False))
        self.smtp_port = self._servers[-1].sockets[0].getsockname()[1]
        if smtp.tls_listen is not None and tls is not None:
            self._servers.append(await self._listen(smtp.tls_listen, tls_context=tls, implicit=True))
            self.tls_port = self._servers[-1].sockets[0].getsockname()[1]
        if self.http and self.config.http.admin_listen is not None:
            app = build_admin_app(self.services, self.readiness)
            for feature in self.features:
                getattr(feature, "add_admin_routes", lambda app: None)(app)
            self.admin_port = await self._serve_http(app, self.config.http.admin_listen)
        if self.http and self.config.http.public_listen is not None:
            public = web.Application(client_max_size=1024 * 1024)
            for feature in self.features:
                getattr(feature, "add_public_routes", lambda app: None)(public)
            self.public_port = await self._serve_http(public, self.config.http.public_listen)
        if self.background:
            self._tasks.append(asyncio.create_task(self.outbox.run(), name="outbox"))
            self._tasks.append(asyncio.create_task(self._watch_upstream(), name="upstream-probe"))
            self._tasks.append(asyncio.create_task(self._watch_gauges(), name="gauges"))
            for feature in self.features:
                for coro in getattr(feature, "background_tasks", lambda: [])():
                    self._tasks.append(asyncio.create_task(coro))
        await self._refresh_gauges()
        self.log.info(
            "relay_started", smtp=self.smtp_port, tls=self.tls_port, admin=self.admin_port, public=self.public_port,
            profile=self.config.policy.profile, mode=self.config.policy.mode, pid=os.getpid(),
        )

    async def _start_helper(self) -> None:
        signer = self.copy_signer
        keys = signer.keys if signer is not None else ()
        self.helper = Helper(
            {"profile": self.services.engine.profile, "dkim_keys": [k.pem() for k in keys]},
            on_restart=self.services.metrics.helper_restarts.inc,
        )
        await self.helper.start()
        self.pipeline.helper = self.helper
        if signer is not None:
            signer.helper_now = self.pipeline.helper_now

    async def _load_features(self) -> None:
        """Optional features (unsubscribe, complaints, malware scan…) hook into the pipeline."""
        import importlib

        for name in ("relay.features",):
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name and name.startswith(exc.name):
                    continue
                raise
            self.features = await module.install(self)

    async def _listen(self, where: Listen, *, tls_context: ssl.SSLContext | None, implicit: bool) -> asyncio.base_events.Server:
        smtp = self.config.smtp
        loop = asyncio.get_running_loop()

        def factory() -> RelaySMTP:
            return RelaySMTP(
                self.handler,
                limits=self.limits,
                data_size_limit=smtp.max_message_size,
                enable_SMTPUTF8=True,
                hostname=smtp.hostname,
                ident="consent-relay",
                tls_context=None if implicit else tls_context,
                timeout=smtp.idle_timeout,
                data_timeout=smtp.data_timeout,
                # On the implicit-TLS listener the connection is already encrypted.
                auth_require_tls=False if implicit else smtp.auth_require_tls,
                loop=loop,
            )

        return await loop.create_server(
            factory, host=where.host, port=where.port, ssl=tls_context if implicit else None,
            reuse_port=self.reuse_port or None, reuse_address=True,
        )

    async def _serve_http(self, app: web.Application, where: Listen) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, where.host, where.port, reuse_port=self.reuse_port or None)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    # --- health ---------------------------------------------------------------------------

    async def _check_upstream(self) -> None:
        try:
            await self.upstream.probe()
        except UpstreamUnavailable as exc:
            if self.upstream_ok is not False:
                self.log.warning("upstream_unreachable", error=str(exc), hint="mail will get 451 until it answers")
            self.upstream_ok, self.upstream_problem = False, str(exc)
            self.services.metrics.upstream_up.set(0)
            return
        if self.upstream_ok is False:
            self.log.info("upstream_reachable_again")
        self.upstream_ok, self.upstream_problem = True, ""
        self.services.metrics.upstream_up.set(1)

    async def _watch_upstream(self) -> None:
        while True:
            await asyncio.sleep(_UPSTREAM_PROBE_SECONDS)
            await self._check_upstream()

    async def _refresh_gauges(self) -> None:
        """Store-wide gauges (consent records, quarantine, outbox), so every instance exports them."""
        store, metrics = self.services.store, self.services.metrics
        try:
            metrics.consent_records.set(await store.consent.count())
            metrics.quarantine_messages.set(await store.quarantine.count())
            metrics.outbox_messages.set(await store.outbox.depth())
            for account in self.config.accounts:
                state = await store.accounts.get(account.id)
                for name in ("active", "paused", "suspended"):
                    metrics.account_state.labels(account.id, name).set(1 if state.state == name else 0)
        except StoreUnavailable as exc:
            self.log.warning("gauges_not_refreshed", error=str(exc))

    async def _watch_gauges(self) -> None:
        while True:
            await asyncio.sleep(_GAUGE_SECONDS)
            await self._refresh_gauges()

    async def readiness(self) -> dict[str, Any]:
        try:
            await self.services.store.ping()
            await self.services.store.check_writable()
            store: dict[str, Any] = {"ok": True}
        except StoreUnavailable as exc:
            store = {"ok": False, "detail": str(exc)}
        if self.upstream_ok is not True:
            # Re-probed on request, but a silent upstream host must not make /readyz itself hang.
            try:
                await asyncio.wait_for(self._check_upstream(), _READINESS_PROBE_SECONDS)
            except TimeoutError:
                self.upstream_ok = False
                self.upstream_problem = f"no answer from the upstream within {_READINESS_PROBE_SECONDS:g} s"
        upstream: dict[str, Any] = {"ok": bool(self.upstream_ok)}
        if not self.upstream_ok:
            upstream["detail"] = self.upstream_problem
        return {"store": store, "upstream": upstream}

    # --- stop -----------------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.smtp.shutdown_grace if grace is None else grace
        for server in self._servers:
            server.close()
        # Idle sessions are told to come back; sessions inside DATA may finish within the grace.
        for session in list(self.limits.sessions):
            if not session.busy:
                session.close_with("421 4.3.2 Service shutting down; try again later")
        try:
            async with asyncio.timeout(grace):
                while any(s.busy for s in self.limits.sessions):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            self.log.warning("shutdown_grace_expired", sessions=len(self.limits.sessions))
        for session in list(self.limits.sessions):
            session.close_with("421 4.3.2 Service shutting down; try again later")
        for server in self._servers:
            await server.wait_closed()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for runner in self._runners:
            await runner.cleanup()
        if self.helper is not None:
            await self.helper.close()
        await self.recorder.close()
        await self.upstream.close()
        await self.services.store.close()
        self.log.info("relay_stopped")


async def serve(config: Config, worker_index: int | None = None) -> int:
    configure_logging(config.logging.level, config.logging.log_recipients)
    log = get_logger()
    if config.smtp.workers > 1 and worker_index is None:
        return await _supervise(config)
    relay = Relay(
        config,
        reuse_port=config.smtp.workers > 1,
        http=worker_index in (None, 0),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await relay.start()
    except StoreUnavailable as exc:
        print(f"consent-relay: error: store: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"consent-relay: error: cannot listen: {exc}", file=sys.stderr)
        await relay.services.store.close()
        return 1
    await stop.wait()
    log.info("relay_draining", grace=config.smtp.shutdown_grace)
    await relay.stop()
    return 0


async def _supervise(config: Config) -> int:
    """Run N worker processes on one SMTP port (SO_REUSEPORT); worker 0 also serves HTTP."""
    log = get_logger()
    metrics_dir = tempfile.mkdtemp(prefix="consent-relay-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(config.path), "--worker-index", str(i)], env=env
        )
        for i in range(config.smtp.workers)
    ]
    log.info("workers_started", pids=[p.pid for p in procs])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def any_exited() -> None:
        while all(p.poll() is None for p in procs):
            await asyncio.sleep(0.5)

    waiter = asyncio.create_task(any_exited())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = [await asyncio.to_thread(p.wait) for p in procs]
    waiter.cancel()
    stopper.cancel()
    return 0 if stop.is_set() and all(c == 0 for c in codes) else 1
