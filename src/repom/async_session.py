"""Async sessions (seed 004): ``get_async_session``, ``get_async_db_session``,
``get_async_db_transaction``, ``transaction``, ``convert_to_async_uri``.

Same semantics as :mod:`repom.session`.  Cleanup (rollback, close) is shielded from task
cancellation, so a cancelled request never leaves a pooled connection checked out.

Seed 004 shows::

    async for session in get_async_db_session():
        session.add(user)
        return user

An async generator cannot tell that ``return`` from an exception (both simply abandon it), so
leaving the loop early never commits: the work is rolled back and an :class:`EarlyExitWarning`
is issued.  Write ``async with transaction() as session:`` (or use ``Depends``) instead.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from repom.database import AsyncDatabase, get_async_database
from repom.session import EARLY_EXIT_MESSAGE, EarlyExitWarning
from repom.transactions import Propagation, Transaction, transaction
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


def _session_generator(name: str, doc: str) -> Callable[[], AsyncIterator[AsyncSession]]:
    """Build one of the seed's session generators (an async generator function, as FastAPI's
    ``Depends`` requires).  Written once: nesting one async generator in another would lose the
    exceptions FastAPI throws into it."""

    async def generator() -> AsyncIterator[AsyncSession]:
        try:
            async with _new_transaction(None) as session:
                yield session
        except GeneratorExit:
            warnings.warn(
                EARLY_EXIT_MESSAGE.format(name=name, loop="async for", with_="async with"),
                EarlyExitWarning,
                stacklevel=2,
            )
            raise

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
