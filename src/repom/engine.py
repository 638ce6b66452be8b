"""Engine creation in one place, for sync and async engines alike.

What every engine built here gets:

* a pool chosen by environment: ``QueuePool``/``AsyncAdaptedQueuePool`` sized from the
  config; ``NullPool`` for ``environment=test`` on a server database; ``StaticPool`` for in-memory
  SQLite (one shared connection, or the data would vanish between sessions);
* connect-time settings, applied through events with no extra round trip where the driver allows:
  PostgreSQL ``TimeZone=UTC``, ``statement_timeout``, ``application_name`` (psycopg ``options``,
  asyncpg ``server_settings``, both in the startup packet); SQLite ``foreign_keys=ON``,
  ``busy_timeout``, WAL for files, and SQLAlchemy's BEGIN-event recipe so that SAVEPOINT and
  transactional DDL work on pysqlite and aiosqlite; MySQL strict ``sql_mode`` and UTC;
* translation of driver errors into :mod:`repom.exceptions` (``handle_error`` hook), with two
  additions on the engine's own dialect *instance* (the class and other engines are untouched):
  ``dialect.do_commit`` marks what COMMIT raised, so a connection lost during COMMIT becomes
  :class:`~repom.exceptions.CommitOutcomeUnknown` (the server may have committed); and, on
  PostgreSQL, ``dialect.connect`` translates connect failures itself
  (:func:`~repom.exceptions.translate_connect_error`) -- asyncpg raises its own exceptions there,
  which SQLAlchemy neither wraps nor passes to ``handle_error``, and psycopg's carry no SQLSTATE.
  Wrapping ``dialect.connect`` rather than answering the ``do_connect`` event leaves every
  ``do_connect`` listener (repom's and the application's, e.g. a token-refreshing password hook)
  in charge of the connect arguments.
* liveness checks that cost nothing on a busy pool (:func:`install_liveness_check`): with
  ``pool_pre_ping`` (the default) a connection is pinged at checkout only when it sat idle in the
  pool longer than ``pool_ping_idle`` seconds; a failed ping invalidates the whole pool.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event, pool
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.engine.interfaces import ExceptionContext

from repom._sqlite_writes import install_write_queue
from repom.config import get_config, milliseconds
from repom.exceptions import (
    ConfigurationError,
    mark_commit_error,
    translate,
    translate_connect_error,
)
from repom.urls import backend_name, is_memory_sqlite, validate_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from repom.config import RepomConfig

__all__ = [
    "build_async_engine",
    "build_engine",
    "engine_arguments",
    "install_engine_events",
    "install_liveness_check",
    "pool_class_name",
]

logger = logging.getLogger("repom.engine")

_POOL_SIZING = ("pool_size", "max_overflow", "pool_timeout", "pool_use_lifo")


class _TimeoutAsPoolExhausted:
    """Pool mixin: a checkout timeout raises :class:`~repom.exceptions.PoolExhausted` (still a
    ``sqlalchemy.exc.TimeoutError``) everywhere, not only at repom's own boundaries."""

    def _do_get(self) -> Any:
        try:
            return super()._do_get()  # type: ignore[misc]
        except sa_exc.TimeoutError as exc:
            raise translate(exc) from exc


def pool_class_name(pool_or_class: pool.Pool | type[pool.Pool]) -> str:
    """SQLAlchemy's name for a pool class (repom's own subclasses report their base)."""
    cls = pool_or_class if isinstance(pool_or_class, type) else type(pool_or_class)
    for klass in cls.__mro__:
        if klass.__module__.startswith("sqlalchemy."):
            return klass.__name__
    return cls.__name__


class RepomQueuePool(_TimeoutAsPoolExhausted, pool.QueuePool):
    """The ``QueuePool`` repom chooses for sync engines."""


class RepomAsyncQueuePool(_TimeoutAsPoolExhausted, pool.AsyncAdaptedQueuePool):
    """The ``AsyncAdaptedQueuePool`` repom chooses for async engines."""


