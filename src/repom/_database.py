"""The databases layer: ``Database`` and ``AsyncDatabase`` (one engine and one session factory
each) and the module defaults.  Import them from :mod:`repom.database`, the public face, which
also gives them their ``transaction()`` method and holds the compatibility ``DatabaseManager``.

A database object owns its engine (created lazily, on first use) and a session factory with
``expire_on_commit=False``.  Nothing global blocks a second database: create as many objects as
you need.  The module-level API (:mod:`repom.session`, :mod:`repom.async_session`) uses the
default objects returned by :func:`get_database` / :func:`get_async_database`, which tests and
applications can replace with :func:`set_database` / :func:`set_async_database`.

For tests, :meth:`Database.bind` points every session the object makes at one connection (with
``join_transaction_mode="create_savepoint"``), so application code under test commits and rolls
back inside the test's outer transaction (see :mod:`repom.testing`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from sqlalchemy import Connection, Engine, MetaData, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from repom.config import get_config, on_config_change
from repom.engine import build_async_engine, build_engine
from repom.exceptions import ConfigurationError, TransactionError, translate
from repom.monitoring._stats import count_replica_skip
from repom.urls import convert_to_async_uri, is_async_url, mask_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
    from sqlalchemy.ext.asyncio import async_sessionmaker as AsyncSessionMaker

    from repom.config import RepomConfig

__all__ = [
    "AsyncDatabase",
    "Database",
    "Replica",
    "ReplicaStatus",
    "get_async_database",
    "get_database",
    "reset_default_databases",
    "set_async_database",
    "set_database",
]

E = TypeVar("E")
C = TypeVar("C")


_replica_logger = logging.getLogger("repom.replicas")


@dataclass
class Replica:
    """One read replica: its engine, and whether it may be used right now.

    A replica that is down, lags too far behind, or is no longer in recovery (it was promoted) is
    skipped for :attr:`RETRY_AFTER` seconds, then tried again; every skip is logged and counted
    (``repom.monitoring.replica_skip_counts()``, Prometheus ``repom_replica_skips_total``)."""

    RETRY_AFTER: ClassVar[float] = 5.0

    engine: Any
    name: str
    probe: Any = None  # a pool-less engine for health checks
    down_until: float = 0.0
    lag_checked_at: float = -1e9
    lag: float | None = None
    last_replay: int = 0  # replay position at the last check
    stalled_since: float | None = None  # since when replay has not moved with WAL pending

    @classmethod
    def of(cls, engine: Any) -> Replica:
        url = getattr(engine, "url", None)
        name = f"{url.host or 'local'}:{url.port or 5432}" if url is not None else "replica"
        return cls(engine=engine, name=name)

    def usable(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.down_until

    def skip(self, database: str, reason: str, *, mark_down: bool, detail: str = "") -> None:
        """Record that a transaction did not use this replica (*reason*)."""
        if mark_down:
            self.down_until = time.monotonic() + self.RETRY_AFTER
        count_replica_skip(database, self.name, reason)
        log = _replica_logger.warning if mark_down else _replica_logger.debug
        log(
            "replica %s of %s skipped (%s)%s; the primary serves the read%s",
            self.name,
            database,
            reason,
            f": {detail}" if detail else "",
            f", retried in {self.RETRY_AFTER:.0f}s" if mark_down else "",
        )


_REPLICA_HEALTH = text(
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_last_wal_receive_lsn() IS NULL "
    "OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


@dataclass
class ReplicaStatus:
    """One replica in a health report."""

    name: str
    role: str = "replica"  # "replica", or "promoted" when it left recovery
    latency: float | None = None
    lag_seconds: float | None = None
    error: str | None = None

    @classmethod
    def from_row(cls, replica: Replica, row: Any, latency: float) -> ReplicaStatus:
        in_recovery, lag = row
        return cls(
            replica.name,
            role="replica" if in_recovery else "promoted",
            latency=latency,
            lag_seconds=round(float(lag or 0.0), 3),
        )


class _DatabaseBase(Generic[E, C]):
    """What the sync and async flavours share: config, lazy engine, binding for tests."""

    is_async: bool = False

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        config: RepomConfig | None = None,
        engine: E | None = None,
        name: str | None = None,
        replicas: Sequence[str | URL] | None = None,
        **engine_options: Any,
    ) -> None:
        self._config = config
        self._url = url
        self._name = name
        self._probe: E | None = None
        self._replica_urls = list(replicas) if replicas is not None else None
        self._replicas: list[Replica] | None = None
        self._next_replica = 0
        self._engine: E | None = engine
        self._owns_engine = engine is None
        self._engine_options = engine_options
        self._lock = threading.Lock()
        self._bound: C | None = None

    @property
    def config(self) -> RepomConfig:
        if self._config is None:
            self._config = get_config()
        return self._config

    @property
    def engine(self) -> E:
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._build_engine()
                engine = self._engine
        return engine

    def _build_engine(self) -> E:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def url(self) -> URL:
        return self._sync_engine().url

    def _sync_engine(self) -> Engine:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def name(self) -> str:
        """A label for reports (health, logs): the ``name=`` given, else the URL's database
        (the file name for SQLite)."""
        if self._name:
            return self._name
        url = self.url
        database = url.database or ""
        if url.get_backend_name() == "sqlite":
            return os.path.basename(database) or "memory"
        return database or "default"

    @property
    def role(self) -> str:
        """``"primary"``: the database writes go to."""
        return "primary"

    # -- read replicas -----------------------------------------------------------------

    @property
    def replica_urls(self) -> list[str | URL]:
        """The replicas given to the constructor, else ``RepomConfig.replica_urls``."""
        if self._replica_urls is not None:
            return list(self._replica_urls)
        return list(self.config.replica_urls)

    @property
    def replicas(self) -> list[Replica]:
        """The read replicas (engines built on first use; PostgreSQL hot standbys only)."""
        replicas = self._replicas
        if replicas is None:
            urls = self.replica_urls
            dialect = self.dialect_name if urls else ""
            with self._lock:
                if self._replicas is None:
                    if urls and dialect != "postgresql":
                        raise ConfigurationError(
                            f"replicas= is supported on PostgreSQL only (this database is "
                            f"{self.dialect_name}); remove the replica URLs",
                            variable="REPOM_REPLICA_URLS",
                        )
                    self._replicas = [self._make_replica(url) for url in urls]
                replicas = self._replicas
        return replicas

    def _make_replica(self, url: str | URL) -> Replica:  # pragma: no cover - abstract
        raise NotImplementedError

    def choose_replica(self) -> Replica | None:
        """A healthy replica for a new read-only transaction (round robin), or None: no replica,
        none healthy, or sessions bound to a test's connection (reads then see the test's own
        uncommitted writes, as they would on the primary)."""
        if self._bound is not None or not self.replica_urls:
            return None
        replicas = self.replicas
        now = time.monotonic()
        for offset in range(len(replicas)):
            index = (self._next_replica + offset) % len(replicas)
            replica = replicas[index]
            if replica.usable(now):
                self._next_replica = index + 1
                return replica
        return None

    @property
    def host(self) -> str:
        """The server's host name (``"local"`` for SQLite); never credentials."""
        return self.url.host or "local"

    def _probe_options(self) -> dict[str, Any]:
        """Engine options for a pool-less probe: the database's own, minus pool sizing."""
        skip = {"pool_size", "max_overflow", "pool_timeout", "pool_use_lifo", "poolclass"}
        options = {k: v for k, v in self._engine_options.items() if k not in skip}
        options["poolclass"] = NullPool
        return options

    @property
    def dialect_name(self) -> str:
        return self._sync_engine().dialect.name

    @property
    def bound_connection(self) -> C | None:
        """The connection every session is bound to while ``bind()`` is active (tests)."""
        return self._bound

    def transaction(self, **options: Any) -> Any:
        """``transaction(...)`` on this database (see :func:`repom.transactions.transaction`).

        The transaction layer sits above this one: :mod:`repom.database` (the public face of
        these classes) registers it here when it is imported."""
        factory = _transaction_factory
        if factory is None:
            raise TransactionError(
                "Database.transaction() is provided by repom.transactions: import Database from "
                "repom.database, or call repom.transactions.transaction(database=db)"
            )
        return factory(database=self, **options)

    def pool_status(self) -> dict[str, Any]:
        """Pool figures (see :class:`repom.monitoring.PoolMonitor`)."""
        from repom.monitoring import PoolMonitor

        return PoolMonitor(self._sync_engine()).status()

    def __repr__(self) -> str:
        if self._engine is not None:
            where = mask_url(self._sync_engine().url)
        elif self._url is not None:
            where = mask_url(self._url)
        else:
            where = "<default config>"
        return f"{type(self).__name__}({where})"


