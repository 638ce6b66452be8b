"""repom's pytest plugin (registered through the ``pytest11`` entry point; nothing to enable).

Fixtures (override any of them in your ``conftest.py``):

* ``db_engine`` / ``db_test`` (alias ``db_session``) -- :func:`repom.testing.create_test_fixtures`
  with the settings below; ``async_db_engine`` / ``async_db_test`` (alias ``async_db_session``)
  -- the async flavour.
* ``repom_client`` -- a FastAPI ``TestClient`` for ``repom_app`` while ``db_test`` is bound;
  ``repom_async_client`` -- an ``httpx.AsyncClient`` on the app (same event loop) while
  ``async_db_test`` is bound.  The dependencies listed by ``repom_session_dependencies`` are
  overridden with repom's session dependencies.
* ``query_counter`` / ``assert_max_queries`` -- :class:`repom.monitoring.QueryCounter` on the
  engine of the test's database fixture.

Settings: ``--repom-db-url`` (or ``$REPOM_TEST_DATABASE_URL``, or ini ``repom_db_url``),
``--repom-metadata`` / ``repom_metadata``, ``--repom-alembic`` / ``repom_alembic``,
``--repom-schema`` / ``repom_schema`` and ini ``repom_app``.

Event loops: the async fixtures live in pytest-asyncio's session loop (asyncpg connections
cannot move between loops), so async tests that use them are run in that loop as well; an
explicit ``@pytest.mark.asyncio(loop_scope=...)`` other than ``"session"`` is reported as an
error at setup.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from repom.testing.fixtures import (
    ENV_DB_URL,
    FIXTURE_ROLE,
    _import_object,
    create_async_test_fixtures,
    create_test_fixtures,
    plugin_configured,
    plugin_loading,
    plugin_unconfigured,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

_ENGINE_FIXTURE = pytest.StashKey[str]()
_LOOP_SCOPE_ERROR = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("repom", "repom test database")
    group.addoption(
        "--repom-db-url",
        dest="repom_db_url",
        default=None,
        help=f"URL of the test database (default: ${ENV_DB_URL}, ini repom_db_url, or a "
        "SQLite file in the temporary directory). Its tables are dropped and recreated.",
    )
    group.addoption(
        "--repom-metadata",
        dest="repom_metadata",
        default=None,
        help="'package.module:Base' whose metadata the test schema is created from",
    )
    group.addoption(
        "--repom-alembic",
        dest="repom_alembic",
        default=None,
        help="alembic.ini to build the test schema with (upgrade head) instead of metadata",
    )
    group.addoption(
        "--repom-schema",
        dest="repom_schema",
        default=None,
        help="PostgreSQL schema for the test tables (pytest-xdist appends the worker id)",
    )
    parser.addini("repom_db_url", "URL of the test database", default="")
    parser.addini("repom_metadata", "'package.module:Base' to create the test schema from")
    parser.addini("repom_alembic", "alembic.ini to build the test schema with (upgrade head)")
    parser.addini("repom_schema", "PostgreSQL schema for the test tables")
    parser.addini("repom_app", "'package.module:app' (or an app factory) for repom_client")


# --------------------------------------------------------------------------- database fixtures

# made while the plugin loads: they exist only where it is active, so they need no ``request``
with plugin_loading():
    db_engine, db_test = create_test_fixtures()

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - only the sync fixtures then
    pytest_asyncio = None  # type: ignore[assignment]
else:
    with plugin_loading():
        async_db_engine, async_db_test = create_async_test_fixtures()


@pytest.fixture
def db_session(db_test: Session) -> Session:
    """Alias of ``db_test``."""
    return db_test


if pytest_asyncio is not None:

    @pytest.fixture
    def async_db_session(async_db_test: AsyncSession) -> AsyncSession:
        """Alias of ``async_db_test``."""
        return async_db_test


# --------------------------------------------------------------------------- FastAPI


@pytest.fixture
def repom_app(request: pytest.FixtureRequest) -> Any:
    """The FastAPI app for ``repom_client``: ini ``repom_app = "package.module:app"`` (a
    function there is called to build the app).  Override this fixture to build it yourself."""
    spec = request.config.getini("repom_app")
    if not spec:
        pytest.fail(
            "repom_client needs your FastAPI app: define a 'repom_app' fixture that returns it, "
            "or set repom_app = 'package.module:app' in the pytest ini",
            pytrace=False,
        )
    app = _import_object(str(spec), "repom_app")
    if inspect.isfunction(app):
        app = app()
    return app


@pytest.fixture
def repom_session_dependencies() -> list[Callable[..., Any]]:
    """Your own session dependencies to replace in ``repom_client``/``repom_async_client``:
    sync ones by :func:`repom.session.get_db_session`, async ones by
    :func:`repom.async_session.get_async_db_session`.  repom's dependencies need no override
    (they use the default database, which the test binds)."""
    return []


def _app_databases(app: Any, connection: Any, *, is_async: bool) -> list[Any]:
    """The databases of *app*'s flavour that are not bound to the test's connection yet (those
    attached with ``repom.fastapi.use_databases`` or named by its session dependencies)."""
    try:
        from repom.fastapi import databases_in_use
    except ImportError:  # pragma: no cover - FastAPI is optional
        return []
    return [
        db
        for db in databases_in_use(app)
        if db.is_async == is_async and db.bound_connection is not connection
    ]


@contextmanager
def _overridden(app: Any, dependencies: list[Callable[..., Any]]) -> Iterator[None]:
    from repom.async_session import get_async_db_session
    from repom.session import get_db_session

    saved = dict(app.dependency_overrides)
    for dependency in dependencies:
        is_async = inspect.isasyncgenfunction(dependency) or inspect.iscoroutinefunction(dependency)
        app.dependency_overrides[dependency] = get_async_db_session if is_async else get_db_session
    try:
        yield
    finally:
        app.dependency_overrides.clear()
        app.dependency_overrides.update(saved)


@pytest.fixture
def repom_client(
    repom_app: Any, repom_session_dependencies: list[Callable[..., Any]], db_test: Session
) -> Iterator[Any]:
    """``fastapi.testclient.TestClient(repom_app)`` (no lifespan) while ``db_test`` is bound:
    what a request commits is rolled back after the test."""
    from fastapi.testclient import TestClient

    connection = db_test.bind
    with ExitStack() as stack:
        stack.enter_context(_overridden(repom_app, repom_session_dependencies))
        for database in _app_databases(repom_app, connection, is_async=False):
            stack.enter_context(database.bind(connection))
        client = TestClient(repom_app)  # not entered: the app's lifespan does not run
        stack.callback(client.close)
        yield client


if pytest_asyncio is not None:

    async def _async_client(
        repom_app: Any,
        repom_session_dependencies: list[Callable[..., Any]],
        async_db_test: AsyncSession,
    ) -> AsyncIterator[Any]:
        """``httpx.AsyncClient`` calling ``repom_app`` in the test's event loop while
        ``async_db_test`` is bound."""
        import httpx

        connection = async_db_test.bind
        async with AsyncExitStack() as stack:
            stack.enter_context(_overridden(repom_app, repom_session_dependencies))
            for database in _app_databases(repom_app, connection, is_async=True):
                await stack.enter_async_context(database.bind(connection))
            transport = httpx.ASGITransport(app=repom_app)
            client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            yield await stack.enter_async_context(client)

    repom_async_client = pytest_asyncio.fixture(loop_scope="session", name="repom_async_client")(
        _async_client
    )


# --------------------------------------------------------------------------- query counting


def _test_engine(request: pytest.FixtureRequest) -> Engine:
    name = request.node.stash.get(_ENGINE_FIXTURE, "db_engine")
    engine = request.getfixturevalue(name)
    return getattr(engine, "sync_engine", engine)  # type: ignore[no-any-return]


@pytest.fixture
def query_counter(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A started :class:`repom.monitoring.QueryCounter` on the test database's engine."""
    from repom.monitoring import QueryCounter

    with QueryCounter(_test_engine(request)) as counter:
        yield counter


