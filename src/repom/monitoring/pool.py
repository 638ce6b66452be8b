"""``PoolMonitor``: pool figures for every pool class, health checks, and the listeners.

``status()`` needs no listener for ``QueuePool``/``AsyncAdaptedQueuePool`` (the pool counts for
itself).  ``NullPool``, ``StaticPool`` and ``SingletonThreadPool`` keep no count of checked-out
connections, so the first ``PoolMonitor`` made for such an engine attaches two tiny pool listeners
(checkout/checkin) that count them; connections checked out before that moment are not counted.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, Union, cast, overload

from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool, QueuePool, SingletonThreadPool, StaticPool

from repom.engine import pool_class_name
from repom.exceptions import RepomError
from repom.monitoring._tracker import (
    COUNTERS,
    MonitorOptions,
    Tracker,
    checkout_current_frames,
    checkout_route,
    default_name,
    drop_tracker,
    format_frames,
    holder_label,
    pool_logger,
    tracker_for,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


class DatabaseLike(Protocol):
    """What monitoring needs of a repom ``Database``/``AsyncDatabase`` (the databases layer sits
    above monitoring, so it is described here rather than imported)."""

    @property
    def engine(self) -> Any: ...

    @property
    def bound_connection(self) -> Any: ...


class ManagerLike(Protocol):
    """What monitoring needs of a ``DatabaseManager``."""

    @property
    def database(self) -> DatabaseLike: ...


MonitorTarget = Union[Engine, "AsyncEngine", DatabaseLike, ManagerLike]


def database_of(target: Any) -> DatabaseLike | None:
    """The repom database behind *target*: the target itself, or a ``DatabaseManager``'s."""
    if hasattr(target, "bound_connection") and hasattr(target, "engine"):
        return cast(DatabaseLike, target)
    if hasattr(type(target), "database"):  # DatabaseManager (a property builds it on first use)
        inner = target.database
        if hasattr(inner, "bound_connection") and hasattr(inner, "engine"):
            return cast(DatabaseLike, inner)
    return None


__all__ = [
    "ConnectionPoolMonitor",
    "PoolHealth",
    "PoolMonitor",
    "UnsupportedMonitorTarget",
    "database_of",
    "sync_engine_of",
]

logger = pool_logger


class UnsupportedMonitorTarget(RepomError, TypeError):
    """The object given to a monitor is not an engine, session, connection or database."""


def sync_engine_of(target: Any) -> Engine:
    """The sync ``Engine`` behind an Engine, AsyncEngine, Database, AsyncDatabase or
    DatabaseManager."""
    if isinstance(target, Engine):
        return target
    sync = getattr(target, "sync_engine", None)  # AsyncEngine
    if isinstance(sync, Engine):
        return sync
    database = database_of(target)
    if database is not None:
        return sync_engine_of(database.engine)
    raise UnsupportedMonitorTarget(
        f"cannot monitor a {type(target).__name__}: expected an Engine, AsyncEngine, Database, "
        "AsyncDatabase or DatabaseManager"
    )


# --------------------------------------------------------------------------- figures


def _pings_idle(pool: Pool) -> bool:
    """Does repom's idle-connection liveness check (``repom.engine``) sit on this pool?"""
    try:
        listeners = list(pool.dispatch.checkout)
    except Exception:  # pragma: no cover - a pool without the usual dispatch
        return False
    return any(getattr(fn, "__name__", "") == "_repom_checkout" for fn in listeners)


def _pool_figures(pool: Pool, tracked_out: int) -> dict[str, Any]:
    """Size, use and limits of *pool*; *tracked_out* is the listener count (pools that keep
    none themselves).  ``capacity`` is the most connections the pool hands out at once before a
    caller has to wait (``None``: it never makes anyone wait)."""
    timeout: float | None = None
    capacity: int | None = None
    if isinstance(pool, QueuePool):  # and AsyncAdaptedQueuePool
        size = pool.size()
        max_overflow = int(getattr(pool, "_max_overflow", -1))
        checked_out = pool.checkedout()
        checked_in = pool.checkedin()
        overflow = max(0, pool.overflow())
        total = checked_in + checked_out
        timeout = pool.timeout()
        if max_overflow >= 0:
            capacity = size + max_overflow
    elif isinstance(pool, StaticPool):  # one connection, shared by every checkout
        size, max_overflow, overflow = 1, 0, 0
        checked_out = tracked_out
        record = pool.__dict__.get("connection")
        total = 1 if record is not None and record.dbapi_connection is not None else 0
        checked_in = total if checked_out == 0 else 0
    elif isinstance(pool, SingletonThreadPool):  # one connection per thread
        size, max_overflow, overflow = int(pool.size), 0, 0
        checked_out = tracked_out
        total = max(len(getattr(pool, "_all_conns", ())), checked_out)
        checked_in = total - checked_out
    else:  # NullPool (a new connection per checkout) and pools unknown to repom
        size, max_overflow, overflow = 0, -1, 0
        checked_out = tracked_out
        total = checked_out
        checked_in = 0
    if capacity:
        utilization = checked_out / capacity * 100.0
    elif size:
        utilization = min(checked_out, size) / size * 100.0
    else:
        utilization = 0.0
    recycle = getattr(pool, "_recycle", -1)
    return {
        "pool_class": pool_class_name(pool),
        "pool_size": size,
        "size": size,  # compatibility name
        "max_overflow": max_overflow,
        "capacity": capacity,
        "checked_out": checked_out,
        "checked_in": checked_in,
        "overflow": overflow,
        "total": total,
        "utilization": round(utilization, 2),
        "timeout": timeout,
        "recycle": recycle if recycle is not None and recycle >= 0 else None,
        # SQLAlchemy's ping on every checkout, or repom's ping of idle connections only
        "pre_ping": bool(getattr(pool, "_pre_ping", False)) or _pings_idle(pool),
    }


