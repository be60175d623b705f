"""Open the configured store: SQLite by default, PostgreSQL to scale out."""

from __future__ import annotations

from relay.config import StoreConfig, sqlite_path
from relay.store.base import Store


def open_store_for(config: StoreConfig) -> Store:
    """Build (not yet open) the store named by `[store] url`."""
    if config.is_sqlite:
        from relay.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(config.url), config.timeout)
    from relay.store.postgres import PostgresStore

    return PostgresStore(config.url, config.timeout)