def engine_arguments(
    config: RepomConfig, url: str | URL, *, is_async: bool, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The keyword arguments for ``create_engine``/``create_async_engine``, pool policy applied."""
    kwargs = dict(config.engine_kwargs)
    if overrides:
        kwargs.update(overrides)
    memory = is_memory_sqlite(url)
    poolclass: type[pool.Pool] | None = kwargs.pop("poolclass", None)
    if poolclass is None:
        choice = config.pool_class
        if memory:
            choice = "static"
        elif choice is None:
            choice = "null" if config.environment == "test" else "queue"
        if choice == "static":
            poolclass = pool.StaticPool
        elif choice == "null":
            poolclass = pool.NullPool
        else:
            poolclass = RepomAsyncQueuePool if is_async else RepomQueuePool
    kwargs["poolclass"] = poolclass
    if not issubclass(poolclass, pool.QueuePool):
        for key in _POOL_SIZING:
            kwargs.pop(key, None)
    if memory and backend_name(url) == "sqlite":
        connect_args = dict(kwargs.get("connect_args") or {})
        connect_args.setdefault("check_same_thread", False)
        kwargs["connect_args"] = connect_args
    return kwargs


def install_engine_events(engine: Engine, config: RepomConfig) -> None:
    """Attach repom's connect-time settings and error translation to a (sync) engine."""
    backend = engine.dialect.name
    driver = engine.dialect.driver
    if backend == "sqlite":
        _install_sqlite(engine, config)
    elif backend == "postgresql":
        _install_postgresql(engine, config, driver)
    elif backend in ("mysql", "mariadb"):
        _install_mysql(engine)
    _mark_commit_errors(engine, rollback_after_failure=backend == "sqlite")
    if backend == "sqlite":
        # after _mark_commit_errors: a turn is given back once its rollback-after-failure ran
        take_turn = None
        if config.sqlite_write_queue:
            take_turn = install_write_queue(engine, config.sqlite_busy_timeout)
        _install_sqlite_begin(engine, take_turn)
    install_liveness_check(engine, config.pool_ping_idle)
    event.listen(engine, "handle_error", _translate_error, retval=True)
    _engines_to_reset_after_fork.add(engine)


_IDLE_SINCE = "repom_idle_since"


def install_liveness_check(engine: Engine, idle: float) -> None:
    """Replace the pool's ping-on-every-checkout by a ping of idle connections only.

    Called by :func:`install_engine_events`.  When the engine's pool was built with
    ``pool_pre_ping=True`` (repom's default) and *idle* > 0, SQLAlchemy's own pre-ping is turned
    off and two pool listeners take its place: ``checkin`` records when the connection went back
    to the pool, ``checkout`` pings it (the dialect's ``do_ping``) only when it has been idle for
    longer than *idle* seconds.  A connection that came straight back from another unit of work,
    the normal case on a busy pool, costs a clock read and no round trip.  A freshly connected
    connection is never pinged.

    A ping that finds the connection dead raises :class:`sqlalchemy.exc.InvalidatePoolError` (a
    ``DisconnectionError``): the pool invalidates this connection *and* every connection opened
    before it, and the checkout reconnects.  A statement that meets a dead connection on a
    connection that was not pinged (idle less than *idle* seconds, e.g. a server restart during
    a burst) fails once, and SQLAlchemy invalidates the whole pool on that disconnect error too,
    so later units of work get new connections.

    ``idle == 0`` keeps SQLAlchemy's ping on every checkout.  ``NullPool`` (every checkout is a
    new connection) and in-memory SQLite (nothing to lose, one ``StaticPool`` connection) get no
    liveness check at all.  The listeners sit on the pool's dispatch, which survives
    ``engine.dispose()``; the pool's ``pre_ping`` flag is carried over by ``recreate()`` too.
    """
    if idle < 0 or idle != idle:  # direct callers; RepomConfig validates its own value
        raise ConfigurationError(
            f"pool_ping_idle must be a number of seconds >= 0, got {idle!r}",
            variable="REPOM_POOL_PING_IDLE",
        )
    engine_pool = engine.pool
    if not getattr(engine_pool, "_pre_ping", False):
        return
    if isinstance(engine_pool, pool.NullPool) or is_memory_sqlite(engine.url):
        engine_pool._pre_ping = False
        return
    if idle == 0:
        return
    engine_pool._pre_ping = False
    dialect = engine.dialect
    clock = time.monotonic

    def _repom_connected(dbapi_connection: Any, connection_record: Any) -> None:
        connection_record.info.pop(_IDLE_SINCE, None)

    def _repom_checkin(dbapi_connection: Any, connection_record: Any) -> None:
        if dbapi_connection is not None:
            connection_record.info[_IDLE_SINCE] = clock()

    def _repom_checkout(dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
        since = connection_record.info.pop(_IDLE_SINCE, None)
        if since is None or clock() - since <= idle:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if not dialect.is_disconnect(error, dbapi_connection, None):
                raise
            alive = False
        if not alive:
            logger.info("pooled connection idle for %.1fs failed its ping", clock() - since)
            raise sa_exc.InvalidatePoolError("ping of an idle pooled connection failed")

    event.listen(engine, "connect", _repom_connected)
    event.listen(engine, "checkin", _repom_checkin)
    event.listen(engine, "checkout", _repom_checkout)


# Fork safety (``gunicorn --preload``, multiprocessing with fork): a child process must never use
# a connection its parent opened -- both would talk on one socket and read each other's replies.
# In the child, every engine built here gets a fresh, empty pool; the inherited connections are
# left alone (close=False), because closing them would end the parent's sessions.
_engines_to_reset_after_fork: weakref.WeakSet[Engine] = weakref.WeakSet()


def _reset_pools_after_fork() -> None:
    for engine in list(_engines_to_reset_after_fork):
        try:
            engine.dispose(close=False)
        except Exception:  # pragma: no cover - never let a fork hook break the child
            logger.debug("resetting a pool after fork failed", exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_after_fork)


def _mark_commit_errors(engine: Engine, *, rollback_after_failure: bool) -> None:
    """Wrap the engine's own ``dialect.do_commit`` so that what it raises is marked as raised by
    COMMIT (see :func:`repom.exceptions.translate`).  One function call per COMMIT, no
    connection-level event (which would slow every unit of work down, see
    :mod:`repom.monitoring._tracker`, whose own wrappers stack on top of this one).

    SQLite keeps the transaction open when its COMMIT fails (a deferred foreign key, a busy
    database), while SQLAlchemy counts it as ended and skips the pool's reset-on-return: the
    connection would go back to the pool holding the write lock.  *rollback_after_failure* rolls
    it back right there."""
    dialect = engine.dialect
    do_commit = dialect.do_commit

    def repom_do_commit(dbapi_connection: Any) -> None:
        try:
            do_commit(dbapi_connection)
        except BaseException as error:
            mark_commit_error(error)
            if rollback_after_failure:
                try:
                    dbapi_connection.rollback()
                except Exception:
                    logger.debug("rollback after a failed COMMIT failed", exc_info=True)
            raise

    setattr(dialect, "do_commit", repom_do_commit)  # noqa: B010 - an instance attribute


def _translate_connect_errors(engine: Engine) -> None:
    """Wrap the engine's own ``dialect.connect`` (called after the ``do_connect`` listeners, for
    every new DBAPI connection: ``engine.connect()``, a session's first statement, a pool
    checkout that has to connect, a pre-ping reconnect, sync and async engines) so that connect
    failures are raised as repom's typed errors."""
    dialect = engine.dialect
    connect = dialect.connect

    def repom_connect(*cargs: Any, **cparams: Any) -> Any:
        try:
            return connect(*cargs, **cparams)
        except Exception as error:
            new = translate_connect_error(error)
            if new is error:
                raise
            raise new from error

    setattr(dialect, "connect", repom_connect)  # noqa: B010 - an instance attribute


def _translate_error(context: ExceptionContext) -> BaseException | None:
    if context.is_pre_ping:
        return None
    error = context.sqlalchemy_exception
    if error is None:
        original = context.original_exception
        if not isinstance(original, (UnicodeEncodeError, OverflowError)):
            return None
        # a driver that cannot send a parameter (a lone surrogate, an integer too large for
        # SQLite) raises it unwrapped: give it the StatementError shape translate() maps to 422
        error = sa_exc.StatementError(
            str(original), context.statement, context.parameters, original
        )
    new = translate(error)
    return new if new is not error else None


def _install_sqlite(engine: Engine, config: RepomConfig) -> None:
    memory = is_memory_sqlite(engine.url)
    busy_ms = milliseconds(config.sqlite_busy_timeout, name="sqlite_busy_timeout")
    wal = config.sqlite_wal and not memory

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (see the "begin" hook): stop the sqlite3 module from
        # doing its own, partial, transaction control so SAVEPOINT and DDL are transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms:d}")
            if wal:
                # switching needs a lock; a file already in WAL mode (the usual case) is left alone
                cursor.execute("PRAGMA journal_mode")
                row = cursor.fetchone()
                if not row or str(row[0]).lower() != "wal":
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "reset")
    def _sqlite_reset(dbapi_connection: Any, connection_record: Any, reset_state: Any) -> None:
        # a read-only transaction that could not reset its PRAGMA query_only (connection error)
        if connection_record is not None and connection_record.info.pop("repom_query_only", False):
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA query_only=OFF")
            finally:
                cursor.close()


def _install_sqlite_begin(engine: Engine, take_turn: Callable[[Any], None] | None) -> None:
    """SQLAlchemy's recipe: emit BEGIN ourselves (``BEGIN IMMEDIATE`` when the transaction asked
    for it with the ``sqlite_begin`` execution option, after taking its turn in the process's
    write queue, see :mod:`repom._sqlite_writes`)."""

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin")
        if mode == "immediate":
            if take_turn is not None:
                take_turn(connection)
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def _pg_options(config: RepomConfig) -> dict[str, str]:
    settings = {"TimeZone": "UTC"}
    if config.statement_timeout is not None:
        # rounded up: 0.0004 s is 1 ms, never 0 (PostgreSQL's "no timeout")
        ms = milliseconds(config.statement_timeout, name="statement_timeout")
        settings["statement_timeout"] = str(ms)
    return settings


def _install_postgresql(engine: Engine, config: RepomConfig, driver: str) -> None:
    settings = _pg_options(config)
    app_name = config.application_name
    _translate_connect_errors(engine)
    if driver == "asyncpg":
        event.listen(engine, "do_connect", _asyncpg_connect_timeout)
    if config.pooler is not None:
        _install_pooler(engine, settings, app_name, driver)
        return

    @event.listens_for(engine, "do_connect")
    def _pg_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        if driver == "asyncpg":
            server_settings = dict(cparams.get("server_settings") or {})
            for key, value in settings.items():
                server_settings.setdefault(key, value)
            server_settings.setdefault("application_name", app_name)
            cparams["server_settings"] = server_settings
        else:  # psycopg / psycopg2: libpq "options" and application_name
            opts = " ".join(f"-c {key}={value}" for key, value in settings.items())
            existing = cparams.get("options")
            cparams["options"] = f"{existing} {opts}" if existing else opts
            cparams.setdefault("application_name", app_name)


def _asyncpg_connect_timeout(
    dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]
) -> None:
    """libpq's ``connect_timeout`` URL parameter, for asyncpg: its ``timeout`` argument.

    One URL then bounds connecting on both drivers (``?connect_timeout=2``); without this,
    SQLAlchemy hands ``connect_timeout`` to ``asyncpg.connect``, which does not know it.  With
    several hosts, libpq applies it to each host and asyncpg to the whole attempt.
    """
    value = cparams.pop("connect_timeout", None)
    if value is not None and "timeout" not in cparams:
        cparams["timeout"] = float(value)


