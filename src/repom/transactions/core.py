"""The transaction API: one implementation of the bookkeeping for sync and async code.

A :class:`Transaction` (what :func:`transaction` returns) is a context manager (``with`` for sync
code, ``async with`` for async code) and a decorator for sync and async functions.  Each entry
creates a :class:`_Scope`; every decision (propagation, validation, rollback-only marking, savepoint
levels, ``on_commit`` bookkeeping) is made by sync code operating on a sync ``Session``.  For an
``AsyncSession`` the very same functions run through ``AsyncSession.run_sync`` (SQLAlchemy's
greenlet bridge), so the async flavour differs only in how the I/O call is made -- and when
entering or leaving a scope talks to no database (a new transaction begins lazily; a session that
never took a connection ends by bookkeeping), they are called directly, without the bridge.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeGuard, TypeVar, cast, overload

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.session import SessionTransactionState

from repom._database import get_async_database, get_database
from repom.config import milliseconds
from repom.exceptions import (
    AfterCommitError,
    IllegalTransactionStateError,
    InvalidTransactionOption,
    RollbackOnlyError,
    TransactionError,
    TransactionRequiredError,
    translate,
)
from repom.monitoring._stats import count_callback_failure
from repom.retry import (
    RetryPolicy,
    register_transaction_probe,
    run_async_with_retry,
    run_with_retry,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from repom._database import AsyncDatabase, Database

__all__ = [
    "Causality",
    "IsolationLevel",
    "Propagation",
    "Transaction",
    "causality",
    "current_session",
    "in_transaction",
    "on_commit",
    "transaction",
    "transactional",
    "use_causality",
]

logger = logging.getLogger("repom.transactions")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class Propagation(enum.Enum):
    """How a scope relates to a transaction that is already active (Spring's names)."""

    REQUIRED = "required"  #: join the active transaction, or start one
    REQUIRES_NEW = "requires_new"  #: always start a new one (own session and connection)
    NESTED = "nested"  #: a SAVEPOINT inside the active transaction, or start one
    MANDATORY = "mandatory"  #: join the active transaction; error when there is none
    NEVER = "never"  #: error when a transaction is active; run without one
    SUPPORTS = "supports"  #: join when active, else run without a transaction


class IsolationLevel(enum.Enum):
    """Transaction isolation levels; only these values are ever sent to the database."""

    READ_UNCOMMITTED = "READ UNCOMMITTED"
    READ_COMMITTED = "READ COMMITTED"
    REPEATABLE_READ = "REPEATABLE READ"
    SERIALIZABLE = "SERIALIZABLE"

    @classmethod
    def parse(cls, value: IsolationLevel | str | None) -> IsolationLevel | None:
        """Accept an enum member or exactly one of the level names (any case, ``_`` or space)."""
        if value is None or isinstance(value, IsolationLevel):
            return value
        if isinstance(value, str):
            key = " ".join(value.strip().replace("_", " ").upper().split())
            for member in cls:
                if member.value == key:
                    return member
        allowed = ", ".join(m.value for m in cls)
        raise InvalidTransactionOption(
            f"invalid isolation level {value!r}; allowed: {allowed}", option="isolation"
        )


# --------------------------------------------------------------------------- state

Callback = Callable[[], Any]


@dataclass(slots=True)
class _Level:
    """One savepoint level of a transaction (level 0 is the transaction itself)."""

    callbacks: list[Callback] = field(default_factory=list)
    rollback_only: bool = False


@dataclass(slots=True)
class _TxState:
    """A physical transaction: its session and the bookkeeping shared by joined scopes."""

    database: Database | AsyncDatabase | None
    session: Session | AsyncSession
    sync_session: Session
    is_async: bool
    isolation: IsolationLevel | None
    read_only: bool
    owner: object
    levels: list[_Level] = field(default_factory=lambda: [_Level()])
    dialect: str = ""
    query_only_conn: Connection | None = None  # SQLite connection running PRAGMA query_only
    # bound (test) mode: the transaction is a savepoint, and SET LOCAL outlives a RELEASE, so the
    # settings a scope changed are put back before its "commit"
    restore_settings: dict[str, str] = field(default_factory=dict)
    stands_for_default: bool = False
    replica: Any = None  # the repom._database.Replica serving this read-only transaction
    required_lsn: int | None = None  # read-your-writes: the replica must have replayed this
    commit_lsn: int | None = None  # the primary's WAL position after this transaction committed
    # False once the transaction was committed, rolled back or handed back to its caller: a
    # session whose state is closed is no longer "in a repom scope"
    open: bool = True


_Kind = Literal["begin", "join", "savepoint", "none"]

_stack: ContextVar[tuple[_Scope, ...]] = ContextVar("repom_transaction_stack", default=())


def _owner_token(is_async: bool) -> object:
    if is_async:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        if task is not None:
            return task
    return threading.get_ident()


@dataclass(slots=True)
class _Scope:
    options: _Options
    kind: _Kind = "none"
    state: _TxState | None = None
    savepoint: SessionTransaction | None = None
    owns_session: bool = False
    active: bool = True
    none_session: Any = None  # the session of a scope that runs without a transaction
    # a scope opened by a session generator consumed in a ``for``/``async for`` loop: the frame
    # of that loop.  Only code running inside that frame may join the scope; once the loop was
    # left (return, break, an exception) the scope is abandoned and nobody joins it any more.
    consumer: FrameType | None = None

    @property
    def session(self) -> Any:
        """What the scope yields: the transaction's session, or the plain one of a "none" scope."""
        return self.state.session if self.state is not None else self.none_session

    @property
    def sync_session(self) -> Session | None:
        session = self.session
        return cast("Session | None", getattr(session, "sync_session", session))


@dataclass(frozen=True)
class _Options:
    propagation: Propagation = Propagation.REQUIRED
    isolation: IsolationLevel | None = None
    read_only: bool | None = None
    timeout: float | None = None
    database: Database | AsyncDatabase | None = None
    session: Session | AsyncSession | None = None
    retry: RetryPolicy | None = None
    synchronous_commit_off: bool = False
    sqlite_begin: str | None = None
    rollback_on_exception: bool = True
    commit_on_success: bool = True
    # a web request's transaction on the application's database: scopes that default to the
    # module default database join it too (see repom.fastapi)
    stands_for_default: bool = False
    # read replicas: None = a read-only transaction that starts a transaction uses a replica
    # when the database has one; False = pinned to the primary
    replica: bool | None = None


def _active_scopes() -> tuple[_Scope, ...]:
    stack = _stack.get()
    for scope in stack:
        if not scope.active:
            return tuple(s for s in stack if s.active)
    return stack


def _sync_of(session: Any) -> Session:
    return cast(Session, getattr(session, "sync_session", session))


def is_session(value: object) -> TypeGuard[Session | AsyncSession]:
    """True for a SQLAlchemy ``Session`` or ``AsyncSession`` (repom's or the application's)."""
    if isinstance(value, Session):
        return True
    return isinstance(getattr(value, "sync_session", None), Session) and not isinstance(value, type)


def _live_state(session: Session | AsyncSession) -> _TxState | None:
    """The repom transaction *session* belongs to right now, if any."""
    state = _sync_of(session).info.get("repom_tx")
    if isinstance(state, _TxState) and state.open:
        return state
    return None


def _caller_frames() -> Iterator[FrameType]:
    """The frames of the code running now, outermost last.  Inside SQLAlchemy's greenlet bridge
    (``AsyncSession.run_sync``) the walk continues in the suspended async code that called it."""
    frame: FrameType | None = sys._getframe(2)
    greenlet_mod = sys.modules.get("greenlet")
    current = greenlet_mod.getcurrent() if greenlet_mod is not None else None
    while True:
        while frame is not None:
            yield frame
            frame = frame.f_back
        parent = getattr(current, "parent", None)
        if parent is None:
            return
        frame = parent.gr_frame
        current = parent


def _abandoned(scope: _Scope) -> bool:
    """True when *scope* belongs to a session generator whose loop was left: the code running now
    is not inside the loop's frame.  Such a scope is taken off the stack for good (its generator
    rolls it back when the event loop or the garbage collector closes it)."""
    consumer = scope.consumer
    if consumer is None:
        return False
    for frame in _caller_frames():
        if frame is consumer:
            return False
    scope.active = False
    logger.debug("a session generator's loop was left; its transaction is not joined")
    return True


def _database_matches(
    state: _TxState, database: Database | AsyncDatabase | None, default: bool = False
) -> bool:
    """Does the transaction *state* run on *database*?  ``None`` accepts any database.
    *default*: *database* is the module default, which a request transaction stands for."""
    if database is None or state.database is database:
        return True
    if default and state.stands_for_default:
        return True
    if state.database is not None:
        return False
    # a session the application made itself: compare the engines
    try:
        bind: Any = state.sync_session.get_bind()
    except Exception:
        return False
    engine = getattr(bind, "engine", bind)
    try:
        target = database._sync_engine()
    except Exception:
        return False
    return engine is target


def _find_active(
    is_async: bool, database: Database | AsyncDatabase | None, default: bool = False
) -> _Scope | None:
    """The innermost active scope of this flavour running on *database* (any, when None)."""
    for scope in reversed(_stack.get()):
        if not scope.active or scope.state is None or not scope.state.open:
            continue
        if _abandoned(scope):
            continue
        if scope.state.is_async != is_async:
            continue
        if not _database_matches(scope.state, database, default):
            continue
        return scope
    return None


# Where after-commit callbacks go instead of running while repom.testing's
# capture_on_commit_callbacks() is active.  A plain list rather than a ContextVar: a capture in a
# test must also see commits made by other threads (a FastAPI TestClient request).
_commit_sinks: list[list[Callback]] = []


def _due(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks to run now: all of them, or none while a test captures them."""
    if _commit_sinks:
        _commit_sinks[-1].extend(callbacks)
        return []
    return callbacks


def current_session(database: Database | AsyncDatabase | None = None) -> Any:
    """The session of the innermost active transaction in this thread/task.

    Returns a ``Session`` in sync code and an ``AsyncSession`` in async code.  With *database*,
    the innermost transaction on that database.  Raises :class:`TransactionRequiredError` when
    there is none.
    """
    for scope in reversed(_stack.get()):
        if scope.active and scope.state is not None and scope.state.open:
            if _abandoned(scope) or not _database_matches(scope.state, database):
                continue
            return scope.state.session
    where = f" on {database!r}" if database is not None else ""
    raise TransactionRequiredError(f"no active repom transaction{where} in this context")


def in_transaction() -> bool:
    """True when a repom transaction is active in this thread/task."""
    return any(s.active and s.kind != "none" and not _abandoned(s) for s in reversed(_stack.get()))


class _Strict:
    """An ``on_commit`` callback registered with ``robust=False``: its error is raised (after
    every other callback ran)."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callback) -> None:
        self.callback = callback

    def __call__(self) -> Any:
        return self.callback()

    def __repr__(self) -> str:
        return _callback_name(self.callback)


def on_commit(
    callback: Callback, *, session: Session | AsyncSession | None = None, robust: bool = True
) -> None:
    """Run *callback* after the outermost transaction commits (Django's ``on_commit``).

    Callbacks run in registration order, after COMMIT succeeded, never on savepoint release.
    A callback registered inside a savepoint (``NESTED``) that rolls back is dropped, and so are
    all callbacks when the transaction rolls back.  In async code a callback may be a coroutine
    function; it is awaited.  Outside any transaction the callback runs immediately.

    The work is committed when callbacks run, so a failing callback cannot undo it: every
    callback runs, a failure is logged (with the callback's name) and counted
    (``repom.monitoring``), and nothing is raised -- unless the callback was registered with
    ``robust=False``: then :class:`~repom.exceptions.AfterCommitError` is raised once all
    callbacks ran (it says that the transaction *was* committed).
    """
    state = _state_for(session)
    if state is None and _commit_sinks:
        _commit_sinks[-1].append(callback if robust else _Strict(callback))
        return
    if state is None:
        result = callback()
        if inspect.isawaitable(result):
            raise TransactionError(
                "on_commit() outside a transaction got an async callback; await it yourself"
            )
        return
    if not state.is_async and inspect.iscoroutinefunction(callback):
        raise TransactionError("on_commit(): async callback registered in a sync transaction")
    state.levels[-1].callbacks.append(callback if robust else _Strict(callback))


def _state_for(session: Session | AsyncSession | None) -> _TxState | None:
    if session is not None:
        return _live_state(session)
    for scope in reversed(_stack.get()):
        if scope.active and scope.state is not None and scope.kind != "none":
            if scope.state.open and not _abandoned(scope):
                return scope.state
    return None


def _callback_name(callback: Callback) -> str:
    target = getattr(callback, "callback", callback) if isinstance(callback, _Strict) else callback
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if name is None:
        return repr(target)
    module = getattr(target, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def _callback_failed(callback: Callback, error: BaseException) -> None:
    name = _callback_name(callback)
    logger.error(
        "on_commit callback %s failed after the transaction was committed: %r",
        name,
        error,
        exc_info=error,
    )
    count_callback_failure(name)


def _after_commit_error(failures: list[tuple[Callback, BaseException]]) -> None:
    strict = [(cb, err) for cb, err in failures if isinstance(cb, _Strict)]
    if not strict:
        return
    names = ", ".join(_callback_name(cb) for cb, _ in strict)
    error = AfterCommitError(
        f"the transaction WAS committed, but on_commit callback(s) failed afterwards: {names}",
        errors=[err for _, err in strict],
    )
    raise error from strict[0][1]


def _run_callbacks_sync(callbacks: list[Callback]) -> None:
    failures: list[tuple[Callback, BaseException]] = []
    for callback in _due(callbacks):
        try:
            result = callback()
            if inspect.isawaitable(result):  # pragma: no cover - guarded in on_commit
                raise TransactionError("async on_commit callback in a sync transaction")
        except Exception as exc:
            _callback_failed(callback, exc)
            failures.append((callback, exc))
    _after_commit_error(failures)


async def _run_callbacks_async(callbacks: list[Callback]) -> None:
    failures: list[tuple[Callback, BaseException]] = []
    for callback in _due(callbacks):
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            _callback_failed(callback, exc)
            failures.append((callback, exc))
    _after_commit_error(failures)


# --------------------------------------------------------------------------- the sync core
# Every function below runs synchronously against a sync Session: directly for sync code, inside
# AsyncSession.run_sync() (a greenlet) for async code.


def _decide(
    opts: _Options, is_async: bool, database: Database | AsyncDatabase | None
) -> tuple[_Kind, _TxState | None]:
    """How a new scope relates to what is active: begin, join, savepoint or none -- and the
    transaction it joins.  *database* is the database a new transaction would run on (None when
    the caller passed a session)."""
    existing: _TxState | None
    if opts.session is not None:
        # the caller's session *is* the transaction: join it when it is in a repom scope
        # (wherever that scope was opened: the caller handed the session over), else own it
        existing = _live_state(opts.session)
        if existing is not None and existing.is_async != is_async:
            raise TransactionError("the session passed in belongs to the other flavour")
    else:
        scope = _find_active(is_async, database, opts.database is None)
        existing = scope.state if scope is not None and scope.kind != "none" else None
        if existing is not None and existing.owner != _owner_token(is_async):
            raise IllegalTransactionStateError(
                "the active transaction belongs to another "
                + ("task" if is_async else "thread")
                + "; a session cannot be shared across them (use Propagation.REQUIRES_NEW)"
            )
    prop = opts.propagation
    if prop is Propagation.REQUIRES_NEW:
        if existing is not None and opts.session is not None:
            raise IllegalTransactionStateError(
                "Propagation.REQUIRES_NEW needs a session of its own, but the session passed in "
                "is already in a transaction; do not pass a session (or use REQUIRED/NESTED)"
            )
        return "begin", None
    if prop is Propagation.NEVER:
        if existing is not None:
            raise IllegalTransactionStateError("Propagation.NEVER: a transaction is already active")
        return "none", None
    if prop is Propagation.MANDATORY:
        if existing is None:
            raise TransactionRequiredError("Propagation.MANDATORY: no active transaction to join")
        return "join", existing
    if prop is Propagation.SUPPORTS:
        return ("join", existing) if existing is not None else ("none", None)
    if prop is Propagation.NESTED:
        return ("savepoint", existing) if existing is not None else ("begin", None)
    return ("join", existing) if existing is not None else ("begin", None)


def _check_join(opts: _Options, state: _TxState, kind: _Kind) -> None:
    if opts.isolation is not None and opts.isolation is not state.isolation:
        current = state.isolation.value if state.isolation else "the database default"
        raise IllegalTransactionStateError(
            f"cannot join a transaction running at {current} with isolation "
            f"{opts.isolation.value}; use Propagation.REQUIRES_NEW for a different level"
        )
    if opts.read_only is False and state.read_only:
        raise IllegalTransactionStateError(
            "cannot open a read-write scope inside a read-only transaction"
        )
    if opts.timeout is not None:
        raise IllegalTransactionStateError(
            "timeout= applies to the transaction that starts it; this scope joins an active "
            "transaction (use Propagation.REQUIRES_NEW)"
        )
    if opts.synchronous_commit_off and kind == "join" and state.dialect == "postgresql":
        raise IllegalTransactionStateError(
            "batch (synchronous_commit=off) must start its own transaction"
        )


def _begin_sync(sync_session: Session, state: _TxState, opts: _Options) -> None:
    """Start the transaction and apply its characteristics (sync I/O)."""
    sync_session.info["repom_tx"] = state
    if not sync_session.in_transaction():
        sync_session.begin()
    # else: a session passed in by the caller, in a transaction SQLAlchemy began on its first
    # use ("autobegin"): this scope adopts that transaction and commits or rolls it back
    bind = sync_session.get_bind()
    dialect = bind.dialect.name
    state.dialect = dialect
    bound_to_connection = isinstance(bind, Connection)
    exec_opts: dict[str, Any] = {}
    if not bound_to_connection:
        if dialect == "sqlite":
            if opts.sqlite_begin or opts.isolation is IsolationLevel.SERIALIZABLE:
                exec_opts["sqlite_begin"] = opts.sqlite_begin or "immediate"
        elif opts.isolation is not None:
            exec_opts["isolation_level"] = opts.isolation.value
        if opts.read_only and dialect == "postgresql":
            exec_opts["postgresql_readonly"] = True
    needs_connection = bool(exec_opts) or bool(opts.read_only) or opts.timeout is not None
    needs_connection = needs_connection or opts.synchronous_commit_off
    if not needs_connection:
        return  # lazy: BEGIN goes out with the first statement, nothing extra is sent
    if state.replica is not None:
        try:
            conn = sync_session.connection(execution_options=exec_opts or None)
        except Exception as exc:
            raise _ReplicaUnusable("down", str(type(translate(exc)).__name__)) from exc
        _check_replica(conn, state)
    else:
        conn = sync_session.connection(execution_options=exec_opts or None)
    if opts.read_only:
        if dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA query_only=ON")
            state.query_only_conn = conn
            conn.info["repom_query_only"] = True  # the pool "reset" hook is the safety net
        elif dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif dialect == "postgresql" and bound_to_connection:
            conn.exec_driver_sql("SET LOCAL transaction_read_only = on")
    if opts.timeout is not None:
        if dialect != "postgresql":
            raise InvalidTransactionOption(
                f"timeout= is supported on PostgreSQL only (this database is {dialect})",
                option="timeout",
            )
        # rounded up to whole ms: a positive timeout never becomes 0 ("no timeout")
        ms = milliseconds(opts.timeout, name="timeout")
        _set_local(conn, state, "statement_timeout", str(ms), bound_to_connection)
    if opts.synchronous_commit_off and dialect == "postgresql":
        _set_local(conn, state, "synchronous_commit", "off", bound_to_connection)


_SET_LOCAL = text("SELECT set_config(:name, :value, true)")

# --------------------------------------------------------------------------- replicas

_REPLICA_STATE = text(
    "SELECT pg_is_in_recovery(), CAST(pg_last_wal_replay_lsn() AS text), "
    "CAST(pg_last_wal_receive_lsn() AS text)"
)
_REPLAY_LSN = text("SELECT CAST(pg_last_wal_replay_lsn() AS text)")
_REPLAY_POLL = 0.002  # seconds between two looks at a replica's replay position
_PRIMARY_LSN = text("SELECT CAST(pg_current_wal_lsn() AS text)")


class _ReplicaUnusable(Exception):
    """This read-only transaction cannot use its replica; the primary serves it instead."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def parse_lsn(value: str | None) -> int | None:
    """PostgreSQL's ``X/Y`` WAL position as an integer (None stays None)."""
    if not value:
        return None
    high, _, low = value.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _check_replica(conn: Connection, state: _TxState) -> None:
    """Is the replica fit for this transaction: up, still in recovery, replaying, and
    (read-your-writes) past this context's last commit?  One round trip.  Raises
    :class:`_ReplicaUnusable` otherwise.

    Lag is judged by progress, not by ``pg_last_xact_replay_timestamp()`` (after a quiet spell
    with no commits that timestamp makes a replica milliseconds behind look as old as the last
    commit): a replica that has received WAL it has not replayed, and whose replay position has
    not moved for ``replica_max_lag`` seconds, is lagging."""
    replica = state.replica
    database = state.database
    assert replica is not None and database is not None
    now = time.monotonic()
    config = database.config
    try:
        # every replica transaction checks its server first: a replica that went down between
        # two transactions is found here, before any statement of the caller's can fail
        in_recovery, replayed, received = conn.execute(_REPLICA_STATE).one()
    except Exception as exc:
        raise _ReplicaUnusable("down", type(translate(exc)).__name__) from exc
    if not in_recovery:
        raise _ReplicaUnusable("not_a_replica", "the server is not in recovery (promoted?)")
    position = parse_lsn(replayed) or 0
    pending = (parse_lsn(received) or 0) > position
    if not pending or position != replica.last_replay:
        replica.last_replay = position
        replica.stalled_since = now if pending else None
    replica.lag_checked_at = now
    replica.lag = now - replica.stalled_since if replica.stalled_since is not None else 0.0
    if replica.lag > config.replica_max_lag:
        raise _ReplicaUnusable("lagging", f"replay has not moved for {replica.lag:.1f}s")
    required = state.required_lsn
    if required is not None and position < required:
        raise _ReplicaUnusable(
            "behind", f"replayed {replayed}, this context committed {format_lsn(required)}"
        )


def _waits_for_replay(state: _TxState | None) -> bool:
    """Read-your-writes: does this replica transaction first wait for replay?"""
    return state is not None and state.replica is not None and state.required_lsn is not None


def _replay_reached(position: str | None, required: int) -> bool:
    return (parse_lsn(position) or 0) >= required


def _wait_for_replay(state: _TxState | None) -> bool:
    """Read-your-writes, before the read-only transaction starts: poll the replica's replay
    position on a connection of its own, outside any transaction (a read that waited inside
    its transaction would hold a snapshot, and the standby's replay can wait on that very
    snapshot).  True when the replica caught up within ``replica_wait``."""
    assert state is not None
    replica, database, required = state.replica, state.database, state.required_lsn
    assert replica is not None and database is not None and required is not None
    deadline = time.monotonic() + database.config.replica_wait
    try:
        with replica.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            while not _replay_reached(conn.execute(_REPLAY_LSN).scalar(), required):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(_REPLAY_POLL)
    except Exception:
        return True  # the transaction's own check finds out what is wrong with the replica
    return True


async def _await_replay(state: _TxState | None) -> bool:
    """:func:`_wait_for_replay` for async code (the event loop keeps running meanwhile)."""
    assert state is not None
    replica, database, required = state.replica, state.database, state.required_lsn
    assert replica is not None and database is not None and required is not None
    deadline = time.monotonic() + database.config.replica_wait
    try:
        async with replica.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            while not _replay_reached((await conn.execute(_REPLAY_LSN)).scalar(), required):
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(_REPLAY_POLL)
    except Exception:
        return True
    return True


def _wrote(sync_session: Session, state: _TxState) -> bool:
    """Could this transaction have written on a primary that has replicas?"""
    database = state.database
    if database is None or state.read_only or state.replica is not None:
        return False
    if database.bound_connection is not None or not database.replica_urls:
        return False
    transaction = sync_session.get_transaction()
    return (
        bool(getattr(transaction, "_connections", None))
        or bool(sync_session.new)
        or bool(sync_session.dirty or sync_session.deleted)
    )


def _record_commit_lsn(sync_session: Session, state: _TxState) -> None:
    """After a write transaction on a database with replicas: the primary's WAL position, which
    this context's later replica reads must have replayed (one round trip, autocommit)."""
    try:
        conn = sync_session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        state.commit_lsn = parse_lsn(conn.execute(_PRIMARY_LSN).scalar())
        sync_session.rollback()
    except Exception:  # the commit happened; without a position, reads go to the primary
        logger.debug("could not read the commit's WAL position", exc_info=True)
        state.commit_lsn = _UNKNOWN_LSN


#: "this context wrote, position unknown": later reads use the primary
_UNKNOWN_LSN = 1 << 62


@dataclass
class Causality:
    """What one context (a thread, a task and the tasks it starts, a client's requests over
    HTTP) has committed: per database name, the primary's WAL position after the commit.
    Read-only transactions use a replica only once it has replayed that position."""

    lsn: dict[str, int] = field(default_factory=dict)
    changed: bool = False

    def note(self, database: str, lsn: int) -> None:
        if lsn > self.lsn.get(database, 0):
            self.lsn[database] = lsn
            self.changed = True


_causality: ContextVar[Causality | None] = ContextVar("repom_causality", default=None)


def causality() -> Causality:
    """This context's :class:`Causality` (created on first use)."""
    holder = _causality.get()
    if holder is None:
        holder = Causality()
        _causality.set(holder)
    return holder


def use_causality(holder: Causality) -> Any:
    """Make *holder* this context's causality (a web request restoring its client's position);
    returns a token for ``_causality.reset``."""
    return _causality.set(holder)


def _required_lsn(database: Any) -> int | None:
    holder = _causality.get()
    if holder is None:
        return None
    return holder.lsn.get(database.name)


def _set_local(conn: Connection, state: _TxState, name: str, value: str, bound: bool) -> None:
    """``SET LOCAL name = value`` with bound parameters (PostgreSQL)."""
    if bound and name not in state.restore_settings:
        previous = conn.execute(text("SELECT current_setting(:name)"), {"name": name}).scalar()
        state.restore_settings[name] = str(previous)
    conn.execute(_SET_LOCAL, {"name": name, "value": value})


def _restore_settings(sync_session: Session, state: _TxState) -> None:
    if state.restore_settings:
        conn = sync_session.connection()
        for name, value in state.restore_settings.items():
            conn.execute(_SET_LOCAL, {"name": name, "value": value})
        state.restore_settings.clear()


def _reset_sqlite_query_only(state: _TxState) -> None:
    conn = state.query_only_conn
    if conn is not None:
        state.query_only_conn = None
        try:
            conn.exec_driver_sql("PRAGMA query_only=OFF")
            conn.info.pop("repom_query_only", None)
        except Exception:  # the connection is gone: the pool reset hook covers it
            logger.debug("could not reset PRAGMA query_only", exc_info=True)


def _enter_sync(sync_session: Session | None, scope: _Scope) -> None:
    """Everything that happens when a scope is entered, after the session exists."""
    state = scope.state
    if state is None:
        return
    if scope.kind == "begin":
        assert sync_session is not None
        _refuse_late_begin_options(sync_session, scope.options)
        try:
            _begin_sync(sync_session, state, scope.options)
        except BaseException:
            _rollback_and_close(sync_session, state, close=scope.owns_session)
            raise
    elif scope.kind == "savepoint":
        scope.savepoint = state.sync_session.begin_nested()
        state.levels.append(_Level())


def _refuse_late_begin_options(sync_session: Session, opts: _Options) -> None:
    """A session passed in that already ran a statement is in a transaction that began with the
    database's defaults: isolation, PostgreSQL read-only and SQLite's BEGIN IMMEDIATE can no
    longer be applied.  Refused before anything is touched (the caller's work stays as it is)."""
    transaction = sync_session.get_transaction()
    if transaction is None or not getattr(transaction, "_connections", None):
        return
    bind = sync_session.get_bind()
    if isinstance(bind, Connection):
        return  # bound (test) mode applies these with SET LOCAL
    dialect = bind.dialect.name
    late = opts.isolation is not None or opts.sqlite_begin is not None
    late = late or bool(opts.read_only and dialect == "postgresql")
    if late:
        raise IllegalTransactionStateError(
            "the session passed in already began a transaction with the database's defaults (it "
            "ran a statement); isolation and read-only are set at BEGIN: call this before using "
            "the session, or end its transaction (commit/rollback) first"
        )


def _rollback_savepoint(savepoint: SessionTransaction) -> None:
    """Roll back a savepoint unless it is already closed (a failed flush leaves it inactive but
    still in need of its ROLLBACK TO SAVEPOINT)."""
    if savepoint._state is not SessionTransactionState.CLOSED:
        savepoint.rollback()


def _release(sync_session: Session, state: _TxState, *, close: bool) -> None:
    """The scope that owned the transaction is done with it: the session leaves repom's care."""
    state.open = False
    state.levels = [_Level()]
    if sync_session.info.get("repom_tx") is state:
        del sync_session.info["repom_tx"]
    if close:
        sync_session.close()


def _rollback_and_close(sync_session: Session, state: _TxState, *, close: bool) -> None:
    try:
        _reset_sqlite_query_only(state)
        sync_session.rollback()
    finally:
        _release(sync_session, state, close=close)


def _exit_sync(
    sync_session: Session | None, scope: _Scope, error: BaseException | None
) -> list[Callback]:
    """Everything that happens when a scope is left.  Returns the callbacks to run now."""
    state = scope.state
    kind = scope.kind
    if kind == "none" or state is None:
        if scope.owns_session and sync_session is not None:
            sync_session.rollback()
            sync_session.close()
        return []
    opts = scope.options
    if kind == "join":
        if error is not None and opts.rollback_on_exception:
            state.levels[-1].rollback_only = True
        return []
    if kind == "savepoint":
        level = state.levels.pop()
        savepoint = scope.savepoint
        assert savepoint is not None
        keep = error is not None and not opts.rollback_on_exception and savepoint.is_active
        if (error is not None and not keep) or level.rollback_only:
            _rollback_savepoint(savepoint)
            if error is None:
                raise RollbackOnlyError(
                    "an inner scope failed inside this savepoint; it was rolled back"
                )
            return []
        try:
            savepoint.commit()
        except BaseException as exc:
            _rollback_savepoint(savepoint)
            raise translate(exc) from exc
        state.levels[-1].callbacks.extend(level.callbacks)
        return []
    # kind == "begin": this scope owns the transaction
    assert sync_session is not None
    level = state.levels[0]
    if not level.rollback_only and (
        (error is not None and not opts.rollback_on_exception)
        or (error is None and not opts.commit_on_success)
    ):
        # rollback_on_exception=False / commit_on_success=False: neither commit nor roll back.
        # A session the caller passed in stays in its transaction for the caller to finish; a
        # session this scope made has nobody to hand it to, so closing it rolls the work back.
        _reset_sqlite_query_only(state)
        if error is None and sync_session.is_active:
            sync_session.flush()
        _release(sync_session, state, close=scope.owns_session)
        return []
    if error is not None or level.rollback_only:
        _rollback_and_close(sync_session, state, close=scope.owns_session)
        if error is None:
            raise RollbackOnlyError(
                "the transaction was marked rollback-only because an inner scope failed; "
                "it was rolled back instead of committed"
            )
        return []
    committing = False
    try:
        _reset_sqlite_query_only(state)
        _restore_settings(sync_session, state)
        sync_session.flush()  # a failing flush is a definite failure, not an unknown commit
        committing = True
        wrote = _wrote(sync_session, state)
        sync_session.commit()
        if wrote:
            _record_commit_lsn(sync_session, state)
    except BaseException as exc:
        try:
            _rollback_and_close(sync_session, state, close=scope.owns_session)
        except Exception:
            logger.debug("rollback after failed commit failed", exc_info=True)
        new = translate(exc, during_commit=committing)
        if committing:
            (new if new is not exc else exc).__dict__["during_commit"] = True
        if new is not exc:
            raise new from exc
        raise
    callbacks = level.callbacks
    _release(sync_session, state, close=scope.owns_session)
    return callbacks


# --------------------------------------------------------------------------- entering and leaving
# One implementation of entering and leaving a scope, for the Transaction context manager, the
# seed's session generators and the web request dependencies: ``enter_*`` returns the scope,
# ``leave_*`` takes it back.  Async code goes through SQLAlchemy's greenlet bridge only when
# entering or leaving talks to the database, and shields leaving without a task of its own.


def _make_scope(opts: _Options, is_async: bool) -> tuple[_Scope, Session | None]:
    """A new scope for *opts*, with its session when it starts one; nothing entered yet."""
    if opts.retry is not None and opts.retry.max_retries > 0:
        # a retry needs the function to run again: only the decorator form can do that
        raise TransactionError(
            "retries= needs the decorator form (@transaction(retries=...) / "
            "@transactional(retries=...)); a with-block cannot be run again"
        )
    database: Database | AsyncDatabase | None = None
    if opts.session is None:
        database = _target_database(opts.database, is_async)
    elif is_session(opts.session) and hasattr(opts.session, "sync_session") != is_async:
        have = "an AsyncSession" if is_async is False else "a sync Session"
        raise TransactionError(
            f"got {have} for a {'sync' if not is_async else 'async'} transaction scope"
        )
    kind, existing = _decide(opts, is_async, database)
    scope = _Scope(options=opts, kind=kind)
    if kind == "join" or kind == "savepoint":
        assert existing is not None
        _check_join(opts, existing, kind)
        scope.state = existing
        return scope, existing.sync_session
    session: Any
    if opts.session is not None:
        # a session the caller passed in and that is in no repom transaction: this scope owns
        # its transaction for the call (begins it, or adopts the one SQLAlchemy autobegan)
        session = opts.session
    else:
        assert database is not None
        replica = None
        if kind == "begin" and opts.read_only and opts.replica is not False:
            replica = database.choose_replica()
        session = database.replica_session(replica) if replica is not None else database.session()
        scope.owns_session = True
    sync = _sync_of(session)
    if kind == "none":
        scope.none_session = session
        return scope, sync
    state = scope.state = _TxState(
        database=database,
        session=session,
        sync_session=sync,
        is_async=is_async,
        isolation=opts.isolation,
        read_only=bool(opts.read_only),
        owner=_owner_token(is_async),
        stands_for_default=opts.stands_for_default,
    )
    if scope.owns_session and opts.read_only:
        state.replica = sync.info.get("repom_replica")
        if state.replica is not None:
            state.required_lsn = _required_lsn(database)
    return scope, sync


def _on_primary(opts: _Options, scope: _Scope, unusable: _ReplicaUnusable) -> _Options:
    """The replica could not serve this transaction: note it; the options pinned to the primary."""
    state = scope.state
    assert state is not None and state.replica is not None and state.database is not None
    state.replica.skip(
        state.database.name,
        unusable.reason,
        mark_down=unusable.reason != "behind",
        detail=unusable.detail,
    )
    return replace(opts, replica=False)


def _push(scope: _Scope) -> None:
    _stack.set((*_active_scopes(), scope))


def _pop(scope: _Scope) -> None:
    scope.active = False
    scope.consumer = None
    stack = _stack.get()
    if len(stack) == 1 and stack[0] is scope:
        _stack.set(())
    else:
        _stack.set(_active_scopes())


def _note_commit(scope: _Scope) -> None:
    state = scope.state
    if state is not None and state.commit_lsn is not None and state.database is not None:
        causality().note(state.database.name, state.commit_lsn)


def _enter_needs_io(scope: _Scope) -> bool:
    """Does entering *scope* talk to the database?  A new transaction on a session of its own
    with no characteristics to apply (isolation, read-only, timeout, ...) only marks the session:
    SQLAlchemy sends BEGIN with the first statement."""
    if scope.kind == "savepoint":
        return True
    if scope.kind != "begin":
        return False
    if not scope.owns_session:
        return True  # a session passed in may hold a connection already
    opts = scope.options
    return bool(
        opts.read_only
        or opts.isolation is not None
        or opts.timeout is not None
        or opts.synchronous_commit_off
        or opts.sqlite_begin
    )


def _exit_needs_io(scope: _Scope) -> bool:
    """Does leaving *scope* talk to the database?  Not when its transaction never took a
    connection and its session holds nothing to flush: then commit, rollback and close are
    bookkeeping only (a request that never touched the database ends without I/O)."""
    kind = scope.kind
    if kind == "join":
        return False
    if kind == "savepoint":
        return True
    sync = scope.sync_session
    if sync is None:
        return False
    if kind == "none" and not scope.owns_session:
        return False
    transaction = sync.get_transaction()
    if transaction is not None and getattr(transaction, "_connections", True):
        return True
    if sync.dispatch.before_commit:
        return True  # a listener may run statements while the transaction commits
    return not sync._is_clean()


def enter_sync(opts: _Options) -> _Scope:
    """Enter a sync scope (what ``with transaction(...)`` does); the scope is on the stack."""
    scope, sync = _make_scope(opts, False)
    try:
        if _waits_for_replay(scope.state) and not _wait_for_replay(scope.state):
            raise _ReplicaUnusable("behind", "replay did not catch up in time")
        _enter_sync(sync, scope)
    except _ReplicaUnusable as unusable:
        if sync is not None:
            sync.close()
        return enter_sync(_on_primary(opts, scope, unusable))
    except Exception as exc:
        _raise_translated(exc)
        raise
    _push(scope)
    return scope


def leave_sync(scope: _Scope, error: BaseException | None) -> None:
    """Leave a scope entered with :func:`enter_sync` (*error*: what ended it, or None)."""
    try:
        callbacks = _exit_sync(scope.sync_session, scope, error)
    finally:
        _pop(scope)
    _note_commit(scope)
    _raise_translated(error)
    if callbacks:
        _run_callbacks_sync(callbacks)


async def enter_async(opts: _Options) -> _Scope:
    """Enter an async scope (what ``async with transaction(...)`` does).  Through SQLAlchemy's
    greenlet bridge only when entering talks to the database."""
    scope, sync = _make_scope(opts, True)
    if scope.kind == "begin" or scope.kind == "savepoint":
        state = scope.state
        assert state is not None
        async_session = cast("AsyncSession", state.session)
        try:
            if _waits_for_replay(state) and not await _await_replay(state):
                raise _ReplicaUnusable("behind", "replay did not catch up in time")
            if _enter_needs_io(scope):
                await async_session.run_sync(_enter_sync, scope)
            else:
                _enter_sync(sync, scope)
        except _ReplicaUnusable as unusable:
            await shielded(async_session.close())
            return await enter_async(_on_primary(opts, scope, unusable))
        except BaseException as exc:
            if scope.owns_session and scope.kind == "begin":
                await shielded(async_session.close())
            _raise_translated(exc)
            raise
    _push(scope)
    return scope


async def leave_async(scope: _Scope, error: BaseException | None) -> None:
    """Leave a scope entered with :func:`enter_async`.  Commit, rollback and close run to the
    end even when the task is cancelled meanwhile (the cancellation is raised afterwards)."""
    try:
        if _exit_needs_io(scope):
            async_session = cast("AsyncSession", scope.session)
            callbacks = await shielded(async_session.run_sync(_exit_sync, scope, error))
        else:
            callbacks = _exit_sync(scope.sync_session, scope, error)
    finally:
        _pop(scope)
    _note_commit(scope)
    _raise_translated(error)
    if callbacks:
        await _run_callbacks_async(callbacks)


# --------------------------------------------------------------------------- Transaction


def _target_database(
    db: Database | AsyncDatabase | None, is_async: bool
) -> Database | AsyncDatabase:
    """The database a scope runs on: the one given, else the module default of the flavour."""
    if db is None:
        return get_async_database() if is_async else get_database()
    if db.is_async != is_async:
        kind = "async with" if is_async else "with"
        raise TransactionError(
            f"{db!r} is {'an async' if db.is_async else 'a sync'} database; "
            f"it cannot be used with '{kind}'"
        )
    return db


class Transaction:
    """What :func:`transaction` returns: a context manager and a decorator, sync and async."""

    def __init__(self, options: _Options) -> None:
        self._options = options

    def _entered(self) -> list[_Scope]:
        scopes: list[_Scope] | None = self.__dict__.get("_scopes")
        if scopes is None:
            scopes = self.__dict__["_scopes"] = []
        return scopes

    def _take_entered(self) -> _Scope:
        """The scope this exit belongs to: the newest one of this object that is on the current
        context's stack (so one object may be entered in several threads/tasks at once), or, when
        the exit runs in another context (an abandoned generator closed by the event loop), the
        newest one entered."""
        scopes = self._entered()
        if len(scopes) == 1:
            return scopes.pop()
        on_stack = _stack.get()
        for index in range(len(scopes) - 1, -1, -1):
            if any(scopes[index] is s for s in on_stack):
                return scopes.pop(index)
        return scopes.pop()

    # -- sync --------------------------------------------------------------------------

    def __enter__(self) -> Session:
        scope = enter_sync(self._options)
        self._entered().append(scope)
        return cast(Session, scope.session)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        leave_sync(self._take_entered(), exc)

    # -- async -------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncSession:
        scope = await enter_async(self._options)
        self._entered().append(scope)
        return cast("AsyncSession", scope.session)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await leave_async(self._take_entered(), exc)

    # -- decorator ---------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        params = inspect.signature(func).parameters
        wants_session = "session" in params
        # where a positional argument lands on the "session" parameter, if it can
        session_index: int | None = None
        if wants_session and params["session"].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            session_index = list(params).index("session")
        policy = self._options.retry
        options = self._options
        if policy is not None:
            options = replace(options, retry=None)
        is_async = inspect.iscoroutinefunction(func)

        def prepare(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[_Options, bool]:
            """The options of this call (the caller's session, when one was passed) and
            whether the scope's session must be injected as ``session=``."""
            passed = "session" in kwargs or (
                session_index is not None and len(args) > session_index
            )
            call_options = options
            if options.session is None:
                found = _session_argument(args, kwargs)
                if found is not None:
                    call_options = replace(options, session=found)
            return call_options, wants_session and not passed

        if is_async:

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                call_options, inject = prepare(args, kwargs)

                async def attempt() -> Any:
                    async with Transaction(call_options) as session:
                        call_kwargs = {**kwargs, "session": session} if inject else kwargs
                        return await func(*args, **call_kwargs)

                if policy is None or policy.max_retries <= 0:
                    return await attempt()
                _refuse_joined_retry(call_options, True)
                return await run_async_with_retry(attempt, policy)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            call_options, inject = prepare(args, kwargs)

            def attempt() -> Any:
                with Transaction(call_options) as session:
                    call_kwargs = {**kwargs, "session": session} if inject else kwargs
                    return func(*args, **call_kwargs)

            if policy is None or policy.max_retries <= 0:
                return attempt()
            _refuse_joined_retry(call_options, False)
            return run_with_retry(attempt, policy)

        return cast(F, sync_wrapper)


def _session_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The first ``Session``/``AsyncSession`` among a call's arguments (any position, any
    parameter name), or None."""
    for value in args:
        if is_session(value):
            return value
    for value in kwargs.values():
        if is_session(value):
            return value
    return None


def _raise_translated(error: BaseException | None) -> None:
    """Errors leaving a scope reach the caller as repom's typed errors (pool timeout ->
    PoolExhausted, StaleDataError -> ConflictError); others propagate unchanged."""
    if error is None:
        return
    new = translate(error)
    if new is not error:
        raise new from error


class _Shielded(Generic[T]):
    """``await shielded(coro)``: run *coro* to the end in the current task even when the task is
    cancelled meanwhile; the cancellation is raised once *coro* finished.

    No task of its own (``asyncio.shield`` would start one per call) and no extra turn of the
    event loop: while *coro* waits on a future, the task waits on a :class:`_StandIn` for it,
    which wakes the task when the future completes but refuses ``cancel()``.  ``Task.cancel()``
    then only marks the task; the database operation *coro* waits for is never cancelled, and
    the task raises ``CancelledError`` into this shield when it wakes up."""

    __slots__ = ("_coro",)

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, None, T]:
        coro = self._coro
        cancelled: BaseException | None = None
        error: BaseException | None = None
        while True:
            try:
                if error is not None:
                    waited = coro.throw(error)
                    error = None
                else:
                    waited = coro.send(None)
            except StopIteration as done:
                result: T = done.value
                break
            except BaseException as failure:
                if cancelled is not None:
                    raise cancelled from failure  # the cancellation wins, as with a task
                raise
            if getattr(waited, "_asyncio_future_blocking", None) is None:
                # a bare yield (asyncio.sleep(0)) or something the task itself must judge
                try:
                    yield waited
                except asyncio.CancelledError as exc:
                    cancelled = cancelled or exc
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:
                    error = exc
                continue
            waited._asyncio_future_blocking = False
            stand_in = _StandIn(waited)
            while not waited.done():
                try:
                    yield stand_in
                except asyncio.CancelledError as exc:
                    if not waited.cancelled():  # else: the future's own outcome, for *coro*
                        cancelled = cancelled or exc
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:
                    # the future's failure, which *coro* reads from the future itself; anything
                    # else thrown in meanwhile goes on to *coro*
                    if not waited.done():
                        error = exc
                        break
                stand_in._asyncio_future_blocking = True
        if cancelled is not None:
            raise cancelled
        return result


class _StandIn:
    """What a task waits on while :class:`_Shielded` code waits on *future*: it completes with
    the future (the task's wake-up callback goes on the future itself), but ``cancel()``
    refuses, so a cancelled task waits for the future and raises afterwards."""

    __slots__ = ("_asyncio_future_blocking", "_future")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self._future = future
        self._asyncio_future_blocking = True

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._future.get_loop()

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None:
        self._future.add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        return self._future.remove_done_callback(fn)

    def cancel(self, msg: Any = None) -> bool:
        return False  # the task stays marked as cancelled and is woken by the future

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        return self._future.result()

    def __repr__(self) -> str:
        return f"<shielded wait for {self._future!r}>"


def shielded(coro: Coroutine[Any, Any, T]) -> _Shielded[T]:
    """Run cleanup to completion even if the surrounding task is cancelled meanwhile (the
    cancellation is raised afterwards); see :class:`_Shielded`."""
    return _Shielded(coro)


def _refuse_joined_retry(options: _Options, is_async: bool) -> None:
    if options.propagation is Propagation.REQUIRES_NEW:
        return
    if options.session is not None:
        joined = _live_state(options.session) is not None
    else:
        existing = _find_active(
            is_async, _target_database(options.database, is_async), options.database is None
        )
        joined = existing is not None and existing.kind != "none"
    if joined:
        raise IllegalTransactionStateError(
            "retries= cannot be used on a scope that joins a transaction it did not open: "
            "only the outermost transaction can be retried (or use Propagation.REQUIRES_NEW)"
        )


# --------------------------------------------------------------------------- public factory


# PostgreSQL's statement_timeout is a 32-bit count of milliseconds
_MAX_TIMEOUT = (2**31 - 1) / 1000


def _build_options(
    propagation: Propagation | str,
    isolation: IsolationLevel | str | None,
    read_only: bool | None,
    timeout: float | None,
    retries: int | RetryPolicy | None,
    database: Database | AsyncDatabase | None,
    session: Session | AsyncSession | None,
    idempotent: bool,
    synchronous_commit_off: bool = False,
    rollback_on_exception: bool = True,
    commit_on_success: bool = True,
    stands_for_default: bool = False,
    replica: bool | None = None,
) -> _Options:
    if isinstance(propagation, str):
        try:
            propagation = Propagation(propagation.lower())
        except ValueError:
            allowed = ", ".join(p.name for p in Propagation)
            raise InvalidTransactionOption(
                f"invalid propagation {propagation!r}; allowed: {allowed}", option="propagation"
            ) from None
    elif not isinstance(propagation, Propagation):
        raise InvalidTransactionOption(f"invalid propagation {propagation!r}", option="propagation")
    level = IsolationLevel.parse(isolation)
    if read_only is not None and not isinstance(read_only, bool):
        raise InvalidTransactionOption(
            f"read_only must be True, False or None, got {read_only!r}", option="read_only"
        )
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or not 0 < timeout <= _MAX_TIMEOUT
    ):
        # nan/inf would fail the ms conversion untyped; 0 or less would mean "no timeout"
        raise InvalidTransactionOption(
            f"timeout must be a finite number of seconds, more than 0 and at most "
            f"{_MAX_TIMEOUT}, got {timeout!r}",
            option="timeout",
        )
    for name, flag in (
        ("rollback_on_exception", rollback_on_exception),
        ("commit_on_success", commit_on_success),
        ("idempotent", idempotent),
    ):
        if not isinstance(flag, bool):
            raise InvalidTransactionOption(
                f"{name} must be True or False, got {flag!r}", option=name
            )
    if replica is not None and not isinstance(replica, bool):
        raise InvalidTransactionOption(
            f"replica must be True, False or None, got {replica!r}", option="replica"
        )
    if replica is True and read_only is not True:
        raise InvalidTransactionOption(
            "replica=True needs read_only=True: a replica cannot take writes", option="replica"
        )
    if session is not None and not is_session(session):
        raise InvalidTransactionOption(
            f"session must be a SQLAlchemy Session or AsyncSession, got {type(session).__name__}",
            option="session",
        )
    policy = None
    if retries is not None:
        if isinstance(retries, RetryPolicy):
            policy = replace(retries, idempotent=True) if idempotent else retries
        elif isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0:
            policy = RetryPolicy(max_retries=retries, idempotent=idempotent)
        else:
            raise InvalidTransactionOption(
                f"retries must be a non-negative int or a RetryPolicy, got {retries!r}",
                option="retries",
            )
    return _Options(
        propagation=propagation,
        isolation=level,
        read_only=read_only,
        timeout=float(timeout) if timeout is not None else None,
        database=database,
        session=session,
        retry=policy,
        synchronous_commit_off=synchronous_commit_off,
        rollback_on_exception=rollback_on_exception,
        commit_on_success=commit_on_success,
        stands_for_default=stands_for_default,
        replica=replica,
    )


def transaction(
    *,
    propagation: Propagation | str = Propagation.REQUIRED,
    isolation: IsolationLevel | str | None = None,
    read_only: bool | None = None,
    timeout: float | None = None,
    retries: int | RetryPolicy | None = None,
    idempotent: bool = False,
    database: Database | AsyncDatabase | None = None,
    session: Session | AsyncSession | None = None,
    synchronous_commit_off: bool = False,
    rollback_on_exception: bool = True,
    commit_on_success: bool = True,
    replica: bool | None = None,
) -> Transaction:
    """A transaction scope: ``with transaction() as session``, ``async with transaction() as
    session``, or ``@transaction(...)`` on a sync or async function.

    * ``propagation`` -- see :class:`Propagation` (default ``REQUIRED``).
    * ``isolation`` -- an :class:`IsolationLevel` (or exactly its name), applied at BEGIN.
    * ``read_only`` -- PostgreSQL ``BEGIN READ ONLY``, SQLite ``PRAGMA query_only``, MySQL
      ``SET TRANSACTION READ ONLY``; a write raises :class:`~repom.exceptions.ReadOnlyViolation`.
    * ``timeout`` -- seconds; PostgreSQL ``SET LOCAL statement_timeout``.
    * ``retries`` -- decorator form only: run the whole function again on serialization
      failures, deadlocks and connection loss before COMMIT (see :mod:`repom.retry`).
    * ``idempotent`` -- also retry when COMMIT itself failed with an unknown outcome.
    * ``database`` -- which :class:`~repom.database.Database`/``AsyncDatabase`` (default: the
      module default of the flavour in use).  ``REQUIRED`` joins only a transaction on that
      database.
    * ``session`` -- run in this session's transaction: join it when it is in a repom scope,
      else own it for the scope (begin it, or adopt the one SQLAlchemy autobegan; commit on
      success, roll back on an exception).
    * ``rollback_on_exception=False`` -- on an exception, neither roll back nor mark the outer
      transaction rollback-only: a session passed in stays in its transaction for the caller.
    * ``commit_on_success=False`` -- flush but do not commit: a session passed in stays in its
      transaction for the caller (a session the scope made itself is rolled back when closed).
    * ``replica`` -- with ``read_only=True``, a transaction that starts on a database with read
      replicas runs on one of them (the whole transaction: one snapshot), once it has replayed
      what this context committed; ``replica=False`` pins it to the primary.
    """
    return Transaction(
        _build_options(
            propagation,
            isolation,
            read_only,
            timeout,
            retries,
            database,
            session,
            idempotent,
            synchronous_commit_off,
            rollback_on_exception,
            commit_on_success,
            replica=replica,
        )
    )


@overload
def transactional(func: F, /) -> F: ...


@overload
def transactional(
    *,
    propagation: Propagation | str = ...,
    isolation: IsolationLevel | str | None = ...,
    read_only: bool | None = ...,
    timeout: float | None = ...,
    retries: int | RetryPolicy | None = ...,
    idempotent: bool = ...,
    database: Database | AsyncDatabase | None = ...,
    rollback_on_exception: bool = ...,
    commit_on_success: bool = ...,
    replica: bool | None = ...,
) -> Callable[[F], F]: ...


def transactional(
    func: F | None = None,
    /,
    *,
    propagation: Propagation | str = Propagation.REQUIRED,
    isolation: IsolationLevel | str | None = None,
    read_only: bool | None = None,
    timeout: float | None = None,
    retries: int | RetryPolicy | None = None,
    idempotent: bool = False,
    database: Database | AsyncDatabase | None = None,
    rollback_on_exception: bool = True,
    commit_on_success: bool = True,
    replica: bool | None = None,
) -> Any:
    """Decorator form of :func:`transaction` (``@transactional`` or ``@transactional(...)``).

    When the caller passes a ``Session``/``AsyncSession`` (any argument, any parameter name),
    the function runs in *that session's* transaction (see ``session=`` of :func:`transaction`).
    If the function declares a ``session`` parameter that the caller did not pass (by keyword
    or position), the scope's session is injected.
    """
    tx = transaction(
        propagation=propagation,
        isolation=isolation,
        read_only=read_only,
        timeout=timeout,
        retries=retries,
        idempotent=idempotent,
        database=database,
        rollback_on_exception=rollback_on_exception,
        commit_on_success=commit_on_success,
        replica=replica,
    )
    if func is not None:
        return tx(func)
    return tx


class PreparedOptions:
    """Transaction options validated once -- by a request dependency or a session generator
    when it is created -- and bound to a database per use (the application's database, known
    per request).  Binding to the same database again costs a comparison."""

    __slots__ = ("_base", "_last")

    def __init__(self, options: _Options) -> None:
        self._base = options
        self._last: tuple[Database | AsyncDatabase, _Options] | None = None

    def on(self, database: Database | AsyncDatabase | None) -> _Options:
        """These options on *database* (None: the one they were prepared with, if any, else
        the module default of the flavour in use)."""
        base = self._base
        if database is None or database is base.database:
            return base
        last = self._last
        if last is not None and last[0] is database:
            return last[1]
        options = replace(base, database=database)
        self._last = (database, options)
        return options


def prepare_options(
    propagation: Propagation | str = Propagation.REQUIRED,
    *,
    database: Database | AsyncDatabase | None = None,
    read_only: bool | None = None,
    isolation: IsolationLevel | str | None = None,
    stands_for_default: bool = False,
) -> PreparedOptions:
    """Validate transaction options once (bad ones raise here, typed) for scopes entered later
    with :func:`enter_sync` / :func:`enter_async`."""
    return PreparedOptions(
        _build_options(
            propagation,
            isolation,
            read_only,
            None,
            None,
            database,
            None,
            False,
            stands_for_default=stands_for_default,
        )
    )


def request_options(
    database: Database | AsyncDatabase | None = None,
    *,
    read_only: bool | None = None,
    isolation: IsolationLevel | str | None = None,
) -> PreparedOptions:
    """The transaction of a web request (used by :mod:`repom.fastapi`): always a new one.  With
    no *database* it runs on the application's database, given per request, and services that
    default to the module default database join it too, so an application whose database is
    attached to it needs no ``database=`` on its services."""
    return prepare_options(
        Propagation.REQUIRES_NEW,
        database=database,
        read_only=read_only,
        isolation=isolation,
        stands_for_default=database is None,
    )


register_transaction_probe(in_transaction)
