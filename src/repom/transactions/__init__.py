"""Transactions: propagation, savepoints, read-only, isolation, after-commit hooks, retry.

See :func:`transaction` for the options and ``docs/transactions.md`` for the semantics.
"""

from repom.exceptions import InvalidTransactionOption
from repom.transactions.core import (
    IsolationLevel,
    Propagation,
    Transaction,
    current_session,
    in_transaction,
    on_commit,
    transaction,
    transactional,
)
from repom.transactions.manager import SessionManager, TransactionManager

__all__ = [
    "InvalidTransactionOption",
    "IsolationLevel",
    "Propagation",
    "SessionManager",
    "Transaction",
    "TransactionManager",
    "current_session",
    "in_transaction",
    "on_commit",
    "transaction",
    "transactional",
]
