"""One queue of writers per SQLite database file, in this process.

SQLite lets one connection write at a time.  Left to itself, a second writer waits in SQLite's
busy handler, which *sleeps and polls* (1, 2, 5, 10 ... up to 100 ms per try, in the connection's
thread) until the lock is free or ``busy_timeout`` has passed.  Under concurrency that is unfair
and slow: a writer that arrived first can keep sleeping while later ones slip in, the lock sits
free while everybody sleeps, and a burst of 32 transfers spreads over seconds with some of them
timing out.

Repom's SQLite engines queue their writers instead (:func:`install_write_queue`, called by
:func:`repom.engine.install_engine_events`): a transaction takes its database file's
:class:`WriteQueue` turn *before* SQLite's write lock and gives it back right after ``COMMIT`` or
``ROLLBACK``, so writers of this process reach SQLite one at a time, in arrival order, and the
next one starts the moment the previous one ended -- no polling, no sleeping.  Readers never
queue (WAL lets them run beside the writer).

When a transaction takes its turn:

* ``BEGIN IMMEDIATE`` transactions (``isolation=SERIALIZABLE``, ``sqlite_begin="immediate"``,
  migrations): before ``BEGIN IMMEDIATE``;
* plain (deferred) transactions: before their first statement that writes (anything but
  ``SELECT``, ``PRAGMA``, ``EXPLAIN``, ``VALUES`` and the savepoint / transaction statements) or
  that asks for row locks (``SELECT ... FOR UPDATE``, which SQLite has no syntax for: the queue
  gives it the same meaning -- nobody else in the process writes until this transaction ends).
  A transaction that *read* before its first write may still find that another writer changed
  the database since its snapshot; SQLite then refuses the write at once (``SQLITE_BUSY_SNAPSHOT``)
  and repom raises :class:`~repom.exceptions.LockNotAvailable`, which ``retries=`` runs again.
  Starting with the locking read (``for_update=True``) or with ``BEGIN IMMEDIATE`` avoids that.

A turn waits at most ``busy_timeout`` seconds (the same budget SQLite's own handler had), then
:class:`~repom.exceptions.LockNotAvailable` names how long it waited and how many writers were
ahead.  A task or thread that already holds the turn through one connection and asks for it on
another (e.g. ``Propagation.REQUIRES_NEW`` inside a transaction that wrote) would wait for
itself: that fails at once with :class:`~repom.exceptions.TransactionError`.

Other *processes* writing the same file (several uvicorn workers, a CLI) still meet SQLite's busy
handler: the queue orders the writers of one process.  In-memory databases have one connection and
no queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from repom.exceptions import LockNotAvailable, TransactionError

__all__ = ["WriteQueue", "install_write_queue", "queue_for", "write_statement"]

logger = logging.getLogger("repom.engine")

_HOLDING = "repom_write_turn"  # connection_record.info key: the queue whose turn it holds

# statements that neither write nor take SQLite's write lock (compared upper-cased, first word)
_NO_WRITE = frozenset(
    {"SELECT", "PRAGMA", "EXPLAIN", "VALUES", "SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT",
     "END"}
)  # fmt: skip


def write_statement(statement: str) -> bool:
    """Whether *statement* (SQL text) may write, judged by its first keyword."""
    head = statement.lstrip(" \t\r\n(")[:10].split(None, 1)
    return bool(head) and head[0].upper() not in _NO_WRITE


def _holder() -> object:
    """Who is asking: the running asyncio task, else the thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


class _Waiter:
    __slots__ = ("event", "future", "holder", "loop")

    def __init__(self, holder: object, loop: asyncio.AbstractEventLoop | None) -> None:
        self.holder = holder
        self.loop = loop
        self.event: threading.Event | None = None if loop else threading.Event()
        self.future: asyncio.Future[None] | None = loop.create_future() if loop else None


