"""Async sessions (seed 004): ``get_async_session``, ``get_async_db_session``,
``get_async_db_transaction``, ``transaction``, ``convert_to_async_uri``.

Same semantics as :mod:`repom.session`: as a FastAPI dependency the transaction commits after the
endpoint returned and before the response is sent.  Cleanup (rollback, close) is shielded from
task cancellation, so a cancelled request never leaves a pooled connection checked out.

Seed 004 shows::

    async for session in get_async_db_session():
        session.add(user)
        return user

An async generator cannot tell that ``return`` from an exception (both simply abandon it), so
leaving the loop early never commits: the work is rolled back and an :class:`EarlyExitWarning`
is issued.  The rollback itself happens when the event loop closes the abandoned generator, but
from the moment the loop is left the transaction is nobody's current transaction: code called
afterwards never joins it.  Write ``async with transaction() as session:`` (or use ``Depends``)
instead.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from repom.database import AsyncDatabase, get_async_database
from repom.session import (
    EARLY_EXIT_MESSAGE,
    NEW_TRANSACTION,
    NO_CONNECTION,
    EarlyExitWarning,
    HTTPConnection,
    consumer_frame,
    function_exit_stack,
    warn_late_commit,
)
from repom.transactions import Propagation, Transaction, transaction
from repom.transactions.core import enter_async, leave_async
from repom.urls import convert_to_async_uri

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "EarlyExitWarning",
    "convert_to_async_uri",
    "get_async_db_session",
    "get_async_db_transaction",
    "get_async_session",
    "managed_async_session",
    "transaction",
]


async def get_async_session() -> AsyncSession:
    """A new ``AsyncSession`` (``session = await get_async_session()``).  You must close it."""
    return get_async_database().session()


def _new_transaction(database: AsyncDatabase | None) -> Transaction:
    return transaction(
        database=database or get_async_database(), propagation=Propagation.REQUIRES_NEW
    )


@asynccontextmanager
async def managed_async_session(
    database: AsyncDatabase | None = None,
) -> AsyncIterator[AsyncSession]:
    """``async with``: a session in a new transaction; commit, or roll back on error; close."""
    async with _new_transaction(database) as session:
        yield session


def _session_generator(name: str, doc: str) -> Callable[..., AsyncIterator[AsyncSession]]:
    """Build one of the seed's session generators (an async generator function, as FastAPI's
    ``Depends`` requires).  Written once: nesting one async generator in another would lose the
    exceptions FastAPI throws into it."""

    async def generator(connection: HTTPConnection = NO_CONNECTION) -> AsyncIterator[AsyncSession]:
        scope = await enter_async(NEW_TRANSACTION.on(get_async_database()))
        scope.consumer = consumer_frame(sys._getframe())
        session = cast("AsyncSession", scope.session)
        finished = False

        async def finish(error: BaseException | None) -> None:
            nonlocal finished
            if not finished:
                finished = True
                await leave_async(scope, error)

        if connection is not None:
            stack = function_exit_stack(connection)
            if stack is None:
                warn_late_commit(name)
            else:

                async def end_with_endpoint(_t: Any, error: BaseException | None, _tb: Any) -> bool:
                    await finish(error)
                    return False

                stack.push_async_exit(end_with_endpoint)
        try:
            yield session
        except GeneratorExit as exit_:
            if not finished:
                warnings.warn(
                    EARLY_EXIT_MESSAGE.format(name=name, loop="async for", with_="async with"),
                    EarlyExitWarning,
                    stacklevel=2,
                )
            await finish(exit_)
            raise
        except BaseException as error:
            await finish(error)
            raise
        await finish(None)

    generator.__name__ = generator.__qualname__ = name
    generator.__doc__ = doc
    return generator


get_async_db_session = _session_generator(
    "get_async_db_session",
    "Yield an ``AsyncSession`` in a transaction: commit on success, roll back on error, close.",
)
get_async_db_transaction = _session_generator(
    "get_async_db_transaction",
    "Like :func:`get_async_db_session`, with the transaction begun explicitly.",
)
