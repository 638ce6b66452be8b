"""Sync sessions (seed 004): ``get_session``, ``get_db_session``, ``get_db_transaction``,
``transaction``.

* :func:`get_session` -- a new, unmanaged ``Session``; the caller closes it.
* :func:`get_db_session` -- a generator for ``Depends`` or ``for session in ...``: yields a session
  inside a transaction, commits when the consumer finishes normally, rolls back on error, always
  closes.  The session is the current transaction, so ``@transactional`` code called while it is
  open joins it.
* :func:`get_db_transaction` -- the same, for code that wants the explicit-BEGIN spelling.
* :func:`transaction` -- :func:`repom.transactions.transaction` (context manager and decorator).

Leaving a ``for session in get_db_session():`` loop early (``return``/``break``/an exception) is
something a generator cannot tell apart, so it never commits: the work is rolled back and a
:class:`EarlyExitWarning` names the deterministic forms (``with transaction() as session`` or
``Depends``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

from sqlalchemy.orm import Session

from repom.database import Database, get_database
from repom.transactions import Propagation, Transaction, transaction

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


def get_session() -> Session:
    """A new ``Session`` from the default database.  You must close it."""
    return get_database().session()


def managed_session(database: Database | None = None) -> Transaction:
    """``with managed_session() as session``: a new transaction; commit, or roll back on error."""
    return transaction(database=database or get_database(), propagation=Propagation.REQUIRES_NEW)


def _session_generator(name: str) -> Iterator[Session]:
    try:
        with managed_session() as session:
            yield session
    except GeneratorExit:
        warnings.warn(
            EARLY_EXIT_MESSAGE.format(name=name, loop="for", with_="with"),
            EarlyExitWarning,
            stacklevel=3,
        )
        raise


def get_db_session() -> Iterator[Session]:
    """Yield a session in a transaction: commit on success, roll back on error, always close."""
    yield from _session_generator("get_db_session")


def get_db_transaction() -> Iterator[Session]:
    """Like :func:`get_db_session`; the transaction is begun explicitly before the yield."""
    yield from _session_generator("get_db_transaction")