class WriteQueue:
    """First come, first served turns to write one SQLite database file (see the module)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._waiting: collections.deque[_Waiter] = collections.deque()
        self._owner: object | None = None  # the DBAPI connection whose turn it is
        self._holder: object | None = None  # the task / thread that took the turn
        self.turns = 0  # turns granted since the queue was created
        self.waited = 0  # of which had to wait for another writer

    @property
    def busy(self) -> bool:
        """Whether a writer holds the turn (or it is being handed to the next one)."""
        return self._owner is not None

    @property
    def queued(self) -> int:
        """Writers waiting for their turn now."""
        return len(self._waiting)

    def owned_by(self, connection: object) -> bool:
        return self._owner is connection

    # -- taking a turn ----------------------------------------------------------------------

    def _try_take(self, connection: object, holder: object) -> _Waiter | None:
        """Under the mutex: take the turn now (None), or join the queue (the waiter)."""
        if self._owner is None and not self._waiting:
            self._owner, self._holder = connection, holder
            self.turns += 1
            return None
        if holder == self._holder:
            raise TransactionError(
                "this task already writes to the SQLite database "
                f"{os.path.basename(self.path)!r} through another connection; a second "
                "transaction that writes (e.g. Propagation.REQUIRES_NEW) would wait for its own "
                "outer transaction: SQLite allows one writer at a time (use a savepoint, "
                "Propagation.NESTED, instead)"
            )
        loop = asyncio.get_running_loop() if isinstance(holder, asyncio.Task) else None
        waiter = _Waiter(holder, loop)
        self._waiting.append(waiter)
        return waiter

    def acquire(self, connection: object, timeout: float) -> None:
        """Take the turn for *connection*, blocking this thread (sync engines)."""
        holder = threading.get_ident()
        with self._mutex:
            waiter = self._try_take(connection, holder)
        if waiter is None:
            return
        start = time.monotonic()
        assert waiter.event is not None
        if waiter.event.wait(timeout):
            self._granted(connection, holder)
            return
        with self._mutex:
            if waiter in self._waiting:  # still queued: give up
                self._waiting.remove(waiter)
                raise self._timeout_error(time.monotonic() - start)
        self._granted(connection, holder)  # the turn arrived just as the wait ended

    async def acquire_async(self, connection: object, seconds: float) -> None:
        """Take the turn for *connection* without blocking the event loop (async engines)."""
        holder = _holder()
        with self._mutex:
            waiter = self._try_take(connection, holder)
        if waiter is None:
            return
        start = time.monotonic()
        future = waiter.future
        assert future is not None
        try:
            await asyncio.wait_for(asyncio.shield(future), seconds)
        except (TimeoutError, asyncio.CancelledError) as error:
            with self._mutex:
                if waiter in self._waiting:  # never got the turn: leave the queue
                    self._waiting.remove(waiter)
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    raise self._timeout_error(time.monotonic() - start) from None
            # the turn was handed over meanwhile: it is ours, keep it or pass it on
            if isinstance(error, asyncio.CancelledError):
                self._granted(connection, holder)
                self.release(connection)
                raise
        self._granted(connection, holder)

    def _granted(self, connection: object, holder: object) -> None:
        # the releasing side already made this waiter the owner (see release); record who
        with self._mutex:
            self._owner, self._holder = connection, holder

    def _timeout_error(self, waited: float) -> LockNotAvailable:
        ahead = len(self._waiting) + 1
        return LockNotAvailable(
            f"waited {waited:.2f}s for the SQLite write lock on "
            f"{os.path.basename(self.path)!r} ({ahead} writer(s) ahead); raise "
            "REPOM_SQLITE_BUSY_TIMEOUT or shorten the transactions that write"
        )

    # -- giving it back ---------------------------------------------------------------------

    def release(self, connection: object) -> None:
        """End *connection*'s turn (no-op when it holds none) and hand it to the next writer."""
        with self._mutex:
            if self._owner is not connection:
                return
            self._owner = self._holder = None
            while self._waiting:
                waiter = self._waiting.popleft()
                # reserve the turn for the waiter; it records itself as owner when it wakes
                self._owner, self._holder = _RESERVED, waiter.holder
                self.turns += 1
                self.waited += 1
                if waiter.event is not None:
                    waiter.event.set()
                    return
                try:
                    assert waiter.loop is not None
                    waiter.loop.call_soon_threadsafe(_wake, waiter.future)
                    return
                except RuntimeError:  # its event loop is closed: nobody will take this turn
                    self._owner = self._holder = None

    def force_release(self) -> None:
        """Give the turn back whoever holds it (a connection that was closed or invalidated)."""
        owner = self._owner
        if owner is not None:
            self.release(owner)


