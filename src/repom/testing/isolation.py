"""Test isolation by rollback: the schema is built once, each test runs in one outer transaction.

:class:`IsolatedDatabase` (sync) and :class:`AsyncIsolatedDatabase` (async) own a test engine.
``start()`` creates the schema (``metadata.create_all`` or ``alembic upgrade head``), and
``isolated_session()`` opens what one test needs:

* a connection with an outer transaction that is always rolled back at the end.  Its DBAPI
  connection stays checked out from test to test (no pool checkout per test), but each test gets
  a new ``Connection`` around it, so that what a test does to its ``Connection`` (execution
  options, event listeners) ends with the test;
* a session joined to it with ``join_transaction_mode="create_savepoint"``, so ``commit()``,
  ``rollback()`` and ``begin_nested()`` in the test only ever touch savepoints;
* repom's default database of the same flavour (and any ``databases=`` you pass) bound to that
  connection, so the application's own sessions (``repom.session``, ``repom.async_session``,
  ``transaction()``/``@transactional``, repositories, the FastAPI dependencies) run inside the
  test's transaction too.  The default database of the *other* flavour is replaced by a guard
  that raises :class:`~repom.exceptions.ConfigurationError` instead of writing outside the test;
* guards on the test engine, installed once: committing the outer transaction, or sending
  ``COMMIT``, ``ROLLBACK``, ``BEGIN``, ... as raw SQL (:mod:`repom.testing.raw_sql`), raises
  :class:`~repom.exceptions.IsolationViolation` instead of ending the test's transaction.

``start()`` also repairs a test database that the other schema mode built last (metadata vs
Alembic, see :func:`_repair_other_mode`).

Every decision (URL, engine settings, schema plan, session options, what gets bound) is made
once by the shared base class; the two flavours differ only in the awaits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, MetaData, event, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema, DropSchema

from repom import database as _databases
from repom.config import RepomConfig, get_config
from repom.database import AsyncDatabase, Database
from repom.engine import build_async_engine, build_engine
from repom.exceptions import ConfigurationError, IsolationViolation
from repom.models.session import RepomSession
from repom.testing.raw_sql import transaction_control
from repom.urls import backend_name, convert_to_async_uri, convert_to_sync_uri, mask_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

__all__ = [
    "AsyncIsolatedDatabase",
    "IsolatedDatabase",
    "SchemaPlan",
    "check_schema_name",
]

logger = logging.getLogger("repom.testing")

_OUTER = "repom_test_outer_transaction"  # conn.info: the running test's outer transaction
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

E = TypeVar("E")
D = TypeVar("D", Database, AsyncDatabase)


def check_schema_name(name: str) -> str:
    """Return *name* if it is a plain lower-case PostgreSQL identifier, else raise."""
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise ConfigurationError(
            f"invalid test schema name {name!r}: use lower-case letters, digits and '_' "
            "(at most 63 characters, not starting with a digit)",
            variable="repom_schema",
        )
    return name


@dataclass(frozen=True)
class SchemaPlan:
    """What ``start()``/``stop()`` do to the test database.

    * ``metadata`` -- tables to create (``drop_all`` + ``create_all`` at start, ``drop_all`` at
      the end), unless ``alembic`` is given;
    * ``alembic`` -- an ``alembic.ini`` path or an Alembic ``Config``: ``upgrade head`` at start
      (the schema is left in place at the end, unless it lives in ``pg_schema``);
    * ``pg_schema`` -- PostgreSQL only (``None`` elsewhere): a schema of its own (``search_path``),
      created fresh at start and dropped with everything in it at the end (one per pytest-xdist
      worker);
    * ``drop`` -- drop what was created at the end (default ``True``).
    """

    metadata: MetaData | None = None
    alembic: Any = None
    pg_schema: str | None = None
    drop: bool = True


# --------------------------------------------------------------------------- schema (sync I/O)
# Run directly on a sync Connection, or through AsyncConnection.run_sync() for async engines.


def _prepare_schema(conn: Connection, plan: SchemaPlan) -> None:
    if plan.pg_schema:
        conn.execute(DropSchema(plan.pg_schema, cascade=True, if_exists=True))
        conn.execute(CreateSchema(plan.pg_schema))
    elif plan.alembic is not None or plan.metadata is not None:
        _repair_other_mode(conn, plan)
    if plan.alembic is not None:
        _alembic_upgrade(conn, plan.alembic)
    elif plan.metadata is not None:
        if not plan.pg_schema:
            plan.metadata.drop_all(conn)  # leftovers of an interrupted run
        plan.metadata.create_all(conn)


# Alembic's version table (repom's migration templates keep Alembic's default name)
_VERSION_TABLE = "alembic_version"

# PostgreSQL: tables that belong to an extension (PostGIS's spatial_ref_sys, ...) are not ours
_PG_EXTENSION_TABLES = text(
    "SELECT c.relname FROM pg_class c JOIN pg_depend d ON d.classid = 'pg_class'::regclass "
    "AND d.objid = c.oid AND d.deptype = 'e' WHERE c.relnamespace = current_schema()::regnamespace"
)


def _repair_other_mode(conn: Connection, plan: SchemaPlan) -> None:
    """A test database that the *other* schema mode built last is emptied before this one builds.

    With metadata, the session starts with ``drop_all`` and ends with it, which leaves Alembic's
    ``alembic_version`` behind; with Alembic, the migrated schema stays for the next session.
    Switching between the two would then break every test: ``upgrade head`` finds the version
    table at head and creates nothing, or finds the tables ``create_all`` made and fails to create
    them again.  So:

    * metadata mode: an ``alembic_version`` table means Alembic built this database;
    * Alembic mode: tables without an ``alembic_version`` table were not built by migrations,
      and an ``alembic_version`` table alone is what a ``drop_all`` left of a migrated schema.

    Either way every table of the database (of its current schema on PostgreSQL, extension
    tables excepted) is dropped, ``alembic_version`` included, and the schema is built from
    scratch.
    """
    names = _database_tables(conn)
    if plan.alembic is None:
        reason = (
            f"it has an {_VERSION_TABLE} table: it was built with Alembic migrations"
            if _VERSION_TABLE in names
            else None
        )
    elif _VERSION_TABLE in names:
        reason = (
            None
            if names - {_VERSION_TABLE}
            else f"its {_VERSION_TABLE} table is all that is left of a migrated schema"
        )
    else:
        reason = (
            f"it has tables ({', '.join(sorted(names)[:5])}) but no {_VERSION_TABLE} table: "
            "they were not built by Alembic migrations"
            if names
            else None
        )
    if reason is None:
        return
    mode = "Alembic migrations" if plan.alembic is not None else "metadata"
    logger.warning("repom: emptying the test database before building it with %s: %s", mode, reason)
    reflected = MetaData()
    reflected.reflect(conn, only=sorted(names))
    reflected.drop_all(conn)


def _database_tables(conn: Connection) -> set[str]:
    names = set(sa_inspect(conn).get_table_names())
    if names and conn.dialect.name == "postgresql":
        names -= set(conn.scalars(_PG_EXTENSION_TABLES))
    return names


def _drop_schema(conn: Connection, plan: SchemaPlan) -> None:
    if not plan.drop:
        return
    if plan.pg_schema:
        conn.execute(DropSchema(plan.pg_schema, cascade=True, if_exists=True))
    elif plan.alembic is None and plan.metadata is not None:
        plan.metadata.drop_all(conn)


def _alembic_config(target: Any) -> AlembicConfig:
    try:
        from alembic.config import Config
    except ImportError as exc:  # pragma: no cover - alembic is in repom[migrations]
        raise ConfigurationError(
            "alembic= needs Alembic: pip install 'repom[migrations]'", variable="alembic"
        ) from exc
    if isinstance(target, Config):
        cfg = target
    elif isinstance(target, (str, PathLike)):
        cfg = Config(str(target))
    else:
        raise ConfigurationError(
            f"alembic= expects a path to alembic.ini or an alembic Config, got {target!r}",
            variable="alembic",
        )
    return cfg


def _alembic_upgrade(conn: Connection, cfg: AlembicConfig) -> None:
    from alembic import command

    # Alembic's documented recipe: env.py uses config.attributes["connection"] when present
    # (repom's templates do), so the migrations run on this connection, in this transaction.
    cfg.attributes["connection"] = conn
    try:
        command.upgrade(cfg, "head")
    finally:
        cfg.attributes.pop("connection", None)


# --------------------------------------------------------------------------- guards


def _refuse_outer_commit(conn: Connection) -> None:
    """``commit`` event of test engines: the test's outer transaction never commits."""
    if conn.info.get(_OUTER) is not None:
        raise IsolationViolation(
            "the test's outer transaction cannot be committed: it is rolled back after the test "
            "(commit the session instead; with join_transaction_mode='create_savepoint' that "
            "releases a savepoint)"
        )


