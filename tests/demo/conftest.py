"""The demo service under test: migrated and seeded, driven over HTTP (ASGI transport).

Most tests run on repom.testing's isolation: the demo's Alembic migrations build the schema once
per session (a SQLite file in pytest's temporary directory, a PostgreSQL schema of its own), and
each test runs in one transaction that is rolled back afterwards.  The demo uses repom's *default*
async database (as a real service does); the fixtures bind it to the test's connection, so the
seed, the requests of ``repom_async_client`` and the test's own checks all share that transaction
(the application's commits release savepoints).  ``async_db_test`` is overridden here to run once
per backend, ``repom_app`` builds the demo's app, and ``api`` is the seeded demo.

A few tests need what a rolled-back transaction cannot give -- a real COMMIT, several
connections, the pool's own figures -- and use ``demo`` instead (so does test_demo_command.py): a
database of their own (SQLite file / private PostgreSQL schema) migrated, seeded and committed to
for real, checked with a separate connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncSession

from examples.bank_blog.app import create_app
from examples.bank_blog.bootstrap import ALEMBIC_INI, Seeded, migrate, seed
from repom.config import RepomConfig, set_config
from repom.database import AsyncDatabase, get_async_database, set_async_database, set_database
from repom.testing import create_async_test_fixtures
from tests.fastapi._support import Backend, make_backend, sync_engine_of
from tests.support import require_postgres

# --------------------------------------------------------------------------- isolated (default)

# The schema comes from the demo's own migrations (upgrade head, once per session and backend).
demo_sqlite_engine, demo_sqlite = create_async_test_fixtures(
    alembic=ALEMBIC_INI, engine_fixture="demo_sqlite_engine", session_fixture="demo_sqlite"
)
demo_pg_engine, demo_pg = create_async_test_fixtures(
    db_url=require_postgres,  # skips locally / fails in CI when the server is down
    alembic=ALEMBIC_INI,
    schema="repom_demo_api",
    engine_fixture="demo_pg_engine",
    session_fixture="demo_pg",
)


@pytest.fixture(params=["sqlite", "postgresql"])
def async_db_test(request: pytest.FixtureRequest) -> AsyncSession:
    """The test's rolled-back session, once per backend (overrides repom's plugin fixture, so
    ``repom_async_client`` serves the app inside this test's transaction)."""
    name = "demo_sqlite" if request.param == "sqlite" else "demo_pg"
    session: AsyncSession = request.getfixturevalue(name)
    return session


@pytest.fixture
def repom_app() -> FastAPI:
    return create_app()


@dataclass
class StatementLog:
    """SQL sent on the test's connection.  Inside a test the application's transactions are
    savepoints: their commit (``RELEASE SAVEPOINT``) is logged as ``COMMIT`` and their rollback
    (``ROLLBACK TO SAVEPOINT``) as ``ROLLBACK``; ``SAVEPOINT`` itself (the begin) is left out,
    as ``BEGIN`` is on a real connection."""

    statements: list[str] = field(default_factory=list)

    def attach(self, connection: Connection) -> StatementLog:
        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            sql = " ".join(statement.split())
            if not sql.upper().startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO")):
                self.statements.append(sql)

        def marker(name: str) -> Callable[..., None]:
            def listener(*args: Any) -> None:
                self.statements.append(name)

            return listener

        event.listen(connection, "before_cursor_execute", record)
        event.listen(connection, "release_savepoint", marker("COMMIT"))
        event.listen(connection, "rollback_savepoint", marker("ROLLBACK"))
        return self

    def count(self, prefix: str) -> int:
        return sum(1 for s in self.statements if s.upper().startswith(prefix))


@dataclass
class IsolatedDemo:
    """The seeded demo inside one test's transaction."""

    app: FastAPI
    client: httpx.AsyncClient
    session: AsyncSession  # the test's own session: sees everything the requests did
    database: AsyncDatabase  # repom's default async database, bound to the test's connection
    seeded: Seeded

    @property
    def dialect(self) -> str:
        bind = self.session.bind
        assert bind is not None
        return bind.dialect.name

    @property
    def connection(self) -> Connection:
        """The test's (sync) connection, which the application's sessions share."""
        bind: Any = self.session.bind
        return bind.sync_connection  # type: ignore[no-any-return]

    def log(self) -> StatementLog:
        return StatementLog().attach(self.connection)

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        result = await self.session.execute(text(sql), params)
        return [tuple(row) for row in result]

    async def scalar(self, sql: str, **params: Any) -> Any:
        return (await self.rows(sql, **params))[0][0]


@pytest_asyncio.fixture(loop_scope="session")  # the loop of the test database's connections
async def api(
    repom_app: FastAPI, repom_async_client: httpx.AsyncClient, async_db_test: AsyncSession
) -> IsolatedDemo:
    """The demo seeded inside the test's transaction (rolled back with everything else)."""
    seeded = await seed(users=6)  # repom's default async database: bound to the test
    assert seeded is not None
    return IsolatedDemo(repom_app, repom_async_client, async_db_test, get_async_database(), seeded)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using ``api`` run in pytest-asyncio's session loop, where the async test database
    lives (repom's plugin does this itself for tests that request its fixtures by name; here the
    backend's fixture is chosen at run time by ``async_db_test``)."""
    here = Path(__file__).parent
    for item in items:
        if "api" in getattr(item, "fixturenames", ()) and item.path.is_relative_to(here):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


# --------------------------------------------------------------------------- committed (opt-out)


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
    """Make *backend* the default database, migrate it, seed it (real commits)."""
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
    """The demo on a database of its own that the requests really commit to (see the module's
    docstring: for the tests that cannot run in a rolled-back transaction)."""
    database, seeded = await start_demo(backend)
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            yield Demo(backend, app, client, database, seeded)
