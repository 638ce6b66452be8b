"""The transaction API: one implementation of the bookkeeping for sync and async code.

A :class:`Transaction` (what :func:`transaction` returns) is a context manager (``with`` for sync
code, ``async with`` for async code) and a decorator for sync and async functions.  Each entry
creates a :class:`_Scope`; every decision (propagation, validation, rollback-only marking, savepoint
levels, ``on_commit`` bookkeeping) is made by sync code operating on a sync ``Session``.  For an
``AsyncSession`` the very same functions run through ``AsyncSession.run_sync`` (SQLAlchemy's
greenlet bridge), so the async flavour differs only in how the I/O call is made.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.session import SessionTransactionState

from repom.exceptions import (
    IllegalTransactionStateError,
    RollbackOnlyError,
    TransactionError,
    TransactionRequiredError,
    translate,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from repom.database import AsyncDatabase, Database
    from repom.retry import RetryPolicy

__all__ = [
    "IsolationLevel",
    "Propagation",
    "Transaction",
    "current_session",
    "in_transaction",
    "on_commit",
    "transaction",
    "transactional",
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


class InvalidTransactionOption(TransactionError, ValueError):
    """An option of ``transaction()`` has a value that is not allowed."""

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


# --------------------------------------------------------------------------- state

Callback = Callable[[], Any]


@dataclass
class _Level:
    """One savepoint level of a transaction (level 0 is the transaction itself)."""

    callbacks: list[Callback] = field(default_factory=list)
    rollback_only: bool = False


@dataclass
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


@dataclass
class _Scope:
    options: _Options
    kind: _Kind = "none"
    state: _TxState | None = None
    savepoint: SessionTransaction | None = None
    owns_session: bool = False
    active: bool = True
    none_session: Any = None  # the session of a scope that runs without a transaction

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


def _active_scopes() -> tuple[_Scope, ...]:
    return tuple(s for s in _stack.get() if s.active)


def _find_active(is_async: bool, database: object | None) -> _Scope | None:
    """The innermost active scope of this flavour (and database, when given)."""
    for scope in reversed(_stack.get()):
        if not scope.active or scope.state is None:
            continue
        if scope.state.is_async != is_async:
            continue
        if database is not None and scope.state.database is not database:
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


def current_session() -> Any:
    """The session of the innermost active transaction in this thread/task.

    Returns a ``Session`` in sync code and an ``AsyncSession`` in async code.  Raises
    :class:`TransactionRequiredError` when no transaction is active.
    """
    for scope in reversed(_stack.get()):
        if scope.active and scope.state is not None:
            return scope.state.session
    raise TransactionRequiredError("no active repom transaction in this context")


def in_transaction() -> bool:
    """True when a repom transaction is active in this thread/task."""
    return any(s.active and s.kind != "none" for s in _stack.get())


def on_commit(callback: Callback, *, session: Session | AsyncSession | None = None) -> None:
    """Run *callback* after the outermost transaction commits (Django's ``on_commit``).

    Callbacks run in registration order, after COMMIT succeeded, never on savepoint release.
    A callback registered inside a savepoint (``NESTED``) that rolls back is dropped, and so are
    all callbacks when the transaction rolls back.  In async code a callback may be a coroutine
    function; it is awaited.  Outside any transaction the callback runs immediately.
    """
    state = _state_for(session)
    if state is None:
        if _commit_sinks:
            _commit_sinks[-1].append(callback)
            return
        result = callback()
        if inspect.isawaitable(result):
            raise TransactionError(
                "on_commit() outside a transaction got an async callback; await it yourself"
            )
        return
    if not state.is_async and inspect.iscoroutinefunction(callback):
        raise TransactionError("on_commit(): async callback registered in a sync transaction")
    state.levels[-1].callbacks.append(callback)


def _state_for(session: Session | AsyncSession | None) -> _TxState | None:
    if session is not None:
        sync = cast("Session", getattr(session, "sync_session", session))
        state = sync.info.get("repom_tx")
        if isinstance(state, _TxState):
            return state
        return None
    for scope in reversed(_stack.get()):
        if scope.active and scope.state is not None and scope.kind != "none":
            return scope.state
    return None


# --------------------------------------------------------------------------- the sync core
# Every function below runs synchronously against a sync Session: directly for sync code, inside
# AsyncSession.run_sync() (a greenlet) for async code.


def _decide(opts: _Options, is_async: bool) -> tuple[_Kind, _Scope | None]:
    existing = _find_active(is_async, opts.database)
    if opts.session is not None:
        sync = cast("Session", getattr(opts.session, "sync_session", opts.session))
        state = sync.info.get("repom_tx")
        if isinstance(state, _TxState):
            for scope in reversed(_stack.get()):
                if scope.active and scope.state is state:
                    existing = scope
                    break
        else:
            existing = None
    if existing is not None and existing.kind == "none":
        existing = None
    if existing is not None and existing.state is not None:
        if existing.state.owner != _owner_token(is_async):
            raise IllegalTransactionStateError(
                "the active transaction belongs to another "
                + ("task" if is_async else "thread")
                + "; a session cannot be shared across them (use Propagation.REQUIRES_NEW)"
            )
    prop = opts.propagation
    if prop is Propagation.REQUIRES_NEW:
        return "begin", existing
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
    sync_session.begin()
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
        _set_local(
            conn, state, "statement_timeout", str(int(opts.timeout * 1000)), bound_to_connection
        )
    if opts.synchronous_commit_off and dialect == "postgresql":
        _set_local(conn, state, "synchronous_commit", "off", bound_to_connection)


_SET_LOCAL = text("SELECT set_config(:name, :value, true)")


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
        try:
            _begin_sync(sync_session, state, scope.options)
        except BaseException:
            _rollback_and_close(sync_session, state, close=scope.owns_session)
            raise
    elif scope.kind == "savepoint":
        scope.savepoint = state.sync_session.begin_nested()
        state.levels.append(_Level())


def _rollback_savepoint(savepoint: SessionTransaction) -> None:
    """Roll back a savepoint unless it is already closed (a failed flush leaves it inactive but
    still in need of its ROLLBACK TO SAVEPOINT)."""
    if savepoint._state is not SessionTransactionState.CLOSED:
        savepoint.rollback()


def _rollback_and_close(sync_session: Session, state: _TxState, *, close: bool) -> None:
    try:
        _reset_sqlite_query_only(state)
        sync_session.rollback()
    finally:
        state.levels = [_Level()]
        if close:
            sync_session.info.pop("repom_tx", None)
            sync_session.close()


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
    if kind == "join":
        if error is not None:
            state.levels[-1].rollback_only = True
        return []
    if kind == "savepoint":
        level = state.levels.pop()
        savepoint = scope.savepoint
        assert savepoint is not None
        if error is not None or level.rollback_only:
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
    if error is not None or level.rollback_only:
        _rollback_and_close(sync_session, state, close=scope.owns_session)
        if error is None:
            raise RollbackOnlyError(
                "the transaction was marked rollback-only because an inner scope failed; "
                "it was rolled back instead of committed"
            )
        return []
    try:
        _reset_sqlite_query_only(state)
        _restore_settings(sync_session, state)
        sync_session.commit()
    except BaseException as exc:
        try:
            _rollback_and_close(sync_session, state, close=scope.owns_session)
        except Exception:
            logger.debug("rollback after failed commit failed", exc_info=True)
        new = translate(exc)
        if new is not exc:
            new.__dict__["during_commit"] = True
            raise new from exc
        exc.__dict__["during_commit"] = True
        raise
    callbacks = level.callbacks
    state.levels = [_Level()]
    if scope.owns_session:
        sync_session.info.pop("repom_tx", None)
        sync_session.close()
    return callbacks


# --------------------------------------------------------------------------- Transaction


class Transaction:
    """What :func:`transaction` returns: a context manager and a decorator, sync and async."""

    def __init__(self, options: _Options) -> None:
        self._options = options

    # -- scope creation ----------------------------------------------------------------

    def _resolve_database(self, is_async: bool) -> Database | AsyncDatabase:
        db = self._options.database
        if db is None:
            if is_async:
                from repom.database import get_async_database

                return get_async_database()
            from repom.database import get_database

            return get_database()
        if db.is_async != is_async:
            kind = "async with" if is_async else "with"
            raise TransactionError(
                f"{db!r} is {'an async' if db.is_async else 'a sync'} database; "
                f"it cannot be used with '{kind}'"
            )
        return db

    def _new_scope(self, is_async: bool) -> tuple[_Scope, Session | None]:
        opts = self._options
        if opts.retry is not None and opts.retry.max_retries > 0:
            # a retry needs the function to run again: only the decorator form can do that
            raise TransactionError(
                "retries= needs the decorator form (@transaction(retries=...) / "
                "@transactional(retries=...)); a with-block cannot be run again"
            )
        kind, existing = _decide(opts, is_async)
        scope = _Scope(options=opts, kind=kind)
        if kind in ("join", "savepoint"):
            assert existing is not None and existing.state is not None
            _check_join(opts, existing.state, kind)
            scope.state = existing.state
            return scope, existing.state.sync_session
        if opts.session is not None and kind != "none":
            # a session repom did not open: use its transaction if it has one
            session = opts.session
            database = None
            scope.owns_session = False
            sync = cast("Session", getattr(session, "sync_session", session))
            if sync.in_transaction():
                scope.kind = "savepoint" if opts.propagation is Propagation.NESTED else "join"
            else:
                scope.kind = "begin"
        else:
            database = self._resolve_database(is_async)
            session = database.session()
            scope.owns_session = True
        sync = cast("Session", getattr(session, "sync_session", session))
        if kind == "none":
            scope.none_session = session
            return scope, sync
        scope.state = _TxState(
            database=database,
            session=session,
            sync_session=sync,
            is_async=is_async,
            isolation=opts.isolation,
            read_only=bool(opts.read_only),
            owner=_owner_token(is_async),
        )
        return scope, sync

    @staticmethod
    def _push(scope: _Scope) -> None:
        _stack.set((*_active_scopes(), scope))

    @staticmethod
    def _pop(scope: _Scope) -> None:
        scope.active = False
        _stack.set(_active_scopes())

    # -- sync --------------------------------------------------------------------------

    def __enter__(self) -> Session:
        scope, sync = self._new_scope(False)
        _enter_sync(sync, scope)
        self._push(scope)
        self._entered().append(scope)
        return cast(Session, scope.session)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        scope = self._take_entered()
        try:
            callbacks = _exit_sync(scope.sync_session, scope, exc)
        finally:
            self._pop(scope)
        _raise_translated(exc)
        for callback in _due(callbacks):
            result = callback()
            if inspect.isawaitable(result):  # pragma: no cover - guarded in on_commit
                raise TransactionError("async on_commit callback in a sync transaction")

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
        on_stack = _stack.get()
        for index in range(len(scopes) - 1, -1, -1):
            if any(scopes[index] is s for s in on_stack):
                return scopes.pop(index)
        return scopes.pop()

    # -- async -------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncSession:
        scope, _sync = self._new_scope(True)
        if scope.kind in ("begin", "savepoint"):
            assert scope.state is not None
            async_session = cast("AsyncSession", scope.state.session)
            try:
                await async_session.run_sync(_enter_sync, scope)
            except BaseException:
                if scope.owns_session and scope.kind == "begin":
                    await _shielded(async_session.close())
                raise
        self._push(scope)
        self._entered().append(scope)
        return cast("AsyncSession", scope.session)

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        scope = self._take_entered()
        try:
            callbacks = await _shielded(_aexit_scope(scope, exc))
        finally:
            self._pop(scope)
        _raise_translated(exc)
        for callback in _due(callbacks):
            result = callback()
            if inspect.isawaitable(result):
                await result

    # -- decorator ---------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        wants_session = "session" in inspect.signature(func).parameters
        policy = self._options.retry
        options = self._options
        if policy is not None:
            options = replace(options, retry=None)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async def attempt() -> Any:
                    async with Transaction(options) as session:
                        call_kwargs = kwargs
                        if wants_session and "session" not in kwargs:
                            call_kwargs = {**kwargs, "session": session}
                        return await func(*args, **call_kwargs)

                if policy is None or policy.max_retries <= 0:
                    return await attempt()
                _refuse_joined_retry(options, True)
                from repom.retry import run_async_with_retry

                return await run_async_with_retry(attempt, policy)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            def attempt() -> Any:
                with Transaction(options) as session:
                    call_kwargs = kwargs
                    if wants_session and "session" not in kwargs:
                        call_kwargs = {**kwargs, "session": session}
                    return func(*args, **call_kwargs)

            if policy is None or policy.max_retries <= 0:
                return attempt()
            _refuse_joined_retry(options, False)
            from repom.retry import run_with_retry

            return run_with_retry(attempt, policy)

        return cast(F, sync_wrapper)


def _raise_translated(error: BaseException | None) -> None:
    """Errors leaving a scope reach the caller as repom's typed errors (pool timeout ->
    PoolExhausted, StaleDataError -> ConflictError); others propagate unchanged."""
    if error is None:
        return
    new = translate(error)
    if new is not error:
        raise new from error


async def _aexit_scope(scope: _Scope, error: BaseException | None) -> list[Callback]:
    """:func:`_exit_sync` for an async scope: through the greenlet bridge when there is I/O."""
    if scope.kind == "join" or scope.session is None:
        return _exit_sync(None, scope, error)
    async_session = cast("AsyncSession", scope.session)
    return await async_session.run_sync(_exit_sync, scope, error)


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Run cleanup to completion even if the surrounding task is cancelled meanwhile."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # the cleanup goes on in its own task; wait for it so no connection is left checked
        # out, then let the cancellation continue
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
            except BaseException:
                break
        raise


def _refuse_joined_retry(options: _Options, is_async: bool) -> None:
    if options.propagation is Propagation.REQUIRES_NEW:
        return
    existing = _find_active(is_async, options.database)
    if existing is not None and existing.kind != "none":
        raise IllegalTransactionStateError(
            "retries= cannot be used on a scope that joins a transaction it did not open: "
            "only the outermost transaction can be retried (or use Propagation.REQUIRES_NEW)"
        )


# --------------------------------------------------------------------------- public factory


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
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidTransactionOption(
                f"timeout must be a positive number of seconds, got {timeout!r}", option="timeout"
            )
    policy = None
    if retries is not None:
        from repom.retry import RetryPolicy

        if isinstance(retries, RetryPolicy):
            policy = retries
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
      module default of the flavour in use); ``session`` -- use this session instead.
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
) -> Any:
    """Decorator form of :func:`transaction` (``@transactional`` or ``@transactional(...)``).

    The function runs inside the scope; if it declares a ``session`` parameter that the caller
    did not pass, the scope's session is injected.
    """
    tx = transaction(
        propagation=propagation,
        isolation=isolation,
        read_only=read_only,
        timeout=timeout,
        retries=retries,
        idempotent=idempotent,
        database=database,
    )
    if func is not None:
        return tx(func)
    return tx