_STARTERS = frozenset({"BEGIN", "START TRANSACTION"})


def _raw_control_message(found: str) -> str:
    if found in _STARTERS:
        effect = (
            "would try to open a second one (an error on SQLite, ignored by PostgreSQL, an "
            "implicit COMMIT on MySQL)"
        )
    else:
        effect = "would end it, and the test's writes would escape into the next test"
    return (
        f"{found} sent as raw SQL is refused in an isolated test: the test runs inside one outer "
        f"transaction that is rolled back at teardown, and a raw {found} {effect}. Commit or roll "
        "back through the session or transaction API instead (session.commit(), transaction(), "
        "a request dependency): inside the test repom turns that into a savepoint release or "
        "rollback."
    )


def _refuse_raw_transaction_control(
    conn: Connection, cursor: Any, statement: str, *args: Any
) -> None:
    """``before_cursor_execute`` event of test engines: refuse raw transaction control
    (``COMMIT``, ``ROLLBACK``, ``BEGIN``, ... in SQL text) on a connection while a test's outer
    transaction runs on it (:func:`_start_test` puts it in ``conn.info``); savepoint statements
    pass, and so does everything on the engine's other connections."""
    found = transaction_control(statement)
    if found is None:
        return
    outer = conn.info.get(_OUTER)
    if outer is None:
        return  # no test runs on this connection (or the fixture's own BEGIN, SQLite hook)
    if found in _STARTERS and not outer.is_active:
        return  # the test ended the outer transaction: SQLAlchemy's own BEGIN (SQLite hook)
    raise IsolationViolation(_raw_control_message(found))