@pytest.fixture
def assert_max_queries(request: pytest.FixtureRequest) -> Callable[[int], Any]:
    """``with assert_max_queries(3): ...`` fails the test when the block sends more statements
    to the test database (transaction control such as ``SAVEPOINT`` is not counted)."""
    from repom.monitoring import assert_max_queries as counting

    engine = _test_engine(request)
    return lambda limit: counting(engine, limit)


# --------------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    plugin_configured(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin_unconfigured(config)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Generator[None, object, object]:
    with plugin_loading():  # conftest.py files call the fixture factories now
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    with plugin_loading():  # ... and now, for those below the root directory and test modules
        return (yield)


def _repom_roles(item: pytest.Item) -> list[tuple[str, bool, str]]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    roles = []
    for name in info.names_closure:
        definitions = info.name2fixturedefs.get(name)
        if definitions:
            role = getattr(definitions[-1].func, FIXTURE_ROLE, None)
            if role is not None:
                roles.append(role)
    return roles


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default_scope = None
    for item in items:
        roles = _repom_roles(item)
        if not roles:
            continue
        sessions = [role for role in roles if role[0] == "session"] or roles
        item.stash[_ENGINE_FIXTURE] = sessions[0][2]
        if not any(is_async for _, is_async, _ in roles):
            continue
        marker = item.get_closest_marker("asyncio")
        if marker is None:
            continue  # not an asyncio test: its async fixtures still run in the session loop
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
        if scope is None:
            if default_scope is None:
                default_scope = config.getini("asyncio_default_test_loop_scope") or "function"
            if default_scope != "session":
                item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)
        elif scope != "session":
            item.stash[_LOOP_SCOPE_ERROR] = (
                f"{item.nodeid} runs in the {scope!r} event loop, but repom's async database "
                "fixtures live in the 'session' loop (a pooled asyncpg connection cannot move "
                "between loops): use @pytest.mark.asyncio(loop_scope='session') or drop the "
                "loop_scope"
            )


def pytest_runtest_setup(item: pytest.Item) -> None:
    message = item.stash.get(_LOOP_SCOPE_ERROR, None)
    if message is not None:
        pytest.fail(message, pytrace=False)