class Database(_DatabaseBase[Engine, Connection]):
    """A sync engine and its session factory."""

    is_async = False

    def _build_engine(self) -> Engine:
        return build_engine(self._url, config=self.config, **self._engine_options)

    def _sync_engine(self) -> Engine:
        return self.engine

    @property
    def session_factory(self) -> sessionmaker[Session]:
        factory: sessionmaker[Session] | None = getattr(self, "_factory", None)
        if factory is None:
            from repom.models.session import RepomSession

            factory = sessionmaker(bind=self.engine, class_=RepomSession, expire_on_commit=False)
            self._factory = factory
        return factory

    def session(self, **kwargs: Any) -> Session:
        """A new session (the caller closes it); bound to the connection given to :meth:`bind`."""
        bound = self._bound
        if bound is not None:
            kwargs.setdefault("bind", bound)
            kwargs.setdefault("join_transaction_mode", "create_savepoint")
        session = self.session_factory(**kwargs)
        session.info["repom_database"] = self
        return session

    def check_replicas(self) -> list[ReplicaStatus]:
        """Ping every replica on a connection of its own: role, replication lag, latency."""
        results = []
        for replica in self.replicas:
            if replica.probe is None:
                replica.probe = build_engine(
                    replica.engine.url, config=self.config, **self._probe_options()
                )
            start = time.perf_counter()
            try:
                with replica.probe.connect() as conn:
                    row = conn.execute(_REPLICA_HEALTH).one()
                results.append(ReplicaStatus.from_row(replica, row, time.perf_counter() - start))
            except Exception as exc:
                results.append(ReplicaStatus(replica.name, error=type(translate(exc)).__name__))
        return results

    def replica_session(self, replica: Replica) -> Session:
        """A new session on *replica* (the transaction API uses it for read-only work)."""
        session = self.session_factory(bind=replica.engine)
        session.info["repom_database"] = self
        session.info["repom_replica"] = replica
        return session

    def _make_replica(self, url: str | URL) -> Replica:
        engine = build_engine(url, config=self.config, **self._engine_options)
        return Replica.of(engine)

    def ping(self, *, bypass_pool: bool = False) -> float:
        """Run ``SELECT 1``; return the round trip in seconds, raise a typed error on failure.

        ``bypass_pool=True`` (readiness probes) opens a connection of its own instead of waiting
        for one of the pool's: a busy pool is not an unavailable database (SQLite and test-bound
        databases always use their usual connection)."""
        start = time.perf_counter()
        try:
            if self._bound is not None:
                self._bound.execute(text("SELECT 1"))
            else:
                engine = self.engine
                if bypass_pool and engine.dialect.name != "sqlite":
                    engine = self._probe_engine()
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise translate(exc) from exc
        return time.perf_counter() - start

    def _probe_engine(self) -> Engine:
        probe = self._probe
        if probe is None:
            url = self._url if self._owns_engine else self.engine.url
            probe = self._probe = build_engine(url, config=self.config, **self._probe_options())
        return probe

    def create_all(self, metadata: MetaData) -> None:
        with self.engine.begin() as conn:
            metadata.create_all(conn)

    def drop_all(self, metadata: MetaData) -> None:
        with self.engine.begin() as conn:
            metadata.drop_all(conn)

    @contextmanager
    def bind(self, connection: Connection) -> Iterator[Connection]:
        """Make every session of this database use *connection* (test isolation)."""
        previous = self._bound
        self._bound = connection
        try:
            yield connection
        finally:
            self._bound = previous

    def dispose(self) -> None:
        """Close pooled connections (the engine is rebuilt on next use if repom created it)."""
        engine = self._engine
        if engine is None:
            return
        engine.dispose()
        if self._probe is not None:
            self._probe.dispose()
            self._probe = None
        for replica in self._replicas or ():
            replica.engine.dispose()
            if replica.probe is not None:
                replica.probe.dispose()
                replica.probe = None
        if self._owns_engine:
            self._engine = None
            self.__dict__.pop("_factory", None)