_NO_TRACKER: dict[str, Any] = {
    "monitored": False,
    "waiting": 0,
    "checkouts": 0,
    "wait_time_avg": 0.0,
    "wait_time_max": 0.0,
    "statements": 0,
    **dict.fromkeys(COUNTERS, 0),
}


@dataclass(frozen=True)
class PoolHealth:
    """What :meth:`PoolMonitor.check_health` found: ``healthy`` is true when nothing was."""

    healthy: bool
    warnings: tuple[str, ...]
    status: dict[str, Any] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "warnings": list(self.warnings), "status": self.status}


# --------------------------------------------------------------------------- seed-name helper

M = TypeVar("M", bound="PoolMonitor")
R = TypeVar("R")


class _ClassOrInstance(Generic[R]):
    """A method callable on an instance (``monitor.get_pool_status()``) and on the
    class with an engine first (``PoolMonitor.get_pool_status(engine)``)."""

    def __init__(self, func: Callable[..., R]) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    @overload
    def __get__(self, instance: None, owner: type[M]) -> Callable[..., R]: ...

    @overload
    def __get__(self, instance: M, owner: type[M] | None = None) -> Callable[..., R]: ...

    def __get__(self, instance: Any, owner: Any = None) -> Callable[..., R]:
        func = self.func
        if instance is not None:
            return functools.partial(func, instance)
        cls = owner

        def on_class(target: MonitorTarget, /, **kwargs: Any) -> R:
            return func(cls(target), **kwargs)

        return on_class


# --------------------------------------------------------------------------- the monitor


