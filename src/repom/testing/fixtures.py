"""``create_test_fixtures()`` / ``create_async_test_fixtures()``: pytest fixtures built on
:mod:`repom.testing.isolation`.

Usage, in a ``conftest.py``::

    from repom.testing import create_async_test_fixtures, create_test_fixtures

    db_engine, db_test = create_test_fixtures()
    async_db_engine, async_db_test = create_async_test_fixtures()

The engine fixture is session-scoped (the schema is built once); the session fixture gives each
test a session in a transaction that is rolled back afterwards.  Settings the arguments leave
open are read when the engine fixture starts, from the command line, the environment and the
pytest ini file (see :func:`resolve_settings`).

This module imports neither SQLAlchemy nor the database drivers: pytest loads it at start-up
through repom's plugin, whether or not a test uses a database.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from weakref import WeakKeyDictionary

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine, MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    from repom.config import RepomConfig
    from repom.database import AsyncDatabase, Database

__all__ = [
    "ENV_DB_URL",
    "create_async_test_fixtures",
    "create_test_fixtures",
    "resolve_metadata",
    "resolve_settings",
]

ENV_DB_URL = "REPOM_TEST_DATABASE_URL"

#: attribute set on the fixture functions this module makes (read by the plugin's hooks)
FIXTURE_ROLE = "_repom_fixture_role"


# --------------------------------------------------------------------------- settings


def _option(config: pytest.Config, name: str) -> Any:
    """Command line first, then the ini file; ``None`` when neither is set (or the plugin that
    declares the option is disabled)."""
    value = config.getoption(name, default=None)
    if value in (None, ""):
        try:
            value = config.getini(name)
        except ValueError:  # not declared: repom's plugin is disabled (-p no:repom)
            value = None
    return value or None


def _worker_id(config: pytest.Config) -> str | None:
    """The pytest-xdist worker this process is (``gw0``...), or ``None``."""
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict):
        worker = workerinput.get("workerid")
        return str(worker) if worker else None
    return None


def _import_object(spec: str, what: str) -> Any:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        from repom.exceptions import ConfigurationError

        raise ConfigurationError(
            f"{what} must look like 'package.module:attribute', got {spec!r}", variable=what
        )
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def resolve_metadata(value: Any = None) -> MetaData | None:
    """Turn what ``metadata=`` accepts into a ``MetaData``.

    Accepted: a ``MetaData``; a declarative base or model class (its ``.metadata``); an import
    string ``"pkg.models:Base"`` or ``"pkg.models:Base.metadata"``; a callable returning one of
    these.  ``None`` looks through the declarative registries SQLAlchemy knows of (the models
    imported so far): exactly one ``MetaData`` with tables is used; several are an error (name
    the one to use); none means there is nothing to create.
    """
    from sqlalchemy import MetaData

    from repom.exceptions import ConfigurationError

    if isinstance(value, str):
        value = _import_object(value, "repom_metadata")
    if value is None:
        return _discover_metadata()
    if isinstance(value, MetaData):
        return value
    candidate = getattr(value, "metadata", None)
    if isinstance(candidate, MetaData):
        return candidate
    if callable(value):
        return resolve_metadata(value())
    raise ConfigurationError(
        f"metadata= expects a MetaData, a declarative base or 'module:attribute', got {value!r}",
        variable="repom_metadata",
    )


def _discover_metadata() -> MetaData | None:
    from sqlalchemy.orm.mapper import _all_registries

    from repom.exceptions import ConfigurationError

    registries = _all_registries()
    found: dict[int, MetaData] = {}
    for registry in registries:
        metadata = registry.metadata
        if metadata.tables:
            found[id(metadata)] = metadata
    if len(found) > 1:
        names = sorted(", ".join(sorted(m.tables)[:3]) for m in found.values())
        raise ConfigurationError(
            f"{len(found)} MetaData objects with tables are loaded ({'; '.join(names)}); say "
            "which one the test database gets: create_test_fixtures(metadata=Base.metadata), "
            "--repom-metadata or repom_metadata = 'package.models:Base' in the pytest ini",
            variable="repom_metadata",
        )
    return next(iter(found.values()), None)


def _default_sqlite_url(config: pytest.Config, name: str) -> str:
    # the session's temporary directory (per xdist worker), as the tmp_path_factory fixture has it
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:  # pytest's tmpdir plugin is disabled
        factory = pytest.TempPathFactory.from_config(config, _ispytest=True)
    directory = factory.getbasetemp() / "repom"
    directory.mkdir(exist_ok=True)
    return f"sqlite:///{directory / (name + '.sqlite3')}"


def _per_worker_sqlite(url: str, worker: str) -> str:
    from sqlalchemy.engine import make_url

    from repom.urls import is_memory_sqlite

    parsed = make_url(url)
    if is_memory_sqlite(parsed) or not parsed.database:
        return url
    path = Path(parsed.database)
    database = str(path.with_name(f"{path.stem}_{worker}{path.suffix}"))
    return parsed.set(database=database).render_as_string(hide_password=False)


def resolve_settings(
    request: pytest.FixtureRequest,
    *,
    name: str,
    db_url: str | Callable[[], str] | None = None,
    metadata: Any = None,
    alembic: Any = None,
    schema: str | None = None,
) -> dict[str, Any]:
    """The URL, metadata, Alembic config and schema one fixture set uses.

    * URL: ``db_url=`` (a string, or a callable returning one -- called when the engine fixture
      starts, so it may start a container or ``pytest.skip()``) > ``--repom-db-url`` >
      ``$REPOM_TEST_DATABASE_URL`` > ini ``repom_db_url`` > a SQLite file in pytest's temporary
      directory.  The application's ``DATABASE_URL`` is never used: tables are dropped and
      created in the test database.
    * metadata: ``metadata=`` > ``--repom-metadata`` / ini ``repom_metadata`` > discovery
      (:func:`resolve_metadata`).  Alembic: ``alembic=`` (path, ``Config`` or ``True`` for
      ``alembic.ini`` in the root directory) > ``--repom-alembic`` / ini ``repom_alembic``.
    * PostgreSQL schema: ``schema=`` > ``--repom-schema`` / ini ``repom_schema``; under
      pytest-xdist the worker id is appended (``repom_test_gw0`` by default), and a SQLite file
      gets one per worker the same way.
    """
    return _settings(
        request.config, name=name, db_url=db_url, metadata=metadata, alembic=alembic, schema=schema
    )


def _settings(
    config: pytest.Config,
    *,
    name: str,
    db_url: str | Callable[[], str] | None,
    metadata: Any,
    alembic: Any,
    schema: str | None,
) -> dict[str, Any]:
    worker = _worker_id(config)
    if callable(db_url):
        db_url = db_url()  # resolved now: it may start a server, or skip the tests
    url = (
        db_url
        or config.getoption("repom_db_url", default=None)
        or os.environ.get(ENV_DB_URL)
        or _option(config, "repom_db_url")
    )
    if url is None:
        url = _default_sqlite_url(config, name)
    elif worker is not None and str(url).startswith("sqlite"):
        url = _per_worker_sqlite(str(url), worker)
    schema = schema or _option(config, "repom_schema")
    if worker is not None:
        schema = f"{schema or 'repom_test'}_{worker}"
    if alembic is None:
        alembic = _option(config, "repom_alembic")
    if alembic is True:
        alembic = config.rootpath / "alembic.ini"
    elif isinstance(alembic, str) and not os.path.isabs(alembic):
        alembic = config.rootpath / alembic
    resolved_metadata = None
    if not alembic:
        if metadata is None:
            metadata = _option(config, "repom_metadata")
        resolved_metadata = resolve_metadata(metadata)
    return {
        "url": str(url),
        "metadata": resolved_metadata,
        "alembic": alembic or None,
        "schema": schema,
    }


# --------------------------------------------------------------------------- factories


# pytest builds a new fixture definition each time a fixture asks for ``request``, and a
# session-scoped fixture's arguments are looked up again for every test that uses it: an engine
# fixture taking ``request`` would cost each test more than the isolation itself.  So while
# repom's plugin is active, the fixtures take no ``request``: the plugin keeps the running
# pytest configuration here, and marks the loading of conftest files (where the factories are
# called) so that a factory knows it may rely on that.

_CONFIGS: list[pytest.Config] = []
_PLUGIN_LOADING: ContextVar[bool] = ContextVar("repom_plugin_loading", default=False)


def plugin_configured(config: pytest.Config) -> None:
    """``pytest_configure`` of repom's plugin: *config* is the running configuration."""
    _CONFIGS.append(config)


