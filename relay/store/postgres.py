"""The shared store: PostgreSQL via an asyncpg pool, migrated on open, same behaviour as the SQLite store.

Several relay instances may share one database: migrations serialise on an advisory lock,
outbox leases use FOR UPDATE SKIP LOCKED, ids and rate buckets change in single locked steps.
Server settings such as `?search_path=tenant` can ride on the URL's query string.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, AsyncIterator, Iterable, Sequence

import asyncpg

from relay.errors import StoreUnavailable
from relay.store.schema import migrate
from relay.store.sql import POSTGRES, Row, numbered
from relay.store.sql_store import SqlStore

# Errors that mean "the database cannot answer right now"; callers see StoreUnavailable.
_DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# One fixed key for every instance: whoever migrates first holds it, the others wait, then see
# the new version and do nothing.
_MIGRATION_LOCK = 0x636F6E73656E74  # "consent"
_MIGRATION_TIMEOUT = 60.0  # a migration may rewrite tables; the per-query timeout is for traffic


def _count(status: str) -> int:
    """Rows affected, from a command tag such as 'UPDATE 3' or 'INSERT 0 1'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@asynccontextmanager
async def _guard(timeout: float, what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(timeout):
            yield
    except _DB_ERRORS as exc:
        raise StoreUnavailable(f"store {what} failed: {exc or type(exc).__name__}") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default RESET ALL / UNLISTEN round trip (it doubled the cost of a
    pooled query). Safe because the store never changes session state: no SET, LISTEN, cursors or
    session advisory locks; asyncpg still rolls back a transaction left open."""


class PgTransaction:
    """The connection of one open transaction; every statement gets the store's timeout."""

    def __init__(self, conn: asyncpg.Connection, timeout: float, what: str = "write") -> None:
        self.conn = conn
        self.timeout = timeout
        self.what = what

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with _guard(self.timeout, self.what):
            return list(await self.conn.fetch(numbered(sql), *params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with _guard(self.timeout, self.what):
            return await self.conn.fetchrow(numbered(sql), *params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with _guard(self.timeout, self.what):
            return _count(str(await self.conn.execute(numbered(sql), *params)))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with _guard(self.timeout, self.what):
            await self.conn.executemany(numbered(sql), rows)

    async def insert_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return await self.execute(sql, _columns(rows))

    async def insert_at_once(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        if batches:
            await self.execute(*_one_statement(batches))


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The arrays of a `Dialect.insert_rows` statement: one per column."""
    return [list(column) for column in zip(*rows)]


def _one_statement(batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> tuple[str, list[list[Any]]]:
    """`Dialect.insert_rows` statements as one, and its parameters: one round trip."""
    return _with_queries(tuple(sql for sql, _ in batches)), [column for _, rows in batches for column in _columns(rows)]


@lru_cache(maxsize=64)
def _with_queries(statements: tuple[str, ...]) -> str:
    """All but the last statement as data-modifying WITH queries."""
    *first, last = statements
    return f"WITH {', '.join(f'_w{i} AS ({sql})' for i, sql in enumerate(first))} {last}" if first else last


def _merged(
    groups: Iterable[Sequence[tuple[str, Sequence[Sequence[Any]]]]],
) -> list[tuple[str, list[Sequence[Any]]]]:
    """The batches of several insert_at_once calls as one: the rows of each statement together,
    the statements in the order they first appear."""
    merged: dict[str, list[Sequence[Any]]] = {}
    for batches in groups:
        for sql, rows in batches:
            merged.setdefault(sql, []).extend(rows)
    return list(merged.items())


def _fail(waiting: Sequence[tuple[Any, asyncio.Future[None]]], error: StoreUnavailable) -> None:
    for _, future in waiting:
        if not future.done():
            own = StoreUnavailable(str(error))  # one each: a raise writes its traceback into the exception
            own.__cause__ = error.__cause__
            future.set_exception(own)


class PostgresDatabase:
    """An asyncpg pool; reads run on any pooled connection, writes in explicit transactions."""

    dialect = POSTGRES

    def __init__(self, url: str, timeout: float, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.timeout = timeout
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        # insert_at_once calls waiting for the next group commit, and the task writing them.
        self._queued: list[tuple[Sequence[tuple[str, Sequence[Sequence[Any]]]], asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                pool = await asyncpg.create_pool(
                    self.url, min_size=self.min_size, max_size=self.max_size, reset=_keep_session
                )
        except (*_DB_ERRORS, ValueError) as exc:  # ValueError: a malformed URL
            raise StoreUnavailable(f"cannot open PostgreSQL store: {exc or type(exc).__name__}") from exc
        try:
            async with _guard(max(self.timeout, _MIGRATION_TIMEOUT), "migration"):
                async with pool.acquire() as conn:
                    await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await migrate(PgTransaction(conn, _MIGRATION_TIMEOUT, "migration"), POSTGRES)

    async def close(self) -> None:
        if self._committer is not None:  # the rows already waiting are written first
            with contextlib.suppress(Exception):
                await asyncio.shield(self._committer)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            except _DB_ERRORS:
                pool.terminate()

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        return self._pool

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        pool = self._require()
        async with _guard(self.timeout, "read"):
            return list(await pool.fetch(numbered(sql), *params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        pool = self._require()
        async with _guard(self.timeout, "read"):
            return await pool.fetchrow(numbered(sql), *params)

    fetch_point = fetchone
    fetch_indexed = fetchall

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own (implicit) transaction; returns the rows it affected."""
        pool = self._require()
        async with _guard(self.timeout, "write"):
            return _count(str(await pool.execute(numbered(sql), *params)))

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        pool = self._require()
        async with _guard(self.timeout, "write"):
            return list(await pool.fetch(numbered(sql), *params))

    async def insert_at_once(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """One statement, so one round trip and one (implicit) transaction, shared with the calls
        waiting at that moment (group commit): their rows go in the same statement, one commit
        for all of them. Returns when this caller's rows are committed."""
        if not batches:
            return
        self._require()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((batches, future))
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._insert_queued())
        await future

    async def _insert_queued(self) -> None:
        group: list[tuple[Sequence[tuple[str, Sequence[Sequence[Any]]]], asyncio.Future[None]]] = []
        try:
            while self._queued:
                group = [(batches, future) for batches, future in self._queued if not future.done()]
                self._queued = []
                if len(group) > 1:
                    try:
                        await self.write(*_one_statement(_merged(batches for batches, _ in group)))
                    except StoreUnavailable as exc:
                        if not isinstance(exc.__cause__, asyncpg.PostgresError):
                            _fail(group, exc)  # the database did not answer: nothing was written
                            group = []
                            continue
                        # The database refused the rows (one caller's bad row, or two callers'
                        # rows for one key): each caller's on their own, for their own answer.
                        for batches, future in group:
                            if future.done():
                                continue
                            try:
                                await self.write(*_one_statement(batches))
                            except StoreUnavailable as own:
                                _fail([(batches, future)], own)
                            else:
                                future.set_result(None)
                        group = []
                        continue
                elif group:
                    try:
                        await self.write(*_one_statement(group[0][0]))
                    except StoreUnavailable as exc:
                        _fail(group, exc)
                        group = []
                        continue
                for _, future in group:
                    if not future.done():
                        future.set_result(None)
                group = []
        except BaseException as exc:  # cancelled with the loop, or a bug of ours: nobody is left waiting
            _fail(group + self._queued, StoreUnavailable(f"store write interrupted: {exc!r}"))
            self._queued = []
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._committer = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """BEGIN … COMMIT on one pooled connection; any failure rolls back (errors become StoreUnavailable)."""
        pool = self._require()
        async with _guard(self.timeout, "connect"):
            conn = await pool.acquire()
        try:
            tx = conn.transaction()
            async with _guard(self.timeout, "write"):
                await tx.start()
            try:
                yield PgTransaction(conn, self.timeout)
            except BaseException:
                try:
                    async with asyncio.timeout(self.timeout):
                        await tx.rollback()
                except _DB_ERRORS:
                    pass  # a broken connection is discarded by the pool on release
                raise
            async with _guard(self.timeout, "commit"):
                await tx.commit()
        finally:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.release(conn)
            except _DB_ERRORS:
                conn.terminate()


class PostgresStore(SqlStore):
    db: PostgresDatabase

    def __init__(self, url: str, timeout: float = 5.0, *, min_size: int = 1, max_size: int = 10) -> None:
        super().__init__(PostgresDatabase(url, timeout, min_size=min_size, max_size=max_size))