class PoolMonitor:
    """Pool status and health of one engine (sync or async), and the monitoring listeners.

    ``PoolMonitor(engine).status()`` reads the pool; ``install(...)`` adds the slow-statement log,
    long-checkout warning, connection-age warning, wait timing and counters (idempotent: calling
    it again changes the options); ``uninstall()`` removes them.  Monitors of the same engine
    share one set of listeners and figures.
    """

    def __init__(self, engine: MonitorTarget, *, name: str | None = None) -> None:
        self.engine: Engine = sync_engine_of(engine)
        if name is not None:
            tracker_for(self.engine, create=True, name=name)
        self._counting_tracker()  # pools that keep no checked-out count: count from now on

    # ------------------------------------------------------------------ identity

    @property
    def tracker(self) -> Tracker | None:
        """The engine's listeners and figures (shared by every monitor of the engine)."""
        return tracker_for(self.engine, create=False)

    def _counting_tracker(self) -> Tracker | None:
        if isinstance(self.engine.pool, QueuePool):  # counts for itself
            return self.tracker
        tracker = tracker_for(self.engine, create=True)
        assert tracker is not None
        if not tracker.installed:
            tracker.refresh()  # the checkout/checkin listeners
        return tracker

    @property
    def name(self) -> str:
        """The label of this engine in logs and metrics (unique among monitored engines)."""
        tracker = tracker_for(self.engine, create=True)
        assert tracker is not None
        return tracker.name

    @property
    def installed(self) -> bool:
        tracker = self.tracker
        return tracker is not None and tracker.installed

    @property
    def options(self) -> MonitorOptions | None:
        tracker = self.tracker
        return tracker.options if tracker is not None and tracker.installed else None

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Pool figures and monitoring counters (see ``docs/monitoring.md`` for every key)."""
        tracker = self._counting_tracker()
        pool = self.engine.pool
        figures = _pool_figures(pool, len(tracker.active) if tracker is not None else 0)
        if tracker is not None:
            figures["name"] = tracker.name
            figures.update(tracker.snapshot())
        else:
            figures["name"] = default_name(self.engine)
            figures.update(_NO_TRACKER)
        return figures

    @_ClassOrInstance
    def get_pool_status(self) -> dict[str, Any]:
        """``monitor.get_pool_status()`` or ``PoolMonitor.get_pool_status(engine)``."""
        return self.status()

    def long_checkouts(self, threshold: float | None = None) -> list[dict[str, Any]]:
        """Connections checked out right now for longer than *threshold* seconds (default: the
        installed ``long_checkout_threshold``), longest first.  Needs :meth:`install`."""
        tracker = self.tracker
        if tracker is None:
            return []
        if threshold is None:
            threshold = tracker.options.long_checkout_threshold
            if threshold is None:
                return []
        now = time.perf_counter()
        entries = [e for e in list(tracker.active.values()) if now - e[0] >= threshold]
        entries.sort(key=lambda e: e[0])
        found = []
        for entry in entries:
            # where it was checked out (capture_stack=True), else where its holder is now
            frames = entry[4] if entry[4] is not None else checkout_current_frames(entry)
            route = checkout_route(entry)
            found.append(
                {
                    "duration": now - entry[0],
                    "route": route,
                    "holder": holder_label(route, frames),
                    "stack": format_frames(frames) or None,
                }
            )
        return found

    def check_health(
        self,
        *,
        utilization_threshold: float = 80.0,
        long_checkout_threshold: float | None = None,
        log: bool = False,
    ) -> PoolHealth:
        """Look for trouble without touching the database: utilization above the threshold
        (pools that can run out only), callers waiting on a full pool, checkout timeouts since
        the previous check, connections held longer than the long-checkout threshold."""
        status = self.status()
        warnings: list[str] = []
        capacity = status["capacity"]
        if capacity is not None and status["utilization"] > utilization_threshold:
            warnings.append(
                f"pool utilization high: {status['utilization']:.1f}% "
                f"({status['checked_out']} of {capacity} connections checked out)"
            )
        if capacity is not None and status["waiting"] and status["checked_out"] >= capacity:
            warnings.append(f"{status['waiting']} caller(s) waiting for a connection")
        tracker = self.tracker
        if tracker is not None:
            timeouts = status["timeouts"]
            new = timeouts - tracker.timeouts_reported
            tracker.timeouts_reported = timeouts
            if new > 0:
                warnings.append(f"{new} checkout timeout(s) since the previous health check")
        for held in self.long_checkouts(long_checkout_threshold):
            warnings.append(f"connection held for {held['duration']:.1f} s by {held['holder']}")
        if log:
            for message in warnings:
                logger.warning(
                    "%s (pool %s)",
                    message,
                    status["name"],
                    extra={"pool": status["name"], "status": status},
                )
        return PoolHealth(not warnings, tuple(warnings), status)

    async def monitor_health(self, **kwargs: Any) -> PoolHealth:
        """Check the pool and log a warning for each problem found."""
        kwargs.setdefault("log", True)
        return self.check_health(**kwargs)

    # ------------------------------------------------------------------ listeners

    def install(
        self,
        *,
        slow_query_threshold: float | None = 0.5,
        long_checkout_threshold: float | None = 5.0,
        max_connection_age: float | None = None,
        log_parameters: bool = False,
        capture_stack: bool = False,
        track_statements: bool = True,
        track_wait: bool = True,
        track_transactions: bool = True,
        name: str | None = None,
    ) -> PoolMonitor:
        """Install (or reconfigure) the monitoring listeners on this engine; returns ``self``.

        * ``slow_query_threshold`` -- log statements slower than this (logger
          ``repom.monitoring.sql``; parameters masked unless ``log_parameters=True``);
        * ``long_checkout_threshold`` -- log connections held longer than this (logger
          ``repom.monitoring.pool``) with the route that held it (see :func:`route_context`) and
          the stack of the code that returned it -- or, with ``capture_stack=True``, the stack
          that checked it out (a few microseconds per checkout);
        * ``max_connection_age`` -- log a connection still in use after this many seconds;
        * ``track_statements`` / ``track_wait`` / ``track_transactions`` -- the statement
          duration histogram, the checkout wait (histogram, ``waiting``, timeouts raised as
          :class:`~repom.exceptions.PoolExhausted`) and the commit/rollback counters.
        """
        options = MonitorOptions(
            slow_query_threshold=slow_query_threshold,
            long_checkout_threshold=long_checkout_threshold,
            max_connection_age=max_connection_age,
            log_parameters=log_parameters,
            capture_stack=capture_stack,
            track_statements=track_statements,
            track_wait=track_wait,
            track_transactions=track_transactions,
        )
        tracker = tracker_for(self.engine, create=True, name=name)
        assert tracker is not None
        tracker.configure(options, installed=True)
        return self

    def uninstall(self) -> None:
        """Remove every listener this engine got from repom's monitoring."""
        drop_tracker(self.engine)

    @_ClassOrInstance
    def setup_listeners(self, **options: Any) -> PoolMonitor:
        """``PoolMonitor.setup_listeners(engine)`` -- :meth:`install` with a
        five-minute connection-age warning unless told otherwise."""
        options.setdefault("max_connection_age", 300.0)
        return self.install(**options)

    def __repr__(self) -> str:
        tracker = self.tracker
        name = tracker.name if tracker is not None else self.engine.url.drivername
        return f"{type(self).__name__}({name!r}, installed={self.installed})"


class ConnectionPoolMonitor(PoolMonitor):
    """Compatibility name: ``ConnectionPoolMonitor(engine).get_pool_status()`` and
    ``await monitor.monitor_health()``."""
