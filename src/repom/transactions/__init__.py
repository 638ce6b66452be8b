"""Transactions: propagation, savepoints, read-only, isolation, after-commit hooks, retry.

See :func:`transaction` for the options and ``docs/transactions.md`` for the semantics.
"""

from repom.exceptions import InvalidTransactionOption
from repom.transactions.core import (
    Causality,
    IsolationLevel,
    Propagation,
    Transaction,
    causality,
    current_session,
    in_transaction,
    on_commit,
    transaction,
    transactional,
    use_causality,
)
from repom.transactions.manager import SessionManager, TransactionManager

__all__ = [
    "Causality",
    "InvalidTransactionOption",
    "IsolationLevel",
    "Propagation",
    "SessionManager",
    "Transaction",
    "TransactionManager",
    "causality",
    "current_session",
    "in_transaction",
    "on_commit",
    "transaction",
    "transactional",
    "use_causality",
]