def _install_guards(engine: Engine) -> None:
    """The test's outer transaction is never committed, through the API or as raw SQL.  On the
    engine, once: a test's connection is made anew for each test (see ``isolated_session``)."""
    event.listen(engine, "commit", _refuse_outer_commit)
    event.listen(engine, "before_cursor_execute", _refuse_raw_transaction_control)


def _start_test(conn: Connection) -> Any:
    """One test begins on *conn*: its outer transaction, marked for the guards."""
    outer = conn.begin()
    conn.info[_OUTER] = outer
    return outer


def _end_test(conn: Connection, outer: Any, session: Session) -> bool:
    """One test ends: roll back the outer transaction and close the test's session (sync I/O).

    Returns whether the DBAPI connection under *conn* can serve the next test.  It cannot when
    the test ended or replaced the outer transaction itself (the connection is then invalidated:
    its DBAPI connection is discarded, never pooled), or closed or invalidated it."""
    info = conn.info
    info.pop(_OUTER, None)
    intact = outer.is_active
    try:
        if intact:  # first: the session's savepoint goes with it
            outer.rollback()
    finally:
        session.close()
    if conn.closed:
        return False
    if not intact:
        if not conn.invalidated:
            # The database transaction may still be open (a refused commit leaves it so): roll
            # it back first, so that its locks go now.  Closing alone is not enough: SQLite
            # defers the close of a connection whose statements are still referenced (by a
            # traceback, say), and the write lock would outlive the test until garbage
            # collection.
            with suppress(Exception):  # a broken connection: it is discarded anyway
                conn.dialect.do_rollback(conn.connection)
            conn.invalidate()
        return False
    return not conn.invalidated