def plugin_unconfigured(config: pytest.Config) -> None:
    for index in range(len(_CONFIGS) - 1, -1, -1):
        if _CONFIGS[index] is config:
            del _CONFIGS[index]
            break


@contextmanager
def plugin_loading() -> Iterator[None]:
    """Around conftest loading and collection, by repom's plugin: factories called meanwhile
    belong to a pytest run where the plugin is active."""
    token = _PLUGIN_LOADING.set(True)
    try:
        yield
    finally:
        _PLUGIN_LOADING.reset(token)


def _running_config(request: pytest.FixtureRequest | None) -> pytest.Config:
    if request is not None:
        return request.config
    if not _CONFIGS:  # pragma: no cover - the request-free fixtures exist only with the plugin
        from repom.exceptions import ConfigurationError

        raise ConfigurationError("repom's test fixtures need repom's pytest plugin to be active")
    return _CONFIGS[-1]


def _signature(*names: str) -> inspect.Signature:
    """pytest reads a fixture's dependencies from its signature (the engine fixture's name is
    chosen by the caller)."""
    kind = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature([inspect.Parameter(name, kind) for name in names])


#: the started test database behind each engine an engine fixture yields (read by the session
#: fixture of the same pair, which gets the engine as its argument)
_DATABASES: WeakKeyDictionary[Any, Any] = WeakKeyDictionary()