_RESERVED = object()  # owner placeholder between a release and the waiter waking up


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


_queues: dict[str, WriteQueue] = {}
_queues_mutex = threading.Lock()


def queue_for(path: str) -> WriteQueue:
    """The process-wide queue of the SQLite file *path* (one per real file, whatever the URL)."""
    key = os.path.realpath(path)
    with _queues_mutex:
        queue = _queues.get(key)
        if queue is None:
            queue = _queues[key] = WriteQueue(key)
        return queue


def _file_of(engine: Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or engine.url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        database = database[5:].split("?", 1)[0]
    return database


def _dbapi(connection: Any) -> Any:
    """The raw DBAPI connection behind a pool proxy (what ``do_commit`` receives) or itself."""
    return getattr(connection, "dbapi_connection", connection)


def install_write_queue(engine: Engine, timeout: float) -> Callable[[Any], None] | None:
    """Queue the writers of *engine* (a SQLite engine on a file) in its file's
    :class:`WriteQueue`.  Returns the function that takes a connection's turn, which the
    engine's "begin" listener calls before it emits ``BEGIN IMMEDIATE`` (None for in-memory
    databases: no queue)."""
    path = _file_of(engine)
    if path is None:
        return None
    queue = queue_for(path)
    is_async = engine.dialect.is_async

    def take(connection: Any) -> None:
        dbapi = _dbapi(connection.connection)
        if queue.owned_by(dbapi):
            return
        if is_async:
            from sqlalchemy.util import await_only

            await_only(queue.acquire_async(dbapi, timeout))
        else:
            queue.acquire(dbapi, timeout)
        connection.connection._connection_record.info[_HOLDING] = queue

    @event.listens_for(engine, "before_cursor_execute")
    def _repom_first_write(
        connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if connection.connection._connection_record.info.get(_HOLDING) is not None:
            return
        if write_statement(statement) or _locks_rows(context):
            if connection.in_transaction():
                take(connection)

    def give_back(dbapi_connection: Any) -> None:
        queue.release(_dbapi(dbapi_connection))

    dialect = engine.dialect
    for name in ("do_commit", "do_rollback"):
        original = getattr(dialect, name)
        setattr(dialect, name, _releasing(original, queue))

    @event.listens_for(engine, "checkin")
    def _repom_checkin(dbapi_connection: Any, connection_record: Any) -> None:
        if connection_record is not None and connection_record.info.pop(_HOLDING, None):
            give_back(dbapi_connection)

    @event.listens_for(engine, "invalidate")
    def _repom_invalidate(dbapi_connection: Any, connection_record: Any, exception: Any) -> None:
        if connection_record is not None and connection_record.info.pop(_HOLDING, None):
            give_back(dbapi_connection)

    return take


def _releasing(original: Any, queue: WriteQueue) -> Any:
    def wrapper(dbapi_connection: Any) -> None:
        try:
            original(dbapi_connection)
        finally:
            raw = _dbapi(dbapi_connection)
            if queue.owned_by(raw):
                record = getattr(dbapi_connection, "_connection_record", None)
                if record is not None:
                    record.info.pop(_HOLDING, None)
                queue.release(raw)

    return wrapper


def _locks_rows(context: Any) -> bool:
    compiled = getattr(context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    return getattr(statement, "_for_update_arg", None) is not None
