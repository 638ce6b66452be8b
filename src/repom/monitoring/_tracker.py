"""The per-engine listeners behind :class:`repom.monitoring.PoolMonitor`.

One :class:`Tracker` per (sync) engine holds the options, the counters and histograms, and the
SQLAlchemy event listeners it installed, so that installing twice reconfigures instead of doubling
the listeners, and :meth:`Tracker.remove` takes every one of them off again.  Async engines are
tracked through their ``sync_engine``: the same listeners run for both flavours.

What each listener costs is paid only when its option is on:

* pool ``checkout``/``checkin``/``detach`` events -- long-checkout warnings, connection age, and
  the checked-out count of pools that keep none themselves (NullPool, StaticPool,
  SingletonThreadPool);
* pool ``connect``/``close``/``invalidate`` events -- connection lifecycle counters (they run
  only when connections come and go);
* wrappers set on the engine's own pool and dialect *instances* (``vars(obj)[name]``, removed by
  :meth:`Tracker.remove`): ``pool.connect`` -- the wait for a connection, callers waiting,
  checkout timeouts (the pool has no event *before* a checkout); ``dialect.do_execute`` /
  ``do_executemany`` / ``do_execute_no_params`` -- the statement histogram and slow-statement log;
  ``dialect.do_commit`` / ``do_rollback`` -- transaction counters.

Why wrappers and no ``ConnectionEvents`` (``before_cursor_execute``, ``commit``...): once an
engine has a connection-level listener, SQLAlchemy builds a joined event dispatcher for every new
``Connection`` and dispatches about ten events per unit of work, which costs a few percent of
a PostgreSQL unit of work before any listener does anything (``bench/monitoring_overhead.py``
compares the usual cursor-event recipe).  The dialect methods are what
SQLAlchemy calls for every cursor execution and every COMMIT/ROLLBACK (after any ``do_execute``
event listener had its say), so a wrapper there costs one function call and changes nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from asyncio import current_task
from asyncio.events import _get_running_loop
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from threading import get_ident
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool, QueuePool

from repom.exceptions import ConfigurationError, translate
from repom.monitoring._stats import FOLD_AT, STATEMENT_BUCKETS, WAIT_BUCKETS, Counter, Histogram
from repom.monitoring.context import _route, current_route, resolve_route

__all__ = ["MonitorOptions", "Tracker", "mask_parameters", "tracker_for"]

pool_logger = logging.getLogger("repom.monitoring.pool")
sql_logger = logging.getLogger("repom.monitoring.sql")

_CHECKOUTS = "repom_checkouts"  # key in ConnectionPoolEntry.info: the open checkouts
_MASK = "***"
_DIALECT_METHODS = (
    "do_execute",
    "do_executemany",
    "do_execute_no_params",
    "do_commit",
    "do_rollback",
)


@dataclass(frozen=True)
class MonitorOptions:
    """What :meth:`PoolMonitor.install` switches on.  Thresholds are seconds; ``None`` disables."""

    slow_query_threshold: float | None = 0.5
    long_checkout_threshold: float | None = 5.0
    max_connection_age: float | None = None
    log_parameters: bool = False
    capture_stack: bool = False
    track_statements: bool = True
    track_wait: bool = True
    track_transactions: bool = True

    def __post_init__(self) -> None:
        for name in ("slow_query_threshold", "long_checkout_threshold", "max_connection_age"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds or None, got {value!r}",
                    variable=name,
                )
        for flag in fields(self):
            if flag.type == "bool" and not isinstance(getattr(self, flag.name), bool):
                raise ConfigurationError(
                    f"{flag.name} must be True or False, got {getattr(self, flag.name)!r}",
                    variable=flag.name,
                )


#: everything off: what a tracker does before install() (count checkouts when the pool cannot)
PASSIVE = MonitorOptions(
    slow_query_threshold=None,
    long_checkout_threshold=None,
    track_statements=False,
    track_wait=False,
    track_transactions=False,
)

COUNTERS = (
    "timeouts",
    "invalidations",
    "disconnects",
    "connects",
    "closes",
    "recycles",
    "long_checkouts",
    "old_connections",
    "slow_statements",
    "commits",
    "rollbacks",
)


Frames = tuple[tuple[str, int, str], ...]

# One checked-out connection, a plain tuple (built on every checkout, so kept cheap):
# (perf_counter at checkout, raw route context value, thread id, asyncio task or None,
#  frames captured at checkout or None, the connection's info dict).  Accessors below.
Checkout = tuple[float, Any, int, Any, "Frames | None", dict[str, Any]]


def checkout_route(entry: Checkout) -> str | None:
    return resolve_route(entry[1])


def checkout_current_frames(entry: Checkout) -> Frames:
    """Where the holder of *entry* is now: its task's coroutine chain, or its thread's stack."""
    if entry[3] is not None:
        return coroutine_frames(entry[3])
    frame = sys._current_frames().get(entry[2])
    return walk_frames(frame) if frame is not None else ()


def format_frames(frames: Frames) -> str:
    return "\n".join(f'  File "{f}", line {n}, in {name}' for f, n, name in frames)


def holder_label(route: str | None, frames: Frames) -> str:
    if route:
        return route
    if frames:
        filename, lineno, name = frames[0]
        return f"{name} ({filename}:{lineno})"
    return "an unknown holder"


# --------------------------------------------------------------------------- stacks

_internal_files: dict[str, bool] = {}


def _internal_prefixes() -> tuple[str, ...]:
    import sqlalchemy

    repom_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../repom
    prefixes = [
        os.path.dirname(sqlalchemy.__file__) + os.sep,
        repom_dir + os.sep,
        os.path.dirname(os.__file__) + os.sep,  # the standard library (asyncio, threading, ...)
    ]
    greenlet = sys.modules.get("greenlet")
    if greenlet is not None and greenlet.__file__:
        prefixes.append(os.path.dirname(greenlet.__file__) + os.sep)
    return tuple(prefixes)


_prefixes: tuple[str, ...] | None = None


def _is_internal(filename: str) -> bool:
    global _prefixes
    if _prefixes is None:
        _prefixes = _internal_prefixes()
    internal = filename.startswith(_prefixes) or filename.startswith("<")
    _internal_files[filename] = internal
    return internal


def capture_frames(limit: int = 8) -> Frames:
    """The innermost *limit* frames of application code calling this (SQLAlchemy, repom, the
    standard library and greenlet left out).  In async code the walk continues from SQLAlchemy's
    greenlet into the coroutine that awaited it.  No source lines are read."""
    return walk_frames(sys._getframe(1), limit, follow_greenlet=True)


def walk_frames(frame: Any, limit: int = 8, *, follow_greenlet: bool = False) -> Frames:
    found: list[tuple[str, int, str]] = []
    glet: Any = None
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        internal = _internal_files.get(filename)
        if internal is None:
            internal = _is_internal(filename)
        if not internal:
            found.append((filename, frame.f_lineno, code.co_name))
            if len(found) >= limit:
                break
        frame = frame.f_back
        if frame is None and follow_greenlet:
            # bottom of a greenlet: go on in the one that switched to it (the awaiting coroutine)
            if glet is None:
                module = sys.modules.get("greenlet")
                glet = module.getcurrent() if module is not None else None
            glet = glet.parent if glet is not None else None
            if glet is not None:
                frame = glet.gr_frame
    return tuple(found)


def coroutine_frames(task: Any, limit: int = 8) -> Frames:
    """Application frames of a suspended asyncio task, innermost first (follows ``cr_await``)."""
    chain: list[Any] = []
    coro: Any = task.get_coro()
    while coro is not None and len(chain) < 200:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    found: list[tuple[str, int, str]] = []
    for frame in reversed(chain):
        filename = frame.f_code.co_filename
        internal = _internal_files.get(filename)
        if internal is None:
            internal = _is_internal(filename)
        if not internal:
            found.append((filename, frame.f_lineno, frame.f_code.co_name))
            if len(found) >= limit:
                break
    return tuple(found)


# --------------------------------------------------------------------------- parameters


def _mask_one(parameters: Any) -> Any:
    if isinstance(parameters, dict):
        return dict.fromkeys(parameters, _MASK)
    if isinstance(parameters, tuple):
        return (_MASK,) * len(parameters)
    if isinstance(parameters, list):
        return [_MASK] * len(parameters)
    return _MASK


def mask_parameters(parameters: Any, executemany: bool = False, *, limit: int = 10) -> Any:
    """*parameters* with every value replaced by ``***`` (names and counts kept)."""
    if parameters is None:
        return None
    if executemany and isinstance(parameters, list | tuple):
        masked = [_mask_one(p) for p in parameters[:limit]]
        if len(parameters) > limit:
            masked.append(f"... {len(parameters) - limit} more parameter sets")
        return masked
    return _mask_one(parameters)


def _shown_parameters(parameters: Any, executemany: bool, limit: int = 10) -> Any:
    if executemany and isinstance(parameters, list | tuple) and len(parameters) > limit:
        return [*parameters[:limit], f"... {len(parameters) - limit} more parameter sets"]
    return parameters


def _one_line(statement: str, limit: int = 1000) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- the tracker


# The wrappers are closures: on the hot path a closure variable is cheaper than an attribute of
# a wrapper object, and these run for every statement, checkout and COMMIT.


def _counted(original: Callable[[Any], None], tick: Callable[[], int]) -> Callable[[Any], None]:
    """``dialect.do_commit`` / ``do_rollback``: count the calls that succeed."""

    def counted(dbapi_connection: Any) -> None:
        original(dbapi_connection)
        # Only transactions ended by a Connection count: those pass a checked-out pool
        # connection (SQLAlchemy's _ConnectionFairy, holders _counter >= 1).  The pool's
        # reset-on-return (a connection already given back, _counter == 0) and the dialect's
        # first-connect initialisation (an ad-hoc proxy, no _counter) call do_rollback as well.
        if getattr(dbapi_connection, "_counter", 0) > 0:
            tick()

    return counted


def _timed_execute(tracker: Tracker, original: Callable[..., None], many: bool) -> Any:
    """``dialect.do_execute`` / ``do_executemany``: time the cursor call."""
    perf_counter = time.perf_counter
    histogram = tracker.statements
    record, pending = histogram.record, histogram.pending

    def timed(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        start = perf_counter()
        try:
            original(cursor, statement, parameters, context)
        except BaseException as exc:
            tracker.timed(start, statement, parameters, many, exc)
            raise
        elapsed = perf_counter() - start
        record(elapsed)
        if len(pending) > FOLD_AT:
            histogram.fold()
        threshold = tracker.options.slow_query_threshold
        if threshold is not None and elapsed >= threshold:
            tracker.slow(statement, parameters, many, elapsed, threshold, None)

    return timed


def _timed_execute_no_params(tracker: Tracker, original: Callable[..., None]) -> Any:
    """``dialect.do_execute_no_params``: time the cursor call."""

    def timed(cursor: Any, statement: str, context: Any = None) -> None:
        start = time.perf_counter()
        try:
            original(cursor, statement, context)
        except BaseException as exc:
            tracker.timed(start, statement, None, False, exc)
            raise
        tracker.timed(start, statement, None, False, None)

    return timed


def _timed_connect(tracker: Tracker, original: Callable[[], Any]) -> Callable[[], Any]:
    """``pool.connect``: time the wait for a connection, count callers waiting and timeouts.
    For pools that hand out a new connection object per call (QueuePool) it also opens the
    long-checkout record, which spares a ``checkout`` event listener."""
    perf_counter = time.perf_counter
    waiters = tracker.waiters  # deque append/pop are atomic: the gauge needs no lock
    histogram = tracker.wait
    record, pending = histogram.record, histogram.pending

    def connect() -> Any:
        start = perf_counter()
        waiters.append(None)
        try:
            connection = original()
        except BaseException as exc:
            waiters.pop()
            waited = perf_counter() - start
            histogram.observe(waited)
            if not isinstance(exc, sa_exc.TimeoutError):
                raise
            tracker.on_timeout(waited)
            new = translate(exc)
            if new is exc:
                raise
            raise new from exc
        now = perf_counter()
        waiters.pop()
        record(now - start)
        if len(pending) > FOLD_AT:
            histogram.fold()
        if tracker.records_in_connect:
            tracker.open_checkout(connection.info, now)
        return connection

    return connect


def _checkout_opener(tracker: Tracker) -> Callable[[dict[str, Any], float], None]:
    """``open(info, now)``: record a checkout in the connection's ``info`` and in
    ``tracker.active`` (route, thread and task kept for reporting, resolved only if needed)."""
    active = tracker.active

    def open_checkout(info: dict[str, Any], now: float) -> None:
        opts = tracker.options
        loop = _get_running_loop()
        entry: Checkout = (
            now,
            _route.get(),
            get_ident(),
            current_task(loop) if loop is not None else None,
            capture_frames()
            if opts.capture_stack and opts.long_checkout_threshold is not None
            else None,
            info,
        )
        entries = info.get(_CHECKOUTS)
        if entries is None:
            info[_CHECKOUTS] = [entry]
        else:
            entries.append(entry)
        active[id(entry)] = entry

    return open_checkout


def _checkin_listener(tracker: Tracker) -> Callable[[Any, Any], None]:
    """The pool ``checkin`` listener: close the checkout record, report a long one."""
    active = tracker.active
    perf_counter = time.perf_counter

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        entries = record.info.get(_CHECKOUTS)
        if not entries:
            return  # checked out before the listener was installed
        entry = entries.pop()
        active.pop(id(entry), None)
        threshold = tracker.options.long_checkout_threshold
        if threshold is not None:
            held = perf_counter() - entry[0]
            if held >= threshold:
                tracker.report_long_checkout(entry, held, threshold)

    return on_checkin


class Tracker:
    """Listeners, options and figures for one sync engine (see the module docstring)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = weakref.ref(engine)
        self.name = name
        self.options = PASSIVE
        self.installed = False
        self.counters = {name: Counter() for name in COUNTERS}
        self.wait = Histogram(WAIT_BUCKETS)
        self.statements = Histogram(STATEMENT_BUCKETS)
        self.waiters: deque[None] = deque()
        self.records_in_connect = False  # _TimedConnect opens the checkout records
        self.active: dict[int, Checkout] = {}  # id(entry) -> entry
        self.timeouts_reported = 0
        self._config_lock = threading.RLock()  # installing, removing, re-wrapping a new pool
        self._listening: dict[str, Callable[..., Any]] = {}
        # (id(obj), name) -> (our wrapper, the instance attribute it replaced or None)
        self._wrapped: dict[tuple[int, str], tuple[Callable[..., Any], Any]] = {}
        self._pool_counts_itself = isinstance(engine.pool, QueuePool)
        self._dialect = engine.dialect
        self.open_checkout = _checkout_opener(self)
        self._on_checkin = _checkin_listener(self)

    @property
    def engine(self) -> Engine | None:
        return self._engine()

    # ------------------------------------------------------------------ configuration

    def configure(self, options: MonitorOptions, *, installed: bool) -> None:
        with self._config_lock:
            self.options = options
            self.installed = installed
            self._apply()

    def _wanted(self) -> set[str]:
        opts = self.options
        wanted: set[str] = set()
        # QueuePool counts its connections; others need the checkout records for that
        if not self._pool_counts_itself or opts.long_checkout_threshold is not None:
            wanted |= {"checkin", "detach"}
            if not self.records_in_connect:
                wanted.add("checkout")
        if opts.max_connection_age is not None:
            wanted.add("checkout")
        if self.installed:
            wanted |= {"connect", "close", "invalidate", "soft_invalidate"}
        return wanted

    def refresh(self) -> None:
        """Add or remove listeners to match the options (idempotent)."""
        with self._config_lock:
            self._apply()

    def _apply(self) -> None:
        engine = self.engine
        if engine is None:
            return
        self.records_in_connect = (
            self._pool_counts_itself
            and self.installed
            and self.options.track_wait
            and self.options.long_checkout_threshold is not None
        )
        wanted = self._wanted()
        for identifier in [i for i in self._listening if i not in wanted]:
            event.remove(engine, identifier, self._listening.pop(identifier))
        for identifier in sorted(wanted - self._listening.keys()):
            listener = getattr(self, "_on_" + identifier)
            event.listen(engine, identifier, listener)
            self._listening[identifier] = listener
        self._wrap_pool(engine.pool)
        opts = self.options
        dialect = self._dialect
        timing = self.installed and (opts.track_statements or opts.slow_query_threshold is not None)
        counting = self.installed and opts.track_transactions
        commits, rollbacks = self.counters["commits"].tick, self.counters["rollbacks"].tick
        wraps: list[tuple[str, bool, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
            ("do_execute", timing, lambda f: _timed_execute(self, f, False)),
            ("do_executemany", timing, lambda f: _timed_execute(self, f, True)),
            ("do_execute_no_params", timing, lambda f: _timed_execute_no_params(self, f)),
            ("do_commit", counting, lambda f: _counted(f, commits)),
            ("do_rollback", counting, lambda f: _counted(f, rollbacks)),
        ]
        for method, wanted_on, make in wraps:
            if wanted_on:
                self._wrap(dialect, method, make)
            else:
                self._unwrap(dialect, method)

    def remove(self) -> None:
        """Take every listener and wrapper off."""
        with self._config_lock:
            self._remove()

    def _remove(self) -> None:
        engine = self.engine
        if engine is not None:
            for identifier, listener in list(self._listening.items()):
                event.remove(engine, identifier, listener)
            self._unwrap(engine.pool, "connect")
        for method in _DIALECT_METHODS:
            self._unwrap(self._dialect, method)
        self._listening.clear()
        for entry in list(self.active.values()):  # connections still out: forget their records
            entry[5].pop(_CHECKOUTS, None)
        self.active.clear()
        self.installed = False
        self.options = PASSIVE

    def _wrap(
        self, obj: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """Set ``make(obj.name)`` as *obj*'s own ``name`` (once).  A wrapper already set on the
        instance (repom's engine wraps ``dialect.do_commit``) is wrapped in turn and put back by
        :meth:`_unwrap`."""
        key = (id(obj), name)
        current = vars(obj).get(name)
        held = self._wrapped.get(key)
        if current is not None and held is not None and current is held[0]:
            return
        wrapper = make(getattr(obj, name))
        vars(obj)[name] = wrapper
        self._wrapped[key] = (wrapper, current)

    def _unwrap(self, obj: Any, name: str) -> None:
        held = self._wrapped.pop((id(obj), name), None)
        if held is None:
            return
        mine, previous = held
        if vars(obj).get(name) is mine:
            if previous is None:
                del vars(obj)[name]
            else:
                vars(obj)[name] = previous

    def _wrap_pool(self, pool: Pool) -> None:
        """Time ``pool.connect`` (again after ``engine.dispose()`` made a new pool)."""
        with self._config_lock:
            if self.installed and self.options.track_wait:
                self._wrap(pool, "connect", lambda f: _timed_connect(self, f))
            else:
                self._unwrap(pool, "connect")

    # ------------------------------------------------------------------ figures

    def incr(self, counter: str) -> None:
        self.counters[counter].tick()

    def snapshot(self) -> dict[str, Any]:
        wait = self.wait
        return {
            "monitored": self.installed,
            "waiting": len(self.waiters),
            "checkouts": wait.count,
            "wait_time_avg": wait.mean,
            "wait_time_max": wait.maximum,
            "statements": self.statements.count,
            **{name: counter.value for name, counter in self.counters.items()},
        }

    def on_timeout(self, waited: float) -> None:
        self.incr("timeouts")
        engine = self.engine
        pool = engine.pool if engine is not None else None
        pool_logger.warning(
            "connection pool %s exhausted: no connection within %.3f s (%s)",
            self.name,
            waited,
            pool.status() if pool is not None else "disposed",
            extra={"pool": self.name, "duration": waited, "route": current_route()},
        )

    # ------------------------------------------------------------------ pool listeners

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        opts = self.options
        if not self.records_in_connect and (
            not self._pool_counts_itself or opts.long_checkout_threshold is not None
        ):
            self.open_checkout(record.info, time.perf_counter())
        if opts.max_connection_age is not None:
            self._check_age(record, opts.max_connection_age)

    def _finish(self, record: Any) -> Checkout | None:
        entries = record.info.get(_CHECKOUTS)
        if not entries:
            return None  # checked out before the listener was installed
        entry: Checkout = entries.pop()
        self.active.pop(id(entry), None)
        return entry

    def report_long_checkout(self, entry: Checkout, held: float, threshold: float) -> None:
        self.incr("long_checkouts")
        # the stack captured at checkout, or else the code returning the connection now
        captured = entry[4]
        frames = captured if captured is not None else capture_frames()
        route = checkout_route(entry)
        stack = format_frames(frames) or None
        pool_logger.warning(
            "connection held for %.3f s (threshold %.3f s) on pool %s by %s%s",
            held,
            threshold,
            self.name,
            holder_label(route, frames),
            f"\n{stack}" if stack else "",
            extra={
                "pool": self.name,
                "duration": held,
                "threshold": threshold,
                "route": route,
                "stack": stack,
                "stack_at": "checkout" if captured is not None else "checkin",
            },
        )

    def _on_detach(self, dbapi_connection: Any, record: Any) -> None:
        self._finish(record)

    def _check_age(self, record: Any, max_age: float) -> None:
        connected = getattr(record, "last_connect_time", None)
        if not connected:
            return
        age = time.time() - connected
        if age > max_age and not record.info.get("repom_age_reported"):
            record.info["repom_age_reported"] = True
            self.incr("old_connections")
            pool_logger.warning(
                "long-lived connection on pool %s: %.0f s old (max_connection_age %.0f s); "
                "set pool_recycle to replace connections before they reach this age",
                self.name,
                age,
                max_age,
                extra={"pool": self.name, "age": age, "threshold": max_age},
            )

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        self.incr("connects")
        engine = self.engine
        if self.installed and engine is not None and "connect" not in vars(engine.pool):
            self._wrap_pool(engine.pool)  # a pool made by engine.dispose() is not wrapped yet
        info = getattr(record, "record_info", None)
        if info is None:
            return
        seen = info.get("repom_connects", 0)
        if seen and not info.pop("repom_invalidated", False):
            self.incr("recycles")
        info["repom_connects"] = seen + 1

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        self.incr("closes")

    def _invalidated(self, record: Any, exception: BaseException | None, soft: bool) -> None:
        self.incr("invalidations")
        if exception is not None and not soft:
            # SQLAlchemy invalidates with the error when it recognised a lost connection (during
            # a statement or the pre-ping)
            self.incr("disconnects")
        info = getattr(record, "record_info", None)
        if info is not None:
            info["repom_invalidated"] = True
        reason = f"{type(exception).__name__}: {exception}" if exception is not None else None
        pool_logger.log(
            logging.WARNING if exception is not None else logging.INFO,
            "connection %sinvalidated on pool %s%s",
            "soft-" if soft else "",
            self.name,
            f" ({reason})" if reason else "",
            extra={"pool": self.name, "reason": reason, "soft": soft},
        )

    def _on_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self._invalidated(record, exception, soft=False)

    def _on_soft_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self._invalidated(record, exception, soft=True)

    # ------------------------------------------------------------------ engine listeners

    def timed(
        self,
        start: float,
        statement: str,
        parameters: Any,
        many: bool,
        error: BaseException | None,
    ) -> None:
        elapsed = time.perf_counter() - start
        self.statements.observe(elapsed)
        threshold = self.options.slow_query_threshold
        if threshold is not None and elapsed >= threshold:
            reason = f"{type(error).__name__}: {error}" if error is not None else None
            self.slow(statement, parameters, many, elapsed, threshold, reason)

    def slow(
        self,
        statement: str,
        parameters: Any,
        many: bool,
        elapsed: float,
        threshold: float,
        error: str | None,
    ) -> None:
        self.incr("slow_statements")
        shown = (
            _shown_parameters(parameters, many)
            if self.options.log_parameters
            else mask_parameters(parameters, many)
        )
        sql_logger.warning(
            "slow statement (%.3f s, threshold %.3f s) on %s%s: %s",
            elapsed,
            threshold,
            self.name,
            " failed" if error else "",
            _one_line(statement),
            extra={
                "pool": self.name,
                "duration": elapsed,
                "threshold": threshold,
                "statement": statement,
                "parameters": shown,
                "executemany": many,
                "route": current_route(),
                "error": error,
            },
        )


# --------------------------------------------------------------------------- registry

_trackers: weakref.WeakKeyDictionary[Engine, Tracker] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def default_name(engine: Engine) -> str:
    url = engine.url
    database = url.database or ""
    if url.get_backend_name() == "sqlite":
        database = os.path.basename(database) or ":memory:"
    return f"{url.drivername}:{database}"


def tracker_for(engine: Engine, *, create: bool, name: str | None = None) -> Tracker | None:
    """The tracker of *engine*; created (with a unique *name*) when *create* is true."""
    tracker = _trackers.get(engine)
    if tracker is not None or not create:
        if tracker is not None and name is not None and tracker.name != name:
            with _registry_lock:
                tracker.name = _unique(name, tracker)
        return tracker
    with _registry_lock:
        tracker = _trackers.get(engine)
        if tracker is None:
            tracker = Tracker(engine, "")
            tracker.name = _unique(name or default_name(engine), tracker)
            _trackers[engine] = tracker
    return tracker


def _unique(name: str, tracker: Tracker) -> str:
    taken = {t.name for t in list(_trackers.values()) if t is not tracker}
    if name not in taken:
        return name
    n = 2
    while f"{name}#{n}" in taken:
        n += 1
    return f"{name}#{n}"


def drop_tracker(engine: Engine) -> None:
    with _registry_lock:
        tracker = _trackers.pop(engine, None)
    if tracker is not None:
        tracker.remove()


def installed_trackers() -> list[Tracker]:
    """Trackers whose monitor was installed (what the Prometheus collector exports)."""
    return [t for t in list(_trackers.values()) if t.installed]