def _unbound_message(flavour: str, fixture: str) -> str:
    other = "sync" if flavour == "async" else "async"
    return (
        f"repom's default {flavour} database is not bound to this test's connection: the test "
        f"isolates the {other} flavour only, so this {flavour} session would write outside the "
        f"rolled-back test transaction. Use the {fixture} fixture for {flavour} code (or pass "
        "guard=False to the fixture factory to allow it)."
    )


class _UnboundDatabase(Database):
    """Stands in for the default sync database while only the async flavour is isolated."""

    def session(self, **kwargs: Any) -> Session:
        raise ConfigurationError(_unbound_message("sync", "db_test"))

    @property
    def engine(self) -> Engine:
        raise ConfigurationError(_unbound_message("sync", "db_test"))

    def dispose(self) -> None:
        return None


class _UnboundAsyncDatabase(AsyncDatabase):
    """Stands in for the default async database while only the sync flavour is isolated."""

    def session(self, **kwargs: Any) -> AsyncSession:
        raise ConfigurationError(_unbound_message("async", "async_db_test"))

    @property
    def engine(self) -> AsyncEngine:
        raise ConfigurationError(_unbound_message("async", "async_db_test"))

    async def dispose(self) -> None:
        return None


_UNBOUND_SYNC = _UnboundDatabase(url="sqlite://")  # stateless: nothing is ever built
_UNBOUND_ASYNC = _UnboundAsyncDatabase(url="sqlite+aiosqlite://")


class _TestDatabase(Database):
    """The default sync database during a test: the test engine, never disposed by the app."""

    repom_isolated = True

    def dispose(self) -> None:  # the fixture owns the engine (an app lifespan may call this)
        return None


class _AsyncTestDatabase(AsyncDatabase):
    repom_isolated = True

    async def dispose(self) -> None:
        return None


def _swap_defaults(default: Database | AsyncDatabase, guard: bool) -> Callable[[], None]:
    """Install *default* as repom's default database of its flavour and, with *guard*, a stand-in
    that refuses sessions for the other flavour (unless another isolation fixture of this test
    bound that one).  Returns the undo."""
    set_same: Callable[[Any], Any] = _databases.set_database
    set_other: Callable[[Any], Any] = _databases.set_async_database
    stand_in: Any = _UNBOUND_ASYNC
    if default.is_async:
        set_same, set_other = set_other, set_same
        stand_in = _UNBOUND_SYNC
    previous = set_same(default)
    guarded = False
    other_previous: Any = None
    if guard:
        other_previous = set_other(stand_in)
        guarded = not getattr(other_previous, "repom_isolated", False)
        if not guarded:
            set_other(other_previous)  # the other flavour is isolated too: keep it bound

    def undo() -> None:
        set_same(previous)
        if guarded:
            set_other(other_previous)

    return undo


# --------------------------------------------------------------------------- the databases


