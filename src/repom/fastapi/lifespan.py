"""Application lifespan: create the engines, verify them, dispose them at shutdown.

``FastAPI(lifespan=lifespan)`` is enough for an application that uses the default databases.
:class:`Lifespan` takes explicit databases and wraps the application's own lifespan::

    @asynccontextmanager
    async def my_lifespan(app):
        yield {"cache": ...}

    app = FastAPI(lifespan=Lifespan(my_lifespan, async_database=AsyncDatabase(url)))

Startup: attach the given databases to the app, find every database the app uses (attached, and
those its routes' session dependencies open), build their engines and run ``SELECT 1`` on each
(a failure aborts startup with the typed error); then enter the wrapped lifespan.  Shutdown, in
reverse: leave the wrapped lifespan, then dispose the pools of those databases and of the module
defaults (services decorated with ``@transactional`` use the defaults without a route showing it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from repom.config import get_config
from repom.database import AsyncDatabase, Database, get_async_database, get_database
from repom.exceptions import ConfigurationError
from repom.fastapi._databases import AnyDatabase, databases_in_use, use_databases
from repom.monitoring.budget import connection_budget
from repom.urls import mask_url

__all__ = ["Lifespan", "lifespan"]

logger = logging.getLogger("repom.fastapi")

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


async def ping(database: AnyDatabase) -> float:
    """``SELECT 1`` on *database* without blocking the event loop."""
    if isinstance(database, AsyncDatabase):
        return await database.ping()
    return await anyio.to_thread.run_sync(database.ping)


async def dispose(database: AnyDatabase) -> None:
    if isinstance(database, AsyncDatabase):
        await database.dispose()
    else:
        await anyio.to_thread.run_sync(database.dispose)


def _require_cursor_secret_in_production() -> None:
    config = get_config()
    if config.environment == "production" and config.cursor_secret is None:
        raise ConfigurationError(
            "environment=production needs REPOM_CURSOR_SECRET (environment, .env or CONFIG_HOOK): "
            "every worker process must sign keyset cursors with the same secret",
            variable="REPOM_CURSOR_SECRET",
        )


async def _log_budget(database: AnyDatabase) -> None:
    """Log pool size x workers against the server's and the role's connection limits."""
    if database.dialect_name != "postgresql" or database.bound_connection is not None:
        return
    try:
        if isinstance(database, AsyncDatabase):
            engine = database.engine
            async with engine.connect() as conn:
                budget = await conn.run_sync(
                    lambda sync: connection_budget(engine.sync_engine, connection=sync)
                )
        else:
            sync_db = database
            budget = await anyio.to_thread.run_sync(lambda: connection_budget(sync_db.engine))
    except Exception:  # the budget is advice: never fail startup for it
        logger.debug("could not read the connection budget", exc_info=True)
        return
    level = logging.WARNING if budget.fits is False else logging.INFO
    logger.log(level, "database %s connections: %s", database.name, budget.describe())


class Lifespan:
    """A FastAPI/Starlette lifespan that manages repom's databases (see the module docs).

    * ``inner`` -- the application's own lifespan (``app -> async context manager``); its state
      (the mapping it yields, if any) is passed through;
    * ``database`` / ``async_database`` -- attached to the app for its session dependencies;
    * ``verify`` -- ping every database the app uses at startup (default ``True``);
    * ``dispose`` -- dispose the pools at shutdown (default ``True``).
    """

    def __init__(
        self,
        inner: AppLifespan | None = None,
        *,
        database: Database | None = None,
        async_database: AsyncDatabase | None = None,
        verify: bool = True,
        dispose: bool = True,
    ) -> None:
        self.inner = inner
        self.database = database
        self.async_database = async_database
        self.verify = verify
        self.dispose = dispose

    def __call__(self, app: Any) -> AbstractAsyncContextManager[Any]:
        return self._run(app)

    def wrap(self, inner: AppLifespan) -> Lifespan:
        """The same settings around another application lifespan."""
        return Lifespan(
            inner,
            database=self.database,
            async_database=self.async_database,
            verify=self.verify,
            dispose=self.dispose,
        )

    @asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[Any]:
        if self.database is not None or self.async_database is not None:
            use_databases(app, database=self.database, async_database=self.async_database)
        databases = databases_in_use(app)
        _require_cursor_secret_in_production()
        try:
            if self.verify:
                for database in databases:
                    try:
                        latency = await ping(database)
                    except Exception as error:
                        logger.error(
                            "database %s is not reachable: %s", mask_url(database.url), error
                        )
                        raise
                    logger.info(
                        "database %s ready (%.1f ms)", mask_url(database.url), latency * 1000
                    )
                    await _log_budget(database)
            if self.inner is None:
                yield None
            else:
                async with self.inner(app) as state:
                    yield state
        finally:
            if self.dispose:
                await self._dispose(databases)

    @staticmethod
    async def _dispose(databases: list[AnyDatabase]) -> None:
        targets = list(databases)
        try:
            defaults: list[AnyDatabase] = [get_async_database(), get_database()]
        except Exception:  # an invalid configuration: nothing was built from it
            defaults = []
        for default in defaults:
            if all(default is not other for other in targets):
                targets.append(default)
        for database in targets:
            try:
                await dispose(database)
            except Exception:  # shutdown goes on; the error is worth a log line, not a crash
                logger.warning("disposing %r failed", database, exc_info=True)


#: ``FastAPI(lifespan=lifespan)``: default databases, verified at startup, disposed at shutdown.
lifespan = Lifespan()
