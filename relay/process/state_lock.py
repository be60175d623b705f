"""One `consent-relay serve` per store: a lock file next to the SQLite file, a session advisory lock
on PostgreSQL, unless `[store] shared = true` declares this relay one of several instances of a
PostgreSQL deployment. Workers inherit the lock file, so it is held until the last of them exits."""

from __future__ import annotations

import asyncio
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.config import Config
from relay.errors import RelayError, StoreUnavailable


class StateLocked(RelayError):
    """Another relay holds this store."""


@dataclass
class StateLock:
    fd: int | None = None  # the SQLite lock file, inherited by workers
    pg: Any = None  # the PostgreSQL connection holding the advisory lock

    async def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.pg is not None:
            conn, self.pg = self.pg, None
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()


def sqlite_lock_path(config: Config) -> Path:
    from relay.config import sqlite_path

    return Path(f"{sqlite_path(config.store.url)}.lock")


async def acquire_state_lock(config: Config) -> StateLock:
    if config.store.shared:
        return StateLock()
    if config.store.is_sqlite:
        return _lock_file(sqlite_lock_path(config))
    return await _lock_postgres(config)


def _lock_file(path: Path) -> StateLock:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreUnavailable(f"cannot open the lock file {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise StateLocked(
            f"another consent-relay serve (pid {holder}) is running on this store (lock {path}); stop it first"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd=fd)


async def _lock_postgres(config: Config) -> StateLock:
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(config.store.url), config.store.timeout)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError, ValueError) as exc:
        raise StoreUnavailable(f"cannot open PostgreSQL store: {exc or type(exc).__name__}") from exc
    try:
        # One key per database and schema: other schemas (other deployments, tests) do not collide.
        got = await conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended('consent-relay serve ' || current_database() || '.' "
            "|| current_schema(), 0))"
        )
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        conn.terminate()
        raise StoreUnavailable(f"cannot take the PostgreSQL store's lock: {exc}") from exc
    except BaseException:
        conn.terminate()
        raise
    holder = None
    if not got:
        try:  # only to name the holder in the error
            holder = await conn.fetchval(
                "SELECT string_agg(a.client_addr::text || ' pid ' || a.pid, ', ') FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.objid = (hashtextextended('consent-relay serve ' || current_database() || '.' || "
                "current_schema(), 0) & 4294967295)::oid"
            )
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            pass
    if not got:
        conn.terminate()
        raise StateLocked(
            f"another consent-relay serve is running on this PostgreSQL store (session {holder or '?'}); stop it "
            "first, or set [store] shared = true in every instance of a shared deployment"
        )
    return StateLock(pg=conn)
