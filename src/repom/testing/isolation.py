"""Test isolation by rollback: the schema is built once, each test runs in one outer transaction.

:class:`IsolatedDatabase` (sync) and :class:`AsyncIsolatedDatabase` (async) own a test engine.
``start()`` creates the schema (``metadata.create_all`` or ``alembic upgrade head``), and
``isolated_session()`` opens what one test needs:

* a connection with an outer transaction that is always rolled back at the end;
* a session joined to it with ``join_transaction_mode="create_savepoint"``, so ``commit()``,
  ``rollback()`` and ``begin_nested()`` in the test only ever touch savepoints;
* repom's default database of the same flavour (and any ``databases=`` you pass) bound to that
  connection, so the application's own sessions (``repom.session``, ``repom.async_session``,
  ``transaction()``/``@transactional``, repositories, the FastAPI dependencies) run inside the
  test's transaction too.  The default database of the *other* flavour is replaced by a guard
  that raises :class:`~repom.exceptions.ConfigurationError` instead of writing outside the test;
* a guard on that connection: committing the outer transaction, or sending ``COMMIT``,
  ``ROLLBACK``, ``BEGIN``, ... as raw SQL (:mod:`repom.testing.raw_sql`), raises
  :class:`~repom.exceptions.IsolationViolation` instead of ending the test's transaction.

Every decision (URL, engine settings, schema plan, session options, what gets bound) is made
once by the shared base class; the two flavours differ only in the awaits.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, MetaData, event
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
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

__all__ = [
    "AsyncIsolatedDatabase",
    "IsolatedDatabase",
    "SchemaPlan",
    "check_schema_name",
]

_OUTER = "repom_test_outer_transaction"
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
    if plan.alembic is not None:
        _alembic_upgrade(conn, plan.alembic)
    elif plan.metadata is not None:
        if not plan.pg_schema:
            plan.metadata.drop_all(conn)  # leftovers of an interrupted run
        plan.metadata.create_all(conn)


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
    if conn.info.get(_OUTER):
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


def _guard_raw_transaction_control(conn: Connection, outer: Any) -> Callable[[], None]:
    """Refuse raw transaction control (``COMMIT``, ``ROLLBACK``, ``BEGIN``, ... in SQL text) on the
    test's connection while *outer* is its transaction; savepoint statements pass.  Returns the
    undo (the listener lives on this one connection, never on the engine)."""

    def before_cursor_execute(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        found = transaction_control(statement)
        if found is None:
            return
        if found in _STARTERS and not outer.is_active:
            return  # the test ended the outer transaction: SQLAlchemy's own BEGIN (SQLite hook)
        raise IsolationViolation(_raw_control_message(found))

    event.listen(conn, "before_cursor_execute", before_cursor_execute)
    return lambda: event.remove(conn, "before_cursor_execute", before_cursor_execute)


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
        event.listen(engine, "commit", _refuse_outer_commit)
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
        try:
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
        assert self._default is not None, "call start() first"
        conn = self.engine.connect()
        try:
            outer = conn.begin()
            conn.info[_OUTER] = True
            unguard = _guard_raw_transaction_control(conn, outer)
            session = RepomSession(bind=conn, **self._session_options)
            try:
                undo = _swap_defaults(self._default, self.guard)
                try:
                    with ExitStack() as stack:
                        for binding in self._bind_targets(conn):
                            stack.enter_context(binding)
                        yield session
                finally:
                    undo()
            finally:
                conn.info.pop(_OUTER, None)
                unguard()
                intact = outer.is_active
                try:
                    if intact:  # first: the session's savepoint goes with it
                        outer.rollback()
                finally:
                    session.close()
                    if not intact:  # the test ended or replaced the outer transaction itself:
                        conn.invalidate()  # discard the DBAPI connection, never pool it
        finally:
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
        event.listen(engine.sync_engine, "commit", _refuse_outer_commit)
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
        try:
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
        from sqlalchemy.ext.asyncio import AsyncSession

        assert self._default is not None, "call start() first"
        conn: AsyncConnection = await self.engine.connect()
        try:
            outer = await conn.begin()
            sync_conn = conn.sync_connection
            assert sync_conn is not None
            info = sync_conn.info
            info[_OUTER] = True
            unguard = _guard_raw_transaction_control(sync_conn, outer)
            session = AsyncSession(
                bind=conn, sync_session_class=RepomSession, **self._session_options
            )
            try:
                undo = _swap_defaults(self._default, self.guard)
                try:
                    async with AsyncExitStack() as stack:
                        for binding in self._bind_targets(conn):
                            await stack.enter_async_context(binding)
                        yield session
                finally:
                    undo()
            finally:
                info.pop(_OUTER, None)
                unguard()
                intact = outer.is_active
                try:
                    if intact:
                        await outer.rollback()
                finally:
                    await session.close()
                    if not intact:
                        await conn.invalidate()
        finally:
            await conn.close()


def _ddl(engine: E) -> E:
    """The engine for schema set-up and tear-down: on SQLite the transaction takes the write lock
    at BEGIN (``BEGIN IMMEDIATE``), so it waits for other connections (busy timeout) instead of
    failing when its read snapshot went stale before the first DROP/CREATE."""
    return engine.execution_options(sqlite_begin="immediate")  # type: ignore[attr-defined,no-any-return]
