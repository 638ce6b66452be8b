"""One session per request, committed *before* the response is sent.

``DbSession`` / ``AsyncDbSession`` are ``Annotated`` dependencies declared with
``Depends(..., scope="function")``: FastAPI runs their exit code right after the path operation
returned and its response was built, but before a byte of it goes to the client.  The exit code
commits; when the commit fails, the error travels through the application's exception handlers
(see :func:`repom.fastapi.install_exception_handlers`) and the client gets that error status
instead of the 2xx that was prepared.  An exception raised by the endpoint (an ``HTTPException``
included) rolls the transaction back.

The async session is repom's *current transaction* for the request's task, so service code
decorated with ``@transactional`` (``Propagation.REQUIRED``) joins it.  FastAPI runs a sync
dependency and a sync endpoint in worker threads (different ones, each with a copy of the
request's context), so a sync endpoint receives the session but it is not "current" in the
endpoint's thread: pass it on explicitly, or write ``with transaction(session=session):`` in the
endpoint to make it current there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from repom.database import AsyncDatabase, Database
from repom.fastapi._databases import app_async_database, app_database, register_dependency
from repom.transactions import IsolationLevel
from repom.transactions.core import (
    enter_async,
    enter_sync,
    leave_async,
    leave_sync,
    request_options,
)

__all__ = [
    "AsyncDbSession",
    "AsyncReadOnlyDbSession",
    "DbSession",
    "ReadOnlyDbSession",
    "async_session_dependency",
    "session_dependency",
]


def session_dependency(
    database: Database | None = None,
    *,
    read_only: bool | None = None,
    isolation: IsolationLevel | str | None = None,
) -> Callable[..., Iterator[Session]]:
    """A sync session dependency: one transaction per request, commit before the response.

    *database* defaults to the application's (see :func:`repom.fastapi.use_databases`), else the
    module default.  Use it with ``Depends(dep, scope="function")``; the ``DbSession`` alias does.
    The options are checked here, once: a bad one raises
    :class:`~repom.exceptions.InvalidTransactionOption` when the dependency is made.
    """
    if database is not None and not isinstance(database, Database):
        raise TypeError(f"database must be a repom Database, got {type(database).__name__}")
    options = request_options(database, read_only=read_only, isolation=isolation)

    def request_session(request: Request) -> Iterator[Session]:
        scope = enter_sync(
            options.on(database if database is not None else app_database(request.app))
        )
        try:
            yield scope.session
        except BaseException as error:
            leave_sync(scope, error)
            raise
        leave_sync(scope, None)

    register_dependency(request_session, is_async=False, database=database)
    return request_session


def async_session_dependency(
    database: AsyncDatabase | None = None,
    *,
    read_only: bool | None = None,
    isolation: IsolationLevel | str | None = None,
) -> Callable[..., AsyncIterator[AsyncSession]]:
    """The async counterpart of :func:`session_dependency` (the session is the current
    transaction of the request's task, so ``@transactional`` services join it)."""
    if database is not None and not isinstance(database, AsyncDatabase):
        raise TypeError(f"database must be a repom AsyncDatabase, got {type(database).__name__}")
    options = request_options(database, read_only=read_only, isolation=isolation)

    async def async_request_session(request: Request) -> AsyncIterator[AsyncSession]:
        scope = await enter_async(
            options.on(database if database is not None else app_async_database(request.app))
        )
        try:
            yield scope.session
        except BaseException as error:
            await leave_async(scope, error)
            raise
        await leave_async(scope, None)

    register_dependency(async_request_session, is_async=True, database=database)
    return async_request_session


get_request_session = session_dependency()
get_async_request_session = async_session_dependency()
get_read_only_request_session = session_dependency(read_only=True)
get_async_read_only_request_session = async_session_dependency(read_only=True)

#: A sync ``Session`` in a transaction owned by the request (commit before the response).
DbSession = Annotated[Session, Depends(get_request_session, scope="function")]
#: An ``AsyncSession`` in a transaction owned by the request (commit before the response).
AsyncDbSession = Annotated[AsyncSession, Depends(get_async_request_session, scope="function")]
#: Like ``DbSession`` in a read-only transaction (a write raises ``ReadOnlyViolation``).
ReadOnlyDbSession = Annotated[Session, Depends(get_read_only_request_session, scope="function")]
#: Like ``AsyncDbSession`` in a read-only transaction.
AsyncReadOnlyDbSession = Annotated[
    AsyncSession, Depends(get_async_read_only_request_session, scope="function")
]
