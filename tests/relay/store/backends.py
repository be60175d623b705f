"""What the store tests share: every backend as a parametrised fixture (`any_store`), imported by the
test modules that use it (a conftest.py here would shadow tests/conftest.py, which tests import)."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from relay.config import StoreConfig
from relay.store import open_store_for
from relay.store.base import Store

BACKENDS = ["sqlite"] + (["postgresql"] if importlib.util.find_spec("relay.store.postgres") else [])


async def _postgres_url() -> tuple[str, Any]:
    import asyncpg

    name = "relay_test_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect("postgresql://127.0.0.1:5432/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')

    async def drop() -> None:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    return f"postgresql://127.0.0.1:5432/{name}", drop


@pytest.fixture(params=BACKENDS)
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/var/relay.db"
    else:
        url, drop = await _postgres_url()
    s = open_store_for(StoreConfig(url=url, timeout=5))
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        if drop is not None:
            await drop()