def _install_pooler(engine: Engine, settings: dict[str, str], app_name: str, driver: str) -> None:
    """PostgreSQL behind a transaction-mode pooler (PgBouncer).

    * Only startup parameters the pooler accepts: ``application_name`` (and, for asyncpg,
      ``TimeZone``).  psycopg cannot send ``TimeZone`` without libpq's ``options`` (refused), so
      it is set once per client connection with ``SET``: PgBouncer tracks ``TimeZone`` per client
      (a reported parameter) and restores it on whichever server connection serves the client.
    * ``statement_timeout`` is not tracked by the pooler: it is set per transaction
      (``SET LOCAL`` at BEGIN), so it holds in every transaction and never leaks to another
      client through a shared server connection.
    * No server-side named prepared statements: psycopg ``prepare_threshold=None``; asyncpg with
      its statement cache off and a unique name per statement (SQLAlchemy's adapter prepares and
      runs each statement inside the same transaction, hence on the same server connection).
    """
    timeout = settings.get("statement_timeout")

    @event.listens_for(engine, "do_connect")
    def _pooled_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        if driver == "asyncpg":
            server_settings = dict(cparams.get("server_settings") or {})
            server_settings.setdefault("TimeZone", settings["TimeZone"])
            server_settings.setdefault("application_name", app_name)
            cparams["server_settings"] = server_settings
            cparams.setdefault("statement_cache_size", 0)
            cparams.setdefault("prepared_statement_cache_size", 0)
            cparams.setdefault("prepared_statement_name_func", _unique_statement_name)
        else:
            cparams.setdefault("application_name", app_name)
            cparams.setdefault("prepare_threshold", None)

    if driver != "asyncpg":

        @event.listens_for(engine, "connect")
        def _pooled_session(dbapi_connection: Any, connection_record: Any) -> None:
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            try:
                cursor = dbapi_connection.cursor()
                try:
                    cursor.execute("SET TimeZone = 'UTC'")
                finally:
                    cursor.close()
            finally:
                dbapi_connection.autocommit = autocommit

    if timeout is not None:
        set_timeout = f"SET LOCAL statement_timeout = {int(timeout):d}"

        @event.listens_for(engine, "begin")
        def _pooled_begin(connection: Any) -> None:
            connection.exec_driver_sql(set_timeout)


