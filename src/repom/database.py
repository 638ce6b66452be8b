"""``Database`` and ``AsyncDatabase``: one engine and one session factory each.

A database object owns its engine (created lazily, on first use) and a session factory with
``expire_on_commit=False``.  Nothing global blocks a second database: create as many objects as
you need.  The module-level API (:mod:`repom.session`, :mod:`repom.async_session`) uses the
default objects returned by :func:`get_database` / :func:`get_async_database`, which tests and
applications can replace with :func:`set_database` / :func:`set_async_database`.

For tests, :meth:`Database.bind` points every session the object makes at one connection (with
``join_transaction_mode="create_savepoint"``), so application code under test commits and rolls
back inside the test's outer transaction (see :mod:`repom.testing`).

This module is the public face of the databases layer (:mod:`repom._database`, below the
transactions): it gives ``Database.transaction()`` its implementation and holds the
compatibility :class:`DatabaseManager`, both of which are built on :mod:`repom.transactions`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from repom._database import (
    AsyncDatabase,
    Database,
    get_async_database,
    get_database,
    register_transaction_factory,
    reset_default_databases,
    set_async_database,
    set_database,
)
from repom.transactions import Propagation, transaction

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from repom.config import RepomConfig

__all__ = [
    "AsyncDatabase",
    "Database",
    "DatabaseManager",
    "get_async_database",
    "get_database",
    "reset_default_databases",
    "set_async_database",
    "set_database",
]

register_transaction_factory(transaction)


class DatabaseManager:
    """The compatibility ``DatabaseManager``, as a thin face over :class:`AsyncDatabase`.

    ``await initialize()`` builds (or adopts) the database and verifies it with ``SELECT 1``;
    ``async with get_session() as s`` commits on success, rolls back on error, always closes;
    ``await close()`` disposes the engine.
    """

    def __init__(
        self,
        database: AsyncDatabase | None = None,
        *,
        url: str | None = None,
        config: RepomConfig | None = None,
    ) -> None:
        self._database = database
        self._url = url
        self._config = config
        self.engine: AsyncEngine | None = None
        self.session_factory: Callable[[], AsyncSession] | None = None

    @property
    def database(self) -> AsyncDatabase:
        if self._database is None:
            if self._url is None and self._config is None:
                self._database = get_async_database()
            else:
                self._database = AsyncDatabase(self._url, config=self._config)
        return self._database

    async def initialize(self) -> None:
        database = self.database
        await database.ping()
        self.engine = database.engine
        self.session_factory = database.session

    @asynccontextmanager
    async def get_session(self) -> AsyncIterator[AsyncSession]:
        if self.session_factory is None:
            raise RuntimeError("DatabaseManager not initialized: await initialize() first")
        async with transaction(
            database=self.database, propagation=Propagation.REQUIRES_NEW
        ) as session:
            yield session

    async def close(self) -> None:
        if self._database is not None:
            await self._database.dispose()
        self.engine = None
        self.session_factory = None
