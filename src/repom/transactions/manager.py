"""The compatibility names (``TransactionManager``, ``SessionManager``) as thin faces over
:func:`repom.transactions.transaction`.

Each method returns a :class:`~repom.transactions.Transaction`, usable with ``with`` on a
:class:`~repom.database.Database` and with ``async with`` on an ``AsyncDatabase``::

    tm = TransactionManager(get_async_database())
    async with tm.transaction() as session: ...
    async with tm.read_only_session() as session: ...
    async with tm.nested_transaction(session): ...      # SAVEPOINT
    async with tm.batch_session() as session: ...       # SET LOCAL synchronous_commit = off

Construction from a ``DatabaseManager`` also works: ``TransactionManager(db_manager)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from repom._database import AsyncDatabase, Database
from repom.exceptions import InvalidTransactionOption
from repom.transactions.core import (
    IsolationLevel,
    Propagation,
    Transaction,
    is_session,
    transaction,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session


class HasDatabase(Protocol):
    """The compatibility ``DatabaseManager`` (:mod:`repom.database`, a layer above) holds one."""

    @property
    def database(self) -> AsyncDatabase: ...


__all__ = ["SessionManager", "TransactionManager"]


def _database(source: Any) -> Database | AsyncDatabase | None:
    if source is None or is_session(source):
        return None
    if isinstance(source, (Database, AsyncDatabase)):
        return source
    inner = getattr(source, "database", None) if hasattr(type(source), "database") else None
    if isinstance(inner, (Database, AsyncDatabase)):
        return inner
    raise TypeError(
        "expected a Database, AsyncDatabase, DatabaseManager or a Session/AsyncSession, got "
        f"{type(source).__name__}"
    )


class TransactionManager:
    """``transaction()``, ``read_only_session()``, ``nested_transaction(session)``,
    ``batch_session()``.  ``database=None`` uses the module default of the flavour in use.

    It can also be built on a session: ``TransactionManager(session).transaction(
    rollback_on_exception=..., commit_on_success=...)`` runs in that session's transaction (joins
    it when it is in a repom scope, else owns it: commit on success, roll back on error)."""

    def __init__(
        self,
        database: Database | AsyncDatabase | HasDatabase | Session | AsyncSession | None = None,
    ) -> None:
        self.session: Session | AsyncSession | None = database if is_session(database) else None
        self.database = _database(database)

    def _scope(self, **options: Any) -> Transaction:
        if self.session is not None and "session" not in options:
            options["session"] = self.session
        elif "session" not in options:
            options["database"] = self.database
        return transaction(**options)

    def transaction(
        self,
        *,
        isolation: IsolationLevel | str | None = None,
        propagation: Propagation | str = Propagation.REQUIRED,
        rollback_on_exception: bool = True,
        commit_on_success: bool = True,
        **options: Any,
    ) -> Transaction:
        return self._scope(
            isolation=isolation,
            propagation=propagation,
            rollback_on_exception=rollback_on_exception,
            commit_on_success=commit_on_success,
            **options,
        )

    def read_only_session(self, **options: Any) -> Transaction:
        return self._scope(read_only=True, **options)

    def nested_transaction(self, session: Session | AsyncSession) -> Transaction:
        """A SAVEPOINT on *session* (the surrounding transaction continues if it rolls back)."""
        return transaction(session=session, propagation=Propagation.NESTED)

    def batch_session(self, batch_size: int = 1000, **options: Any) -> Transaction:
        """A transaction for bulk work: on PostgreSQL ``SET LOCAL synchronous_commit = off``
        (scoped to the transaction, never left on the pooled connection).  ``batch_size`` is
        accepted for seed compatibility; chunking is the repository's ``bulk_create`` job."""
        if batch_size <= 0:
            raise InvalidTransactionOption("batch_size must be positive", option="batch_size")
        return transaction(
            database=self.database,
            propagation=Propagation.REQUIRES_NEW,
            synchronous_commit_off=True,
            **options,
        )


class SessionManager(TransactionManager):
    """The compatibility ``SessionManager``: ``get_session(isolation_level=..., read_only=...)`` and
    ``batch_session(batch_size=...)``.  The isolation level is validated against
    :class:`IsolationLevel`; it is never pasted into SQL."""

    def __init__(self, db_manager: Database | AsyncDatabase | HasDatabase | None = None) -> None:
        super().__init__(db_manager)
        self.db_manager = db_manager

    def get_session(
        self, isolation_level: IsolationLevel | str | None = None, read_only: bool = False
    ) -> Transaction:
        return transaction(
            database=self.database,
            isolation=isolation_level,
            read_only=read_only or None,
            propagation=Propagation.REQUIRES_NEW,
        )
