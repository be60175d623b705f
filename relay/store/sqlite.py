"""The embedded store: one SQLite file in WAL mode via aiosqlite, migrated on open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import aiosqlite

from relay.errors import StoreUnavailable
from relay.store.schema import migrate
from relay.store.sql import SQLITE, Row
from relay.store.sql_store import SqlStore

# Below this much free space on its file system the store reports itself not ready (/readyz).
MIN_FREE_BYTES = 1 << 20


class SqliteTransaction:
    """The writer connection inside BEGIN IMMEDIATE … COMMIT; its caller translates the errors.

    Each statement is one hand-off to the writer's thread, where it runs on the plain sqlite3
    connection (no aiosqlite cursor proxies); the BEGIN IMMEDIATE goes with the first statement
    rather than in a hand-off of its own (`begin`), and a transaction that ran no statement has
    nothing to commit."""

    def __init__(self, conn: aiosqlite.Connection, *, begin: bool = False) -> None:
        self.conn = conn
        self._begin = begin  # BEGIN IMMEDIATE is still to be sent, with the first statement
        self.begun = not begin
        self._failed_begin: BaseException | None = None

    async def _run(self, work: Callable[..., Any], *args: Any) -> Any:
        if self._failed_begin is not None:  # never run a statement of this transaction outside it
            raise self._failed_begin
        begin, self._begin = self._begin, False
        try:
            return await self.conn._execute(_statement, self.conn._conn, begin, work, args)
        except _BeginFailed as failed:
            self._failed_begin = failed.error
            raise failed.error from None
        finally:
            if begin and self._failed_begin is None:
                self.begun = True

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._run(_fetchall, sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(await self._run(_rowcount, sql, params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._run(sqlite3.Connection.executemany, sql, rows)

    async def insert_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return int(await self._run(_insert_rows, sql, rows))

    async def insert_at_once(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        await self._run(_insert_all, batches)


class _BeginFailed(Exception):
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _statement(conn: sqlite3.Connection, begin: bool, work: Callable[..., Any], args: Sequence[Any]) -> Any:
    """On the writer's thread: `work(conn, *args)`, after BEGIN IMMEDIATE when `begin`."""
    if begin:
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout here, off the event loop
        except sqlite3.Error as exc:
            raise _BeginFailed(exc) from exc
    return work(conn, *args)


def _fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Row]:
    return conn.execute(sql, params).fetchall()


