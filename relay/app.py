"""Wire one relay process together (store, upstream, SMTP, HTTP, background tasks), and `serve`
with signal handling, a drain on SIGTERM, and `[smtp] workers = N` processes on one port
(relay.process.supervisor). Start-up binds every listener first and undoes whatever it started when a
later step fails."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web

from relay import replies
from relay.assembly import build_relay
from relay.config import Config, config_warnings, helper_enabled, usable_cores
from relay.errors import ConfigError, StoreUnavailable, UpstreamUnavailable
from relay.routes import build_admin_app
from relay.log import configure_logging, get_logger
from relay.metrics import Metrics
from relay.process.balance import Balance, BalancedServer, LoadBoard
from relay.process.listeners import ListenError, Listeners, bind_listeners
from relay.process.memory import give_back_free_memory
from relay.services import Clock
from relay.smtp.handler import RelayHandler
from relay.smtp.server import AuthLockout, ConnectionLimits, RelaySMTP

T = TypeVar("T")

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
_START_SLOW_SECONDS = 5.0


class Relay:
    """One relay process: the parts relay.assembly.build_relay makes, started behind its listeners.
    Tests start it in-process on ephemeral ports (port 0)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        listeners: Listeners | None = None,
        http: bool = True,
        background: bool = True,
        balance: tuple[LoadBoard, int] | None = None,
    ) -> None:
        """`balance`: a worker of `[smtp] workers` its place on the supervisor's board (the board,
        its index); its SMTP listeners then accept as relay.process.balance says."""
        self.config = config
        parts = build_relay(config, metrics=metrics, clock=clock, deadline_checks=http)
        self.services = parts.services
        self.upstream = parts.upstream
        self.recorder = parts.recorder
        self.pipeline = parts.pipeline
        self.outbox = parts.outbox
        self.features = parts.features
        self.helper = parts.helper
        # max_connections is the relay's total: with `workers = N` each process takes its share
        # (rounded up). The per-address limit holds in each process (docs/SPEC.md §12).
        share = -(-config.smtp.max_connections // config.smtp.worker_count)
        self.limits = ConnectionLimits(share, config.smtp.max_connections_per_ip, self.services.metrics)
        self.balance: Balance | None = None
        if balance is not None:
            limits = self.limits
            self.balance = Balance(*balance, sessions=lambda: limits.total)
            limits.on_change = self.balance.publish
        self.lockout = AuthLockout(config.smtp.auth_max_failures, config.smtp.auth_lockout_seconds)
        self.handler = RelayHandler(self.pipeline, self.lockout)
        self.listeners = listeners  # bound by the caller (serve, a supervisor); else by start()
        self.http = http
        self.background = background
        self.log = get_logger()
        self._servers: list[asyncio.base_events.Server | BalancedServer] = []
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.upstream_ok: bool | None = None
        self.upstream_problem = ""
        self.smtp_port = 0
        self.tls_port = 0
        self.admin_port = 0
        self.public_port = 0
        self._step = "listeners"  # the start-up step under way, for relay_start_slow

    # --- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything, or nothing: a failure stops what was started and re-raises."""
        try:
            await self._start()
        except BaseException:
            await self._undo_start()
            raise

    async def _undo_start(self) -> None:
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        if self.helper is not None:
            await self.helper.close()
        try:
            await self.recorder.close()
        except Exception:
            pass
        await self.upstream.close()
        await self.services.store.close()
        if self.listeners is not None:
            self.listeners.close()
        self._servers, self._runners, self._tasks = [], [], []

    async def _start(self) -> None:
        watch = asyncio.create_task(self._watch_start(), name="start-watch")
        try:
            await self._start_steps()
        finally:
            watch.cancel()

    async def _watch_start(self) -> None:
        """A start-up that takes long says which step it is waiting on, every few seconds."""
        began = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(_START_SLOW_SECONDS)
            waited = round(asyncio.get_running_loop().time() - began, 1)
            self.log.warning("relay_start_slow", step=self._step, waited=waited, pid=os.getpid())

    async def _start_steps(self) -> None:
        if self.listeners is None:
            self.listeners = bind_listeners(self.config, http=self.http)
        listeners = self.listeners
        self._step = "store"
        await self.services.store.open()
        self._step = "delivery_ids"
        await self.pipeline.delivery_ids.refill()
        if self.helper is not None:
            self._step = "helper"
            await self.helper.start()
        self.recorder.start()
        self._step = "upstream_probe"
        await self._check_upstream()
        self._step = "listeners"
        tls = listener_tls_context(self.config)
        smtp = self.config.smtp
        for sock in listeners.of("smtp"):
            self._servers.append(await self._listen(sock, tls_context=tls, implicit=False))
        self.smtp_port = listeners.port("smtp")
        if tls is not None:
            for sock in listeners.of("tls"):
                self._servers.append(await self._listen(sock, tls_context=tls, implicit=True))
            self.tls_port = listeners.port("tls")
        if self.http and listeners.of("admin"):
            app = build_admin_app(self.services, self.readiness, self.pipeline)
            for feature in self.features:
                feature.add_admin_routes(app)
            await self._serve_http(app, listeners.of("admin"))
            self.admin_port = listeners.port("admin")
        if self.http and listeners.of("public"):
            public = web.Application(client_max_size=1024 * 1024)
            for feature in self.features:
                feature.add_public_routes(public)
            await self._serve_http(public, listeners.of("public"))
            self.public_port = listeners.port("public")
        if self.background:
            self._tasks.append(asyncio.create_task(self.outbox.run(), name="outbox"))
            self._tasks.append(asyncio.create_task(self._watch_upstream(), name="upstream-probe"))
            self._tasks.append(asyncio.create_task(self._watch_gauges(), name="gauges"))
            for feature in self.features:
                for coro in feature.background_tasks():
                    self._tasks.append(asyncio.create_task(coro, name=feature.name))
        self._step = "gauges"
        await self._refresh_gauges()
        self._step = "started"
        self.log.info(
            "relay_started", smtp=self.smtp_port, tls=self.tls_port, admin=self.admin_port, public=self.public_port,
            profile=self.config.policy.profile, mode=self.config.policy.mode, pid=os.getpid(),
        )

    async def _listen(
        self, sock: socket.socket, *, tls_context: ssl.SSLContext | None, implicit: bool
    ) -> asyncio.base_events.Server | BalancedServer:
        smtp = self.config.smtp
        loop = asyncio.get_running_loop()

        factory = RelaySMTP.factory(
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
        if self.balance is not None:
            return BalancedServer(sock, factory, self.balance, ssl_context=tls_context if implicit else None)
        return await loop.create_server(factory, sock=sock, ssl=tls_context if implicit else None)

    async def _serve_http(self, app: web.Application, socks: list[socket.socket]) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        for sock in socks:
            await web.SockSite(runner, sock).start()

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
            # Issue 21: after a burst (clients retrying once the upstream is back) the freed heap
            # stayed in the process; a trim every half minute gives it back (about a millisecond).
            give_back_free_memory()

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
                session.close_with(replies.SHUTTING_DOWN)
        try:
            async with asyncio.timeout(grace):
                while any(s.busy for s in self.limits.sessions):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            self.log.warning("shutdown_grace_expired", sessions=len(self.limits.sessions))
        for session in list(self.limits.sessions):
            session.close_with(replies.SHUTTING_DOWN)
        for server in self._servers:
            await server.wait_closed()
        # The copy being sent finishes; the other claimed copies are given back at once, not when
        # their lease runs out.
        await self.outbox.stop(timeout=max(1.0, grace))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for runner in self._runners:
            await runner.cleanup()
        for feature in self.features:
            await feature.close()
        if self.helper is not None:
            await self.helper.close()
        await self.recorder.close()
        await self.upstream.close()
        await self.services.store.close()
        self.log.info("relay_stopped")


async def serve(config: Config, worker_index: int | None = None, inherited: str | None = None) -> int:
    """`consent-relay serve`: 0 after a SIGTERM/SIGINT drain, 1 when it cannot start (the reason in
    one line on stderr, nothing left running). A worker (`worker_index`) gets its sockets, the
    state lock and a line to its parent from the parent (`inherited`)."""
    configure_logging(config.logging.level, config.logging.log_recipients)
    if worker_index is None:  # the process started by hand, not each of its workers
        for key, problem in config_warnings(config):
            get_logger().warning("config_warning", key=key, detail=problem)
    from relay.process.state_lock import StateLocked, acquire_state_lock

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker_index is not None:
        from relay.process.supervisor import WorkerLink

        link = WorkerLink.from_spec(inherited or "{}")
        link.watch_parent(stop.set)
        board = link.board
        return await _serve_one(
            config, link.listeners, stop, http=worker_index == 0, on_started=link.started,
            balance=(board, worker_index) if board is not None else None,
        )
    try:
        lock = await _until_stopped(acquire_state_lock(config), stop)
    except (StateLocked, StoreUnavailable) as exc:
        print(f"consent-relay: error: {exc}", file=sys.stderr)
        return 1
    if lock is None:
        return 0
    if stop.is_set():  # stopped while the lock was being taken
        await lock.release()
        return 0
    try:
        try:
            listeners = bind_listeners(config)
        except ListenError as exc:
            print(f"consent-relay: error: {exc}", file=sys.stderr)
            return 1
        # `workers = "auto"` was resolved when the config was loaded: say to what (once the relay
        # can start, so that a refusal stays one line).
        get_logger().info(
            "relay_workers", workers=config.smtp.worker_count, usable_cores=usable_cores(),
            helper_process=helper_enabled(config.smtp),
        )
        if config.smtp.worker_count > 1:
            from relay.process.supervisor import Supervisor

            return await Supervisor(config, listeners, lock, stop).run()
        return await _serve_one(config, listeners, stop, http=True)
    finally:
        await lock.release()


async def _until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None when a SIGTERM/SIGINT came first (the work is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is None:
        # The work finished after all (something inside it outlived the cancel): hand it back so
        # the caller stops what was started, rather than leaving it running unseen.
        return task.result()
    return None


async def _serve_one(
    config: Config,
    listeners: Listeners,
    stop: asyncio.Event,
    *,
    http: bool,
    on_started: Callable[[], None] | None = None,
    balance: tuple[LoadBoard, int] | None = None,
) -> int:
    log = get_logger()
    try:
        relay = Relay(config, listeners=listeners, http=http, balance=balance)
    except BaseException:
        listeners.close()
        raise
    try:
        started = await _until_stopped(_started(relay), stop)
    except StoreUnavailable as exc:
        print(f"consent-relay: error: store: {exc}", file=sys.stderr)
        return 1
    if started is None:  # stopped during start-up: start() has undone itself
        return 0
    if on_started is not None:
        on_started()
    await stop.wait()
    log.info("relay_draining", grace=config.smtp.shutdown_grace)
    await relay.stop()
    return 0


async def _started(relay: Relay) -> bool:
    await relay.start()
    return True
