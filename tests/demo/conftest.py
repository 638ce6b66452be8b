"""The demo service under test: migrated and seeded, driven over HTTP (ASGI transport).

The demo uses repom's *default* databases (as a real service does), so each test installs its
own: a SQLite file, or a private PostgreSQL schema (search_path), torn down afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from examples.bank_blog.app import create_app
from examples.bank_blog.bootstrap import Seeded, migrate, seed
from repom.config import RepomConfig, set_config
from repom.database import AsyncDatabase, set_async_database, set_database
from tests.fastapi._support import Backend, make_backend, sync_engine_of


@dataclass
class Demo:
    backend: Backend
    app: FastAPI
    client: httpx.AsyncClient
    database: AsyncDatabase
    seeded: Seeded

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return self.backend.rows(sql, **params)

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.rows(sql, **params)[0][0]

    @property
    def checked_out(self) -> int:
        return sync_engine_of(self.database).pool.checkedout()


@pytest.fixture
async def backend(db_url: str, tmp_path: Path) -> AsyncIterator[Backend]:
    with make_backend(db_url, tmp_path) as made:
        try:
            yield made
        finally:
            await made.dispose_all()


async def start_demo(backend: Backend, **pool: Any) -> tuple[AsyncDatabase, Seeded]:
    """Make *backend* the default database, migrate it, seed it."""
    set_config(RepomConfig(database_url=backend.sync_url))
    sync_db = backend.database()
    async_db = backend.async_database(**pool)
    set_database(sync_db)
    set_async_database(async_db)
    with sync_db.engine.connect() as connection:
        assert migrate(connection=connection) == ["bank and blog"]
    seeded = await seed(async_db, users=6)
    assert seeded is not None
    return async_db, seeded


@pytest.fixture
async def demo(backend: Backend) -> AsyncIterator[Demo]:
    database, seeded = await start_demo(backend)
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            yield Demo(backend, app, client, database, seeded)