def _database_of(engines: dict[str, Any]) -> Any:
    ((name, engine),) = engines.items()
    database = _DATABASES.get(engine)
    if database is None:
        from repom.exceptions import ConfigurationError

        raise ConfigurationError(
            f"the {name!r} fixture did not come from repom's fixture factory, so the session "
            "fixture made with it has no test database: override both fixtures of the pair, "
            "or neither",
            variable=name,
        )
    return database


def _fixture_pair(
    is_async: bool,
    db_url: str | Callable[[], str] | None,
    metadata: Any,
    alembic: Any,
    schema: str | None,
    options: dict[str, Any],
    engine_fixture: str,
    session_fixture: str,
) -> tuple[Any, Any]:
    """The engine and session fixtures of one flavour; only the awaits differ."""
    request_free = _PLUGIN_LOADING.get()

    def build(request: pytest.FixtureRequest | None) -> Any:
        from repom.testing.isolation import AsyncIsolatedDatabase, IsolatedDatabase

        settings = _settings(
            _running_config(request),
            name=engine_fixture,
            db_url=db_url,
            metadata=metadata,
            alembic=alembic,
            schema=schema,
        )
        cls = AsyncIsolatedDatabase if is_async else IsolatedDatabase
        return cls(**settings, **options)

    engine: Callable[..., Any]
    session: Callable[..., Any]
    if is_async:
        import pytest_asyncio

        async def engine(
            request: pytest.FixtureRequest | None = None,
        ) -> AsyncIterator[AsyncEngine]:
            database = build(request)
            started = await database.start()
            _DATABASES[started] = database
            try:
                yield started
            finally:
                _DATABASES.pop(started, None)
                await database.stop()

        async def session(**engines: Any) -> AsyncIterator[AsyncSession]:
            async with _database_of(engines).isolated_session() as test_session:
                yield test_session

        engine_decorator = pytest_asyncio.fixture(
            scope="session", loop_scope="session", name=engine_fixture
        )
        session_decorator = pytest_asyncio.fixture(loop_scope="session", name=session_fixture)
    else:

        def engine(request: pytest.FixtureRequest | None = None) -> Iterator[Engine]:
            database = build(request)
            started = database.start()
            _DATABASES[started] = database
            try:
                yield started
            finally:
                _DATABASES.pop(started, None)
                database.stop()

        def session(**engines: Any) -> Iterator[Session]:
            with _database_of(engines).isolated_session() as test_session:
                yield test_session

        engine_decorator = pytest.fixture(scope="session", name=engine_fixture)
        session_decorator = pytest.fixture(name=session_fixture)

    cast(Any, engine).__signature__ = _signature() if request_free else _signature("request")
    cast(Any, session).__signature__ = _signature(engine_fixture)
    engine.__name__, session.__name__ = engine_fixture, session_fixture
    setattr(engine, FIXTURE_ROLE, ("engine", is_async, engine_fixture))
    setattr(session, FIXTURE_ROLE, ("session", is_async, engine_fixture))
    return engine_decorator(engine), session_decorator(session)