class _IsolatedBase(Generic[E, D]):
    """Options and decisions shared by both flavours."""

    is_async = False

    def __init__(
        self,
        url: str,
        metadata: MetaData | None = None,
        *,
        alembic: Any = None,
        schema: str | None = None,
        drop: bool = True,
        config: RepomConfig | None = None,
        engine_options: dict[str, Any] | None = None,
        session_options: dict[str, Any] | None = None,
        databases: Iterable[D] = (),
        guard: bool = True,
    ) -> None:
        if metadata is not None and not isinstance(metadata, MetaData):
            raise ConfigurationError(
                f"metadata= expects a sqlalchemy MetaData, got {type(metadata).__name__}",
                variable="metadata",
            )
        convert = convert_to_async_uri if self.is_async else convert_to_sync_uri
        self.url = convert(str(url))
        pg_schema = None
        if schema is not None:
            pg_schema = check_schema_name(schema)
            if backend_name(self.url) != "postgresql":
                pg_schema = None  # a schema per worker is a PostgreSQL feature; others ignore it
        self.plan = SchemaPlan(
            metadata=metadata,
            alembic=_alembic_config(alembic) if alembic else None,
            pg_schema=pg_schema,
            drop=drop,
        )
        self._config = config
        self._engine_options = dict(engine_options or {})
        self._session_options: dict[str, Any] = {
            "expire_on_commit": False,
            **(session_options or {}),
            "join_transaction_mode": "create_savepoint",
        }
        self.databases: tuple[D, ...] = tuple(databases)
        self.guard = guard
        self._engine: E | None = None
        self._default: D | None = None
        # the DBAPI connection (pool-proxied) kept checked out between two tests: it serves test
        # after test without a pool checkout, wrapped in a new Connection each time (so that
        # what a test does to its Connection -- execution options, event listeners -- ends with
        # it); a nested isolated_session() checks out one of its own
        self._idle: Any = None

    @property
    def engine(self) -> E:
        if self._engine is None:
            raise ConfigurationError(f"{self!r} is not started: call start() first")
        return self._engine

    def _engine_config(self) -> RepomConfig:
        """The app's configuration (so a CONFIG_HOOK subclass's engine_kwargs apply), pointed
        at the test database, with a real pool and no pre-ping round trip per checkout."""
        base = self._config or get_config()
        return base.model_copy(
            update={
                "database_url": convert_to_sync_uri(self.url),
                "async_database_url": None,
                "pool_class": "queue",
                "pool_pre_ping": False,
            }
        )

    def _engine_kwargs(self, config: RepomConfig) -> dict[str, Any]:
        options = dict(self._engine_options)
        schema = self.plan.pg_schema
        if schema is not None:  # validated identifier, set in the startup packet
            connect_args = {
                **(config.engine_kwargs.get("connect_args") or {}),
                **(options.get("connect_args") or {}),
            }
            if self.is_async:
                settings = dict(connect_args.get("server_settings") or {})
                settings["search_path"] = schema
                connect_args["server_settings"] = settings
            else:
                extra = connect_args.get("options")
                path = f"-c search_path={schema}"
                connect_args["options"] = f"{extra} {path}" if extra else path
            options["connect_args"] = connect_args
        return options

    def _bind_targets(self, conn: Any) -> list[Any]:
        targets: list[Any] = [self._default, *self.databases]
        return [db.bind(conn) for db in targets]

    def __repr__(self) -> str:
        where = mask_url(self.url)
        if self.plan.pg_schema:
            where += f" schema={self.plan.pg_schema}"
        return f"{type(self).__name__}({where})"