def _unique_statement_name() -> str:
    return f"__repom_{uuid.uuid4().hex}__"


def _install_mysql(engine: Engine) -> None:
    init = (
        "SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,"
        "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', time_zone='+00:00'"
    )

    @event.listens_for(engine, "do_connect")
    def _mysql_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams.setdefault("init_command", init)


def _resolve(config: RepomConfig | None, url: str | URL | None, is_async: bool) -> tuple[Any, Any]:
    config = config or get_config()
    if url is None:
        url = config.async_url if is_async else config.url
    if isinstance(url, str):
        url = validate_url(url)
    parsed = make_url(url)
    if not is_async and parsed.drivername in ("postgresql", "postgres"):
        # plain postgresql:// means psycopg 3 (the driver of repom[postgres]), whatever
        # SQLAlchemy's own default is in the installed version
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "postgresql+asyncpg":
        parsed = _complete_asyncpg_hosts(parsed)
    return config, parsed


def _complete_asyncpg_hosts(parsed: URL) -> URL:
    """Give every host of a multi-host URL a port, for asyncpg.

    SQLAlchemy's asyncpg dialect refuses ``?host=h1&host=h2:5433`` ("All ports are required"),
    which libpq (psycopg) reads with the default port for ``h1``.  A host without a port gets
    5432 here, so one URL works on both drivers.
    """
    hosts = parsed.query.get("host")
    if not isinstance(hosts, tuple) or "port" in parsed.query:
        return parsed
    completed = tuple(token if ":" in token else f"{token}:5432" for token in hosts)
    if completed == hosts:
        return parsed
    return parsed.update_query_dict({"host": list(completed)})


def build_engine(
    url: str | URL | None = None, *, config: RepomConfig | None = None, **overrides: Any
) -> Engine:
    """Create a sync engine from *config* (default: :func:`get_config`) and optional *url*."""
    config, parsed = _resolve(config, url, False)
    engine = sa_create_engine(
        parsed, **engine_arguments(config, parsed, is_async=False, overrides=overrides)
    )
    install_engine_events(engine, config)
    return engine


def build_async_engine(
    url: str | URL | None = None, *, config: RepomConfig | None = None, **overrides: Any
) -> AsyncEngine:
    """Create an async engine (greenlet and an async driver are needed from here on only)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    config, parsed = _resolve(config, url, True)
    engine = create_async_engine(
        parsed, **engine_arguments(config, parsed, is_async=True, overrides=overrides)
    )
    install_engine_events(engine.sync_engine, config)
    return engine
