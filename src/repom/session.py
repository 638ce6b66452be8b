"""Sync sessions (seed 004): ``get_session``, ``get_db_session``, ``get_db_transaction``,
``transaction``.

* :func:`get_session` -- a new, unmanaged ``Session``; the caller closes it.
* :func:`get_db_session` -- a generator for ``Depends`` or ``for session in ...``: yields a session
  inside a transaction, commits when the consumer finishes normally, rolls back on error, always
  closes.  The session is the current transaction, so ``@transactional`` code called while it is
  open joins it.
* :func:`get_db_transaction` -- the same, for code that wants the explicit-BEGIN spelling.
* :func:`transaction` -- :func:`repom.transactions.transaction` (context manager and decorator).

**As a FastAPI dependency** (``Depends(get_db_session)``, no ``scope=`` needed) the transaction is
committed right after the endpoint returned and *before* the response is sent, so a COMMIT that
fails (a deferred constraint, a serialization failure) reaches the client as an error status,
never as a 2xx.  The generators take the request as a parameter FastAPI fills in
(``connection``); called directly they behave as plain generators.

Leaving a ``for session in get_db_session():`` loop early (``return``/``break``/an exception) is
something a generator cannot tell apart, so it never commits: the work is rolled back and a
:class:`EarlyExitWarning` names the deterministic forms (``with transaction() as session`` or
``Depends``).  From the moment the loop is left, the transaction is nobody's current transaction:
code called afterwards never joins it.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.orm import Session

from repom.database import Database, get_database
from repom.transactions import Propagation, Transaction, transaction
from repom.transactions.core import enter_sync, leave_sync, prepare_options, shielded

if TYPE_CHECKING:
    from contextlib import AsyncExitStack

    from starlette.requests import HTTPConnection as HTTPConnection
else:  # FastAPI recognises the annotation and passes the request; without Starlette it is unused
    try:
        from starlette.requests import HTTPConnection
    except ImportError:  # pragma: no cover - FastAPI not installed
        HTTPConnection = object

__all__ = [
    "EarlyExitWarning",
    "get_db_session",
    "get_db_transaction",
    "get_session",
    "managed_session",
    "transaction",
]


class EarlyExitWarning(RuntimeWarning):
    """A session generator was abandoned before it finished; its work was rolled back."""


EARLY_EXIT_MESSAGE = (
    "{name}() was left before the loop finished (return, break or an exception inside "
    "'{loop} session in {name}()'); a generator cannot tell these apart, so the transaction was "
    "ROLLED BACK, not committed. Use '{with_} transaction() as session:' or "
    "Depends({name}) for a deterministic commit."
)

#: the default of the generators' ``connection`` parameter: called directly, there is no request
NO_CONNECTION: Any = None


def consumer_frame(generator_frame: FrameType) -> FrameType | None:
    """The frame that consumes a session generator in a loop (None when a context manager --
    FastAPI's dependency machinery, ``contextlib`` -- drives it and ends it deterministically)."""
    caller = generator_frame.f_back
    if caller is None or caller.f_code.co_filename.endswith("contextlib.py"):
        return None
    return caller


def function_exit_stack(connection: Any) -> AsyncExitStack | None:
    """FastAPI's per-endpoint exit stack of this request: it is closed right after the endpoint
    returned, before the response is sent (what ``Depends(..., scope="function")`` uses)."""
    scope = getattr(connection, "scope", None)
    if not isinstance(scope, dict):
        return None
    return cast("AsyncExitStack | None", scope.get("fastapi_function_astack"))


_warned_no_stack: set[str] = set()


def warn_late_commit(name: str) -> None:
    """This FastAPI has no per-endpoint exit stack: the commit comes after the response."""
    if name in _warned_no_stack:
        return
    _warned_no_stack.add(name)
    warnings.warn(
        f"Depends({name}): this FastAPI version runs the commit after the response was sent, "
        "so a failed COMMIT cannot change the status code; use repom.fastapi.DbSession / "
        "AsyncDbSession (or FastAPI >= 0.121)",
        RuntimeWarning,
        stacklevel=3,
    )


def get_session() -> Session:
    """A new ``Session`` from the default database.  You must close it."""
    return get_database().session()


def managed_session(database: Database | None = None) -> Transaction:
    """``with managed_session() as session``: a new transaction; commit, or roll back on error."""
    return transaction(database=database or get_database(), propagation=Propagation.REQUIRES_NEW)


#: the generators' transaction: a new one on the default database (validated once)
NEW_TRANSACTION = prepare_options(Propagation.REQUIRES_NEW)


def _session_generator(name: str, doc: str) -> Callable[..., Iterator[Session]]:
    """Build one of the seed's sync session generators (a generator function, as FastAPI's
    ``Depends`` requires)."""

    def generator(connection: HTTPConnection = NO_CONNECTION) -> Iterator[Session]:
        scope = enter_sync(NEW_TRANSACTION.on(get_database()))
        scope.consumer = consumer_frame(sys._getframe())
        session = cast(Session, scope.session)
        finished = False

        def finish(error: BaseException | None) -> None:
            nonlocal finished
            if not finished:
                finished = True
                leave_sync(scope, error)

        if connection is not None:
            stack = function_exit_stack(connection)
            if stack is None:
                warn_late_commit(name)
            else:

                async def end_with_endpoint(_t: Any, error: BaseException | None, _tb: Any) -> bool:
                    # a cancelled request still waits for its commit or rollback to end
                    await shielded(asyncio.to_thread(finish, error))
                    return False

                stack.push_async_exit(end_with_endpoint)
        try:
            yield session
        except GeneratorExit as exit_:
            if not finished:
                warnings.warn(
                    EARLY_EXIT_MESSAGE.format(name=name, loop="for", with_="with"),
                    EarlyExitWarning,
                    stacklevel=2,
                )
            finish(exit_)
            raise
        except BaseException as error:
            finish(error)
            raise
        finish(None)

    generator.__name__ = generator.__qualname__ = name
    generator.__doc__ = doc
    return generator


get_db_session = _session_generator(
    "get_db_session",
    "Yield a session in a transaction: commit on success, roll back on error, always close.",
)
get_db_transaction = _session_generator(
    "get_db_transaction",
    "Like :func:`get_db_session`; the transaction is begun explicitly before the yield.",
)