def _rowcount(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return conn.execute(sql, params).rowcount


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    before = conn.total_changes
    conn.executemany(sql, rows)
    return conn.total_changes - before


def _insert_all(conn: sqlite3.Connection, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
    for sql, rows in batches:
        conn.executemany(sql, rows)


class SqliteDatabase:
    """A writer connection serialised by a lock, and a reader connection (WAL lets them overlap)."""

    dialect = SQLITE

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        # Single-statement writes waiting for the next group commit (with when each began to
        # wait), and the task committing them.
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], float]] = []
        self._committer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._while_busy(lambda: self._migrate(self._conn(True)))
            self._reader = await self._connect()
            self._point = self._connect_point_reader()
        except BaseException as exc:
            await self.close()  # a half-open store would keep its connection threads (and the process) alive
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc
            raise

    async def _connect(self) -> aiosqlite.Connection:
        opening = asyncio.ensure_future(aiosqlite.connect(self.path, isolation_level=None, timeout=self.timeout))
        try:
            conn = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The connection's thread opens the file whatever happens to us: let it finish and close
            # it, or it calls back into an event loop that has closed (a Ctrl-C during start-up).
            with contextlib.suppress(Exception):
                await (await opening).close()
            raise
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            await self._while_busy(lambda: self._enter_wal(conn))
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            await conn.close()
            raise
        return conn

    @staticmethod
    async def _enter_wal(conn: aiosqlite.Connection) -> None:
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode=WAL"))
        mode = str(rows[0][0]).lower() if rows else ""
        if mode != "wal":  # SQLite keeps the old mode, without an error, when it cannot switch
            raise sqlite3.OperationalError(f"cannot switch {conn} to WAL (journal_mode is {mode!r})")

    async def _while_busy(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Retry `attempt` while another connection holds the file, within the store's timeout.

        Fresh files are contended when several processes start at once (`[smtp] workers = N`), and
        SQLite answers some of that contention with an immediate SQLITE_BUSY that bypasses
        busy_timeout (switching to WAL needs an exclusive lock while another connection reads the
        header or runs WAL recovery), so the back-off is ours.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                await attempt()
                return
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                left = deadline - time.monotonic()
                if not busy or left <= 0:
                    raise
                await asyncio.sleep(min(delay * (1 + random.random()), left))
                delay = min(delay * 2, 0.2)

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for another instance's migration
        try:
            await migrate(SqliteTransaction(conn), SQLITE)
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise

    def _connect_point_reader(self) -> sqlite3.Connection:
        """A read-only connection used on the event loop itself, for reads through an index.

        aiosqlite hands every query to its thread and back: for a one-row lookup on every MAIL
        FROM the hand-offs cost far more than the lookup (an A/B in one benchmark run, two workers
        on two cores: +2-4% msg/s at concurrency 10, +9-10% at 50), and the same holds for the
        consent lookup of every recipient (docs/benchmarks.md, issue 20). Such a read touches a
        few pages (the account_state table; a few index and table pages per recipient) that the
        OS keeps cached, so it does not wait on the disk; WAL readers never wait for writers, and
        with busy_timeout 0 anything unusual fails at once and goes the threaded way instead.
        Only primary-key reads and indexed lookups of a few rows may come here."""
        conn = sqlite3.connect(
            f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=0")
        return conn

    async def close(self) -> None:
        if self._committer is not None:  # the writes already waiting are committed first
            with contextlib.suppress(Exception):
                await asyncio.shield(self._committer)
        if self._point is not None:
            self._point.close()
            self._point = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    def _conn(self, writer: bool) -> aiosqlite.Connection:
        conn = self._writer if writer else self._reader
        if conn is None:
            raise StoreUnavailable("store is not open")
        return conn

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            async with asyncio.timeout(self.timeout):
                return list(await self._conn(False).execute_fetchall(sql, params))
        except (sqlite3.Error, TimeoutError, ValueError) as exc:
            raise StoreUnavailable(f"store read failed: {exc or type(exc).__name__}") from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def _read_on_loop(self, sql: str, params: Sequence[Any]) -> list[Row] | None:
        """The rows read on the loop, no thread hand-off (see _connect_point_reader); None when
        that failed, for the threaded reader to try (and report a real failure)."""
        conn = self._point
        if conn is None:
            return None
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error:
            return None

    async def fetch_point(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """fetchone for a lookup by primary key, on the loop."""
        rows = self._read_on_loop(sql, params)
        if rows is None:
            return await self.fetchone(sql, params)
        return rows[0] if rows else None

    async def fetch_indexed(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """fetchall for a few rows found through an index, on the loop."""
        rows = self._read_on_loop(sql, params)
        return rows if rows is not None else await self.fetchall(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        """BEGIN IMMEDIATE … COMMIT on the writer; any failure rolls back and becomes StoreUnavailable."""
        conn = self._conn(True)
        try:
            async with asyncio.timeout(self.timeout):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise StoreUnavailable("store write lock timed out") from exc
        try:
            tx = SqliteTransaction(conn, begin=True)
            try:
                yield tx
                if tx.begun:
                    await conn._execute(_commit, conn._conn)
            except BaseException as exc:
                if tx.begun:
                    await conn._execute(_rollback, conn._conn)
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(f"store write failed: {exc}") from exc
                raise
        finally:
            self._lock.release()

    async def _grouped(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """`work` (statements on the writer's own sqlite3 connection, run on its thread) committed
        with the writes of every other caller waiting at that moment: one transaction, one fsync
        and one hand-off to the thread for all of them (group commit). Returns when the caller's
        rows are committed; raises StoreUnavailable when they are not (`_commit_group`)."""
        conn = self._conn(True)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future, time.monotonic()))
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_queued(conn))
        return await future

    async def _commit_queued(self, conn: aiosqlite.Connection) -> None:
        """Commit what waits, group after group, under the write lock (transaction() takes it too).
        A write waits for the lock at most the store's timeout from its own call, as in transaction()."""
        group: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], float]] = []
        try:
            while self._queued:
                try:
                    async with asyncio.timeout(self._queued[0][2] + self.timeout - time.monotonic()):
                        await self._lock.acquire()
                except TimeoutError as exc:
                    now = time.monotonic()
                    expired = [entry for entry in self._queued if entry[2] + self.timeout <= now]
                    self._queued = [entry for entry in self._queued if entry[2] + self.timeout > now]
                    _fail(expired, "store write lock timed out", exc)
                    continue
                try:
                    # Taken with the lock held: whatever arrived while it was busy joins this group.
                    group = [entry for entry in self._queued if not entry[1].done()]
                    self._queued = []
                    if group:
                        outcomes = await conn._execute(_commit_group, conn._conn, [work for work, _, _ in group])
                        for (_, future, _), (ok, value) in zip(group, outcomes):
                            if future.done():
                                continue  # its caller was cancelled
                            if ok:
                                future.set_result(value)
                            elif isinstance(value, sqlite3.Error):
                                _fail([(None, future, 0.0)], f"store write failed: {value}", value)
                            else:
                                future.set_exception(value)
                    group = []
                finally:
                    self._lock.release()
        except asyncio.CancelledError as exc:  # with the loop: the waiting callers are told, not left hanging
            _fail(group + self._queued, "store write interrupted", exc)
            self._queued = []
            raise
        except Exception as exc:  # the connection closed under us (ValueError), or a bug of ours
            _fail(group + self._queued, f"store write failed: {exc or type(exc).__name__}", exc)
            self._queued = []
        finally:
            self._committer = None

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(await self._grouped(lambda c: c.execute(sql, params).rowcount))

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._grouped(lambda c: c.execute(sql, params).fetchall()))

    async def insert_at_once(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        if batches:
            await self._grouped(lambda c: _insert_all(c, batches))


def _fail(waiting: Sequence[tuple[Any, asyncio.Future[Any], float]], message: str, cause: BaseException) -> None:
    for _, future, _ in waiting:
        if not future.done():
            error = StoreUnavailable(message)  # one each: a raise writes its traceback into the exception
            error.__cause__ = cause
            future.set_exception(error)


def _commit_group(conn: sqlite3.Connection, works: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
    """On the writer's thread: every work of a group in one BEGIN IMMEDIATE … COMMIT, each outcome
    `(True, result)` or `(False, exception)`. A work that fails is dropped and the others run again
    in a fresh transaction, so a caller's bad rows fail that caller alone; a BEGIN or COMMIT that
    fails (the file busy beyond busy_timeout, the disk full, an I/O error) fails every work of
    the transaction, none of whose rows were kept."""
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(works)
    left = list(range(len(works)))
    while left:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            for i in left:
                outcomes[i] = (False, exc)
            return outcomes
        results: list[Any] = []
        failed: tuple[int, Exception] | None = None
        for i in left:
            try:
                results.append(works[i](conn))
            except Exception as exc:
                failed = i, exc
                break
        if failed is None:
            try:
                conn.execute("COMMIT")
            except Exception as exc:
                _rollback(conn)
                for i in left:
                    outcomes[i] = (False, exc)
                return outcomes
            for i, result in zip(left, results):
                outcomes[i] = (True, result)
            return outcomes
        _rollback(conn)
        outcomes[failed[0]] = (False, failed[1])
        left.remove(failed[0])
    return outcomes


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class SqliteStore(SqlStore):
    db: SqliteDatabase

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        super().__init__(SqliteDatabase(path, timeout))

    async def check_writable(self) -> None:
        # A small write can still succeed on a full disk (SQLite reuses the space of its WAL file),
        # while the next message, its outbox row or its delivery record would not fit: look at the
        # file system itself first.
        folder = self.db.path.parent
        try:
            fs = os.statvfs(folder)
        except OSError as exc:
            raise StoreUnavailable(f"cannot inspect the store's file system {folder}: {exc}") from exc
        if fs.f_flag & os.ST_RDONLY:
            raise StoreUnavailable(f"the store's file system {folder} is read-only")
        free = fs.f_bavail * fs.f_frsize
        if free < MIN_FREE_BYTES:
            raise StoreUnavailable(f"the store's file system {folder} is full ({free} bytes free)")
        await super().check_writable()