class AsyncDatabase(_DatabaseBase["AsyncEngine", "AsyncConnection"]):
    """An async engine and its session factory (same semantics as :class:`Database`)."""

    is_async = True

    def _build_engine(self) -> AsyncEngine:
        url = self._url
        if isinstance(url, URL):
            url = url.render_as_string(hide_password=False)
        if url is not None and not is_async_url(url):
            url = convert_to_async_uri(url)  # AsyncDatabase("postgresql://...") means asyncpg
        return build_async_engine(url, config=self.config, **self._engine_options)

    def _sync_engine(self) -> Engine:
        return self.engine.sync_engine

    @property
    def session_factory(self) -> AsyncSessionMaker[AsyncSession]:
        factory: AsyncSessionMaker[AsyncSession] | None = getattr(self, "_factory", None)
        if factory is None:
            from sqlalchemy.ext.asyncio import async_sessionmaker

            from repom.models.session import RepomSession

            factory = async_sessionmaker(
                bind=self.engine, expire_on_commit=False, sync_session_class=RepomSession
            )
            self._factory = factory
        return factory

    def session(self, **kwargs: Any) -> AsyncSession:
        """A new ``AsyncSession`` (the caller closes it)."""
        bound = self._bound
        if bound is not None:
            kwargs.setdefault("bind", bound)
            kwargs.setdefault("join_transaction_mode", "create_savepoint")
        session = self.session_factory(**kwargs)
        session.sync_session.info["repom_database"] = self
        return session

    async def check_replicas(self) -> list[ReplicaStatus]:
        """Ping every replica on a connection of its own: role, replication lag, latency."""
        results = []
        for replica in self.replicas:
            if replica.probe is None:
                replica.probe = build_async_engine(
                    replica.engine.url, config=self.config, **self._probe_options()
                )
            start = time.perf_counter()
            try:
                async with replica.probe.connect() as conn:
                    row = (await conn.execute(_REPLICA_HEALTH)).one()
                results.append(ReplicaStatus.from_row(replica, row, time.perf_counter() - start))
            except Exception as exc:
                results.append(ReplicaStatus(replica.name, error=type(translate(exc)).__name__))
        return results

    def replica_session(self, replica: Replica) -> AsyncSession:
        """A new ``AsyncSession`` on *replica*."""
        session = self.session_factory(bind=replica.engine)
        session.sync_session.info["repom_database"] = self
        session.sync_session.info["repom_replica"] = replica
        return session

    def _make_replica(self, url: str | URL) -> Replica:
        if isinstance(url, URL):
            url = url.render_as_string(hide_password=False)
        if not is_async_url(url):
            url = convert_to_async_uri(url)
        engine = build_async_engine(url, config=self.config, **self._engine_options)
        return Replica.of(engine)

    async def ping(self, *, bypass_pool: bool = False) -> float:
        start = time.perf_counter()
        try:
            if self._bound is not None:
                await self._bound.execute(text("SELECT 1"))
            else:
                engine = self.engine
                if bypass_pool and engine.dialect.name != "sqlite":
                    engine = self._probe_engine()
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise translate(exc) from exc
        return time.perf_counter() - start

    def _probe_engine(self) -> AsyncEngine:
        probe = self._probe
        if probe is None:
            url = self._url if self._owns_engine else self.engine.url
            probe = self._probe = build_async_engine(
                url, config=self.config, **self._probe_options()
            )
        return probe

    async def create_all(self, metadata: MetaData) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def drop_all(self, metadata: MetaData) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)

    @asynccontextmanager
    async def bind(self, connection: AsyncConnection) -> AsyncIterator[AsyncConnection]:
        previous = self._bound
        self._bound = connection
        try:
            yield connection
        finally:
            self._bound = previous

    async def dispose(self) -> None:
        engine = self._engine
        if engine is None:
            return
        await engine.dispose()
        if self._probe is not None:
            await self._probe.dispose()
            self._probe = None
        for replica in self._replicas or ():
            await replica.engine.dispose()
            if replica.probe is not None:
                await replica.probe.dispose()
                replica.probe = None
        if self._owns_engine:
            self._engine = None
            self.__dict__.pop("_factory", None)


