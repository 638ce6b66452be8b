"""``QueryCounter``: count the statements a block of code sends, to catch N+1 queries in tests.

What is counted is cursor executions -- round trips -- seen by SQLAlchemy's
``before_cursor_execute`` event: an ``executemany`` is one, an ``insertmanyvalues`` batch is one
per batch.  Transaction control (``BEGIN``, ``COMMIT``, ``SAVEPOINT``, ``RELEASE``, ``ROLLBACK``)
is left out unless ``include_transaction_control=True``, so that the same code counts the same on
SQLite (where repom emits ``BEGIN`` as a statement) and PostgreSQL (where the driver does).

The target decides what is seen:

* ``Session`` / ``AsyncSession`` -- only that session's statements (the listener sits on the
  connection the session holds and on those it gets later; a ``BEGIN`` sent while it gets one,
  as on SQLite, happens before the session names the connection and is not seen);
* ``Connection`` / ``AsyncConnection`` -- that connection's statements;
* ``Engine`` / ``AsyncEngine`` / ``Database`` / ``AsyncDatabase`` -- every statement on the
  engine, from any thread or task (a database bound to a test connection counts that connection).
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from repom.monitoring.pool import UnsupportedMonitorTarget, database_of

__all__ = ["QueryCounter", "assert_max_queries"]

_TX_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START TRANSACTION")


def _is_transaction_control(statement: str) -> bool:
    return statement.lstrip()[:17].upper().startswith(_TX_CONTROL)


def _resolve(target: Any) -> tuple[str, Any]:
    """``("session", Session)``, ``("connection", Connection)`` or ``("engine", Engine)``."""
    if isinstance(target, Session):
        return "session", target
    if isinstance(target, Connection):
        return "connection", target
    if isinstance(target, Engine):
        return "engine", target
    for attr, kind, cls in (
        ("sync_session", "session", Session),  # AsyncSession
        ("sync_connection", "connection", Connection),  # AsyncConnection
        ("sync_engine", "engine", Engine),  # AsyncEngine
    ):
        inner = getattr(target, attr, None)
        if isinstance(inner, cls):
            return kind, inner
    database = database_of(target)
    if database is not None:
        bound = database.bound_connection
        if bound is not None:
            return _resolve(bound)
        return _resolve(database.engine)
    raise UnsupportedMonitorTarget(
        f"QueryCounter cannot count statements of a {type(target).__name__}: expected a Session, "
        "AsyncSession, Connection, AsyncConnection, Engine, AsyncEngine, Database or AsyncDatabase"
    )


class QueryCounter:
    """Counts statements while active; use with ``with`` or ``async with``.

    ::

        with QueryCounter(session) as queries:
            users = session.scalars(select(User)).all()
            [u.addresses for u in users]
        queries.assert_max_queries(2)        # AssertionError listing the statements (N+1)

    ``count`` and ``statements`` (the SQL strings, in order) can be read while counting and
    afterwards.  A counter can be entered again; it goes on counting (``reset()`` clears it).
    """

    def __init__(
        self,
        target: Any,
        *,
        include_transaction_control: bool = False,
        max_queries: int | None = None,
    ) -> None:
        self._kind, self._target = _resolve(target)
        self.include_transaction_control = include_transaction_control
        if max_queries is not None and (
            isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 0
        ):
            raise ValueError(f"max_queries must be a non-negative int, got {max_queries!r}")
        self.max_queries = max_queries
        self.statements: list[str] = []
        self._connections: list[Connection] = []
        self._active = False

    # ------------------------------------------------------------------ figures

    @property
    def count(self) -> int:
        return len(self.statements)

    def __len__(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()

    def assert_max_queries(self, n: int) -> None:
        """Raise ``AssertionError`` listing the statements when more than *n* ran."""
        if self.count > n:
            raise AssertionError(self._report(f"expected at most {n} statement(s)"))

    def assert_count(self, n: int) -> None:
        """Raise ``AssertionError`` listing the statements unless exactly *n* ran."""
        if self.count != n:
            raise AssertionError(self._report(f"expected exactly {n} statement(s)"))

    def _report(self, expectation: str) -> str:
        lines = [f"{expectation}, {self.count} ran:"]
        lines += [f"  {i}. {' '.join(s.split())}" for i, s in enumerate(self.statements, 1)]
        repeated = [(s, n) for s, n in Counter(self.statements).most_common() if n > 1]
        for statement, n in repeated:
            lines.append(
                f"repeated {n} times (N+1? load the relationship eagerly, e.g. selectinload): "
                f"{' '.join(statement.split())}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ listening

    def _on_execute(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if self.include_transaction_control or not _is_transaction_control(statement):
            self.statements.append(statement)

    def _on_session_begin(self, session: Any, transaction: Any, connection: Connection) -> None:
        self._listen_connection(connection)

    def _listen_connection(self, connection: Connection) -> None:
        if any(c is connection for c in self._connections):
            return
        event.listen(connection, "before_cursor_execute", self._on_execute)
        self._connections.append(connection)

    def start(self) -> QueryCounter:
        if self._active:
            raise RuntimeError("this QueryCounter is already counting")
        self._active = True
        if self._kind == "engine":
            event.listen(self._target, "before_cursor_execute", self._on_execute)
        elif self._kind == "connection":
            self._listen_connection(self._target)
        else:
            session: Session = self._target
            event.listen(session, "after_begin", self._on_session_begin)
            if session.in_transaction():
                # the connection the session already holds (no new checkout: it is in use)
                self._listen_connection(session.connection())
        return self

    def stop(self) -> None:
        if not self._active:
            return
        self._active = False
        if self._kind == "engine":
            event.remove(self._target, "before_cursor_execute", self._on_execute)
        elif self._kind == "session":
            event.remove(self._target, "after_begin", self._on_session_begin)
        for connection in self._connections:
            event.remove(connection, "before_cursor_execute", self._on_execute)
        self._connections.clear()

    def __enter__(self) -> QueryCounter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None and self.max_queries is not None:
            self.assert_max_queries(self.max_queries)

    async def __aenter__(self) -> QueryCounter:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"QueryCounter({self._kind}, count={self.count})"


def assert_max_queries(target: Any, n: int, **options: Any) -> QueryCounter:
    """``with assert_max_queries(session, 2): ...`` (or ``async with``) fails the block with an
    ``AssertionError`` listing the statements when it sent more than *n* (not when the block
    itself raised)."""
    return QueryCounter(target, max_queries=n, **options)
