"""The one place where SQLite and PostgreSQL differ. Every query of the store is written once, with
SQLite's `?` marks; a `Database` (relay/store/sqlite.py, relay/store/postgres.py) runs it, and the
PostgreSQL one numbers the marks (`$1`, `$2` …, `numbered`). What cannot be written the same way on
both is a member of `Dialect`: IN lists, bulk inserts, row locks, empty blobs, JSON, the DDL types."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, AsyncContextManager, Protocol, Sequence

Row = Any  # sqlite3.Row or asyncpg.Record: both index by column name and by position

# A quoted literal is skipped (it may hold a `?`); a mark is `?` or `?N` (SQLite's numbered form).
_MARK = re.compile(r"'(?:[^']|'')*'|\?(\d*)")


@lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """`?` marks as `$1`, `$2` …; a `?N` mark as `$N`. Cached: the store's statements are few."""
    count = 0

    def mark(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0).startswith("'"):
            return match.group(0)
        if match.group(1):
            return f"${match.group(1)}"
        count += 1
        return f"${count}"

    return _MARK.sub(mark, sql)


@lru_cache(maxsize=256)
def _in_list(column: str, count: int) -> str:
    return f"{column} IN ({','.join('?' * count)})"


@lru_cache(maxsize=64)
def _any_array(column: str, kind: str) -> str:
    return f"{column} = ANY(CAST(? AS {kind}[]))"


@dataclass(frozen=True, eq=False)  # two instances, SQLITE and POSTGRES, compared by identity
class Dialect:
    name: str
    arrays: bool  # a parameter may be an array: IN lists and bulk inserts take one per column
    max_in_list: int  # without arrays, values per `IN (?, …)` list
    is_distinct: str  # the null-safe "differs from"
    empty_blob: str
    for_update: str  # locks the rows a SELECT returns until the transaction ends
    skip_locked: str  # … passing over rows another transaction holds (a queue)
    json_array_has_template: str  # the JSON array of strings in {column} holds the parameter
    ddl_types: dict[str, str]  # the type names of relay/store/schema.py's migrations
    # Run first in a transaction whose queue read must walk an index in its order and stop at the
    # limit, whatever the table's statistics say ("" when the planner needs no telling).
    ordered_reads: str

    def any_of(self, column: str, values: Sequence[Any], kind: str = "text") -> tuple[str, list[Any]]:
        """`column` equal to one of `values` (at most `max_in_list` of them): the SQL and its parameters.
        `kind` is the values' PostgreSQL type."""
        if self.arrays:
            return _any_array(column, kind), [list(values)]
        return _in_list(column, len(values)), list(values)

    def chunks(self, values: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """`values` in pieces small enough for one `any_of` (on the path of every recipient: most
        often one piece, the values themselves)."""
        if not values:
            return ()
        if self.arrays or len(values) <= self.max_in_list:
            return (values,)
        size = self.max_in_list
        return [values[i : i + size] for i in range(0, len(values), size)]

    def json_array_has(self, column: str) -> str:
        return self.json_array_has_template.format(column=column)

    def insert_rows(self, table: str, columns: Sequence[str], kinds: Sequence[str], tail: str = "") -> str:
        """An INSERT of many rows for `Transaction.insert_rows`: one statement over one array per column
        (`kinds` are the columns' PostgreSQL types), or one VALUES row run once per row (executemany)."""
        if self.arrays:
            source = "SELECT * FROM unnest(" + ", ".join(f"CAST(? AS {k}[])" for k in kinds) + ")"
        else:
            source = f"VALUES ({','.join('?' * len(columns))})"
        return f"INSERT INTO {table} ({', '.join(columns)}) {source}{' ' + tail if tail else ''}"


SQLITE = Dialect(
    name="sqlite",
    arrays=False,
    max_in_list=500,  # SQLite's host-parameter limit is 32766; keep IN lists modest
    is_distinct="IS NOT",
    empty_blob="x''",
    for_update="",  # BEGIN IMMEDIATE already holds the whole file
    skip_locked="",
    json_array_has_template="EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)",
    ddl_types={
        "ID": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT": "INTEGER",
        "REAL": "REAL",
        "BLOB": "BLOB",
        "SORTED": "TEXT",
    },
    ordered_reads="",  # an index's rows come in (key, rowid) order: the claims' ORDER BY is the index's
)

# Types map from SQLite's: AUTOINCREMENT -> identity, INTEGER -> BIGINT, REAL -> DOUBLE PRECISION,
# BLOB -> BYTEA. Times and JSON stay TEXT so relay/store/rows.py serves both. Text that is ordered
# or range-compared (ISO times, cursor ids) is COLLATE "C": byte order, as SQLite compares, whatever
# the database's default collation.
POSTGRES = Dialect(
    name="postgresql",
    arrays=True,
    max_in_list=0,
    is_distinct="IS DISTINCT FROM",
    empty_blob="''::bytea",
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    json_array_has_template="{column}::jsonb @> jsonb_build_array(CAST(? AS text))",
    ddl_types={
        "ID": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "BIGINT": "BIGINT",
        "REAL": "DOUBLE PRECISION",
        "BLOB": "BYTEA",
        "SORTED": 'TEXT COLLATE "C"',
    },
    # A queue table is empty most of the time and grows fast when the upstream is away: with no
    # statistics for its size (never analysed, or analysed near empty) the planner takes the due
    # copies for a few dozen and reads and sorts every one of them for a claim of 80 (120 ms a
    # claim at 100,000 queued, the drain's store time); the ordered index scan stops at the limit.
    ordered_reads="SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off",
)


class Transaction(Protocol):
    """The statements of one open write transaction; any failure rolls the whole of it back."""

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def insert_rows(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run a `Dialect.insert_rows` statement for these rows; the number of rows it changed."""

    async def insert_at_once(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Several `Dialect.insert_rows` statements with their rows, in one statement where the database
        allows it (PostgreSQL: data-modifying WITH queries)."""


class Database(Protocol):
    """A store's connection(s). Library errors come out as StoreUnavailable."""

    dialect: Dialect

    async def open(self) -> None:
        """Connect and run the migrations (safe when several instances start at once)."""

    async def close(self) -> None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetch_point(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """fetchone for a lookup by primary key, on the path of every message."""

    async def fetch_indexed(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """fetchall for a few rows found through an index, on the path of every recipient."""

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in a transaction of its own; the number of rows it changed."""

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One statement with RETURNING in a transaction of its own; the rows it returned."""

    async def insert_at_once(self, batches: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """`Transaction.insert_at_once` in a transaction of its own, one round trip where the database allows."""

    def transaction(self) -> AsyncContextManager[Transaction]: ...