# --------------------------------------------------------------------------- registrations

#: ``repom.transactions.transaction``, registered by :mod:`repom.database` (a layer above)
_transaction_factory: Callable[..., Any] | None = None


def register_transaction_factory(factory: Callable[..., Any]) -> None:
    """Give ``Database.transaction()`` its implementation (called by :mod:`repom.database`)."""
    global _transaction_factory
    _transaction_factory = factory


# --------------------------------------------------------------------------- defaults

_defaults_lock = threading.Lock()
_background: set[asyncio.Task[None]] = set()
_default_sync: Database | None = None
_default_async: AsyncDatabase | None = None


def get_database() -> Database:
    """The default sync :class:`Database`, built from :func:`get_config` on first use."""
    global _default_sync
    db = _default_sync
    if db is None:
        with _defaults_lock:
            if _default_sync is None:
                _default_sync = Database()
            db = _default_sync
    return db


def get_async_database() -> AsyncDatabase:
    """The default :class:`AsyncDatabase` (async URL derived from the config)."""
    global _default_async
    db = _default_async
    if db is None:
        with _defaults_lock:
            if _default_async is None:
                _default_async = AsyncDatabase()
            db = _default_async
    return db


def set_database(database: Database | None) -> Database | None:
    """Replace the default sync database; returns the previous one (not disposed)."""
    global _default_sync
    with _defaults_lock:
        previous, _default_sync = _default_sync, database
    return previous


def set_async_database(database: AsyncDatabase | None) -> AsyncDatabase | None:
    """Replace the default async database; returns the previous one (not disposed)."""
    global _default_async
    with _defaults_lock:
        previous, _default_async = _default_async, database
    return previous


def reset_default_databases() -> None:
    """Dispose and forget the default databases (they are rebuilt on next use)."""
    sync_db = set_database(None)
    async_db = set_async_database(None)
    if sync_db is not None:
        sync_db.dispose()
    if async_db is not None and async_db._engine is not None:
        # An AsyncEngine's pool can only be closed from an event loop; dropping it closes the
        # connections when they are garbage collected.  Dispose in-loop where we can.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            async_db._engine.sync_engine.dispose(close=False)
        else:
            _background.add(task := loop.create_task(async_db.dispose()))
            task.add_done_callback(_background.discard)


# set_config() drops the default databases built from the previous configuration
on_config_change(reset_default_databases)