def create_test_fixtures(
    db_url: str | Callable[[], str] | None = None,
    metadata: Any = None,
    *,
    alembic: Any = None,
    schema: str | None = None,
    drop: bool = True,
    config: RepomConfig | None = None,
    engine_options: dict[str, Any] | None = None,
    session_options: dict[str, Any] | None = None,
    databases: Iterable[Database] = (),
    guard: bool = True,
    engine_fixture: str = "db_engine",
    session_fixture: str = "db_test",
) -> tuple[Any, Any]:
    """Return ``(db_engine, db_test)``: a session-scoped fixture yielding the test ``Engine``
    (schema created on first use, dropped at the end) and a fixture yielding a ``Session`` whose
    work is rolled back after each test.

    While a test runs, repom's default database is bound to the test's connection, so the
    application's own sessions and transactions run inside the test too; so are the
    ``databases=`` you pass.  ``guard`` makes the *async* default database refuse to open
    sessions meanwhile (they could not share the connection).  ``engine_fixture`` and
    ``session_fixture`` name the fixtures (assign the result to any names you like).
    See :func:`resolve_settings` for ``db_url``, ``metadata``, ``alembic`` and ``schema``.
    """
    options = {
        "drop": drop,
        "config": config,
        "engine_options": engine_options,
        "session_options": session_options,
        "databases": tuple(databases),
        "guard": guard,
    }
    return _fixture_pair(
        False, db_url, metadata, alembic, schema, options, engine_fixture, session_fixture
    )


def create_async_test_fixtures(
    db_url: str | Callable[[], str] | None = None,
    metadata: Any = None,
    *,
    alembic: Any = None,
    schema: str | None = None,
    drop: bool = True,
    config: RepomConfig | None = None,
    engine_options: dict[str, Any] | None = None,
    session_options: dict[str, Any] | None = None,
    databases: Iterable[AsyncDatabase] = (),
    guard: bool = True,
    engine_fixture: str = "async_db_engine",
    session_fixture: str = "async_db_test",
) -> tuple[Any, Any]:
    """Return ``(async_db_engine, async_db_test)``: the async flavour of
    :func:`create_test_fixtures` (an ``AsyncEngine`` and an ``AsyncSession``).

    Both fixtures run in pytest-asyncio's *session* event loop, because the engine's pooled
    connections belong to the loop that opened them (asyncpg refuses any other); repom's pytest
    plugin runs the tests that use them in that loop too.  Needs pytest-asyncio.
    """
    options = {
        "drop": drop,
        "config": config,
        "engine_options": engine_options,
        "session_options": session_options,
        "databases": tuple(databases),
        "guard": guard,
    }
    return _fixture_pair(
        True, db_url, metadata, alembic, schema, options, engine_fixture, session_fixture
    )