class IsolatedDatabase(_IsolatedBase[Engine, Database]):
    """A sync test database: schema once, a rolled-back transaction per test.

    ::

        idb = IsolatedDatabase("sqlite:///test.db", Base.metadata)
        engine = idb.start()
        with idb.isolated_session() as session:   # one test
            ...
        idb.stop()
    """

    is_async = False

    def start(self) -> Engine:
        """Create the engine and the schema; return the engine."""
        if self._engine is not None:
            return self._engine
        config = self._engine_config()
        engine = build_engine(self.url, config=config, **self._engine_kwargs(config))
        _install_guards(engine)
        try:
            with _ddl(engine).begin() as conn:
                _prepare_schema(conn, self.plan)
        except BaseException:
            engine.dispose()
            raise
        self._engine = engine
        self._default = _TestDatabase(engine=engine, config=config)
        return engine

    def stop(self) -> None:
        """Drop what ``start()`` created and dispose of the engine."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        idle, self._idle = self._idle, None
        try:
            if idle is not None:
                idle.close()
            with _ddl(engine).begin() as conn:
                _drop_schema(conn, self.plan)
        finally:
            engine.dispose()

    def __enter__(self) -> IsolatedDatabase:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @contextmanager
    def isolated_session(self) -> Iterator[Session]:
        """One test: a session in an outer transaction that is rolled back at the end."""
        default = self._default
        assert default is not None, "call start() first"
        engine = self.engine
        dbapi, self._idle = self._idle, None
        conn = engine.connect() if dbapi is None else Connection(engine, connection=dbapi)
        reusable = False
        try:
            outer = _start_test(conn)
            session = RepomSession(bind=conn, **self._session_options)
            try:
                undo = _swap_defaults(default, self.guard)
                try:
                    with ExitStack() as stack:
                        for binding in self._bind_targets(conn):
                            stack.enter_context(binding)
                        yield session
                finally:
                    undo()
            finally:
                reusable = _end_test(conn, outer, session)
        finally:
            if reusable and self._idle is None and self._engine is not None:
                self._idle = conn.connection  # stays checked out; the Connection goes
            else:
                conn.close()


class AsyncIsolatedDatabase(_IsolatedBase["AsyncEngine", AsyncDatabase]):
    """The async flavour of :class:`IsolatedDatabase` (``await start()``,
    ``async with isolated_session()``, ``await stop()``)."""

    is_async = True

    async def start(self) -> AsyncEngine:
        if self._engine is not None:
            return self._engine
        config = self._engine_config()
        engine = build_async_engine(self.url, config=config, **self._engine_kwargs(config))
        _install_guards(engine.sync_engine)
        try:
            async with _ddl(engine).begin() as conn:
                await conn.run_sync(_prepare_schema, self.plan)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._default = _AsyncTestDatabase(engine=engine, config=config)
        return engine

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        idle, self._idle = self._idle, None
        try:
            if idle is not None:
                from sqlalchemy.ext.asyncio import AsyncConnection

                await AsyncConnection(
                    engine, Connection(engine.sync_engine, connection=idle)
                ).close()
            async with _ddl(engine).begin() as conn:
                await conn.run_sync(_drop_schema, self.plan)
        finally:
            await engine.dispose()

    async def __aenter__(self) -> AsyncIsolatedDatabase:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @asynccontextmanager
    async def isolated_session(self) -> AsyncIterator[AsyncSession]:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

        default = self._default
        assert default is not None, "call start() first"
        engine = self.engine
        dbapi, self._idle = self._idle, None
        if dbapi is None:
            conn = await engine.connect()
        else:
            conn = AsyncConnection(engine, Connection(engine.sync_engine, connection=dbapi))
        reusable = False
        try:
            # one greenlet switch each way: the same sync steps as IsolatedDatabase
            outer = await conn.run_sync(_start_test)
            session = AsyncSession(
                bind=conn, sync_session_class=RepomSession, **self._session_options
            )
            try:
                undo = _swap_defaults(default, self.guard)
                try:
                    async with AsyncExitStack() as stack:
                        for binding in self._bind_targets(conn):
                            await stack.enter_async_context(binding)
                        yield session
                finally:
                    undo()
            finally:
                reusable = await conn.run_sync(_end_test, outer, session.sync_session)
        finally:
            if reusable and self._idle is None and self._engine is not None:
                self._idle = conn.sync_connection.connection  # type: ignore[union-attr]
            else:
                await conn.close()


def _ddl(engine: E) -> E:
    """The engine for schema set-up and tear-down: on SQLite the transaction takes the write lock
    at BEGIN (``BEGIN IMMEDIATE``), so it waits for other connections (busy timeout) instead of
    failing when its read snapshot went stale before the first DROP/CREATE."""
    return engine.execution_options(sqlite_begin="immediate")  # type: ignore[attr-defined,no-any-return]
