"""The typed errors repom raises, and the one function that maps driver errors onto them.

Every database error that reaches user code through an engine built by repom has already been
translated: SQLAlchemy's ``handle_error`` hook calls :func:`translate` and raises the typed error in
place of the generic one.  The typed errors still *are* the SQLAlchemy errors they replace
(``DuplicateKeyError`` is an ``sqlalchemy.exc.IntegrityError``), so existing ``except`` clauses keep
working, and the driver's own exception is kept as ``orig`` and as ``__cause__``.

Classification uses codes, never message text: the SQLSTATE for PostgreSQL (psycopg and asyncpg),
the extended result code for SQLite, the error number for MySQL/MariaDB.  Names of the constraint,
table and column are attached where the driver reports them.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc

__all__ = [
    "CheckViolationError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionLost",
    "DataValidationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "DuplicateKeyError",
    "ForeignKeyViolationError",
    "IllegalTransactionStateError",
    "IntegrityViolation",
    "InvalidCursorError",
    "InvalidFilterError",
    "LockNotAvailable",
    "NotFoundError",
    "NotNullViolationError",
    "PoolExhausted",
    "ReadOnlyViolation",
    "RepomError",
    "RetryableError",
    "RollbackOnlyError",
    "SerializationFailure",
    "StatementTimeout",
    "TransactionError",
    "TransactionRequiredError",
    "translate",
]


class RepomError(Exception):
    """Base class of every error repom raises on purpose."""


class ConfigurationError(RepomError, ValueError):
    """A configuration value is missing or invalid.  ``variable`` names the setting."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class InvalidFilterError(RepomError, ValueError):
    """A filter, operator, order field, cursor or paging value that is not allowed."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        allowed: Sequence[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.allowed = list(allowed) if allowed is not None else None


class InvalidCursorError(InvalidFilterError):
    """A keyset cursor that was tampered with, truncated or made for another query."""


class NotFoundError(RepomError, LookupError):
    """The row asked for does not exist (or is soft-deleted)."""

    def __init__(self, message: str, *, model: str | None = None, identity: Any = None) -> None:
        super().__init__(message)
        self.model = model
        self.identity = identity


class ConflictError(RepomError, orm_exc.StaleDataError):
    """An optimistic-locking conflict: the row changed (or vanished) since it was read."""

    def __init__(self, message: str, *, model: str | None = None, identity: Any = None) -> None:
        super().__init__(message)
        self.model = model
        self.identity = identity


class PoolExhausted(RepomError, sa_exc.TimeoutError):
    """No connection could be checked out of the pool within ``pool_timeout``."""


class TransactionError(RepomError):
    """Misuse of the transaction API."""


class RollbackOnlyError(TransactionError):
    """An inner scope failed, so the transaction was marked rollback-only and was rolled back."""


class TransactionRequiredError(TransactionError):
    """``Propagation.MANDATORY`` found no transaction to join."""


class IllegalTransactionStateError(TransactionError):
    """A scope asked for something the surrounding transaction cannot give (``NEVER`` inside a
    transaction, a different isolation level, read-write inside read-only, retry when joined)."""


class DataValidationError(RepomError, ValueError):
    """A value cannot be stored by a repom column type (bad UUID, NUL byte, naive datetime, ...)."""


# --------------------------------------------------------------------------- database errors


class DatabaseError(RepomError, sa_exc.DBAPIError):
    """An error reported by the database, translated.

    It keeps SQLAlchemy's attributes (``statement``, ``params``, ``orig``) but its ``str()`` shows
    neither the statement nor the parameters, so it can be logged or returned safely.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        statement: str | None = None,
        params: Any = None,
        orig: BaseException | None = None,
        sqlstate: str | None = None,
        constraint_name: str | None = None,
        table_name: str | None = None,
        column_name: str | None = None,
        connection_invalidated: bool = False,
        ismulti: bool | None = None,
    ) -> None:
        sa_exc.DBAPIError.__init__(
            self,
            statement,
            params,
            orig if orig is not None else Exception(message),
            hide_parameters=True,
            connection_invalidated=connection_invalidated,
            ismulti=ismulti,
        )
        self.message = message
        self.sqlstate = sqlstate
        self.constraint_name = constraint_name
        self.table_name = table_name
        self.column_name = column_name

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> Any:  # pragma: no cover - pickling support
        return (
            _rebuild,
            (
                type(self),
                self.message,
                {
                    "sqlstate": self.sqlstate,
                    "constraint_name": self.constraint_name,
                    "table_name": self.table_name,
                    "column_name": self.column_name,
                },
            ),
        )


def _rebuild(cls: type[DatabaseError], message: str, kw: dict[str, Any]) -> DatabaseError:
    return cls(message, **kw)


class IntegrityViolation(DatabaseError, sa_exc.IntegrityError):
    """A constraint rejected the write."""


class DuplicateKeyError(IntegrityViolation):
    """A unique or primary-key constraint was violated."""


class ForeignKeyViolationError(IntegrityViolation):
    """A foreign-key constraint was violated."""


class NotNullViolationError(IntegrityViolation):
    """A NOT NULL column got NULL."""


class CheckViolationError(IntegrityViolation):
    """A CHECK constraint was violated."""


class RetryableError(DatabaseError, sa_exc.OperationalError):
    """Errors after which running the whole transaction again may succeed."""

    retryable = True


class SerializationFailure(RetryableError):
    """SQLSTATE 40001: the transaction could not be serialized with concurrent ones."""


class DeadlockDetected(RetryableError):
    """SQLSTATE 40P01 (MySQL 1213): the transaction was chosen as a deadlock victim."""


class LockNotAvailable(RetryableError):
    """A lock could not be taken in time (PostgreSQL 55P03, MySQL 1205, SQLite BUSY/LOCKED)."""


class ConnectionLost(RetryableError):
    """The connection to the database was lost (or could not be made)."""


class DatabaseUnavailable(DatabaseError, sa_exc.OperationalError):
    """The database refused the connection for a reason a retry will not fix: it does not exist
    (SQLSTATE 3D000) or the credentials are refused (class 28)."""


class StatementTimeout(DatabaseError, sa_exc.OperationalError):
    """The statement was cancelled by ``statement_timeout`` (SQLSTATE 57014)."""


class ReadOnlyViolation(DatabaseError, sa_exc.InternalError):
    """A write was attempted inside a read-only transaction."""


class InvalidDataError(DatabaseError, sa_exc.DataError):
    """The database refused a value (SQLSTATE class 22: bad encoding, NUL byte, overflow, ...)."""


# --------------------------------------------------------------------------- translation

_PG_CLASSES: dict[str, type[DatabaseError]] = {
    "23505": DuplicateKeyError,
    "23503": ForeignKeyViolationError,
    "23502": NotNullViolationError,
    "23514": CheckViolationError,
    "40001": SerializationFailure,
    "40P01": DeadlockDetected,
    "55P03": LockNotAvailable,
    "57014": StatementTimeout,
    "25006": ReadOnlyViolation,
    "57P01": ConnectionLost,  # admin shutdown
    "57P02": ConnectionLost,  # crash shutdown
    "57P03": ConnectionLost,  # cannot connect now
    "3D000": DatabaseUnavailable,  # database does not exist
}
_PG_PREFIX_CLASSES: dict[str, type[DatabaseError]] = {
    "08": ConnectionLost,
    "28": DatabaseUnavailable,  # invalid authorization
    "23": IntegrityViolation,
    "22": InvalidDataError,
}

# SQLite extended result codes (https://www.sqlite.org/rescode.html)
_SQLITE_CLASSES: dict[int, type[DatabaseError]] = {
    2067: DuplicateKeyError,  # SQLITE_CONSTRAINT_UNIQUE
    1555: DuplicateKeyError,  # SQLITE_CONSTRAINT_PRIMARYKEY
    787: ForeignKeyViolationError,  # SQLITE_CONSTRAINT_FOREIGNKEY
    1299: NotNullViolationError,  # SQLITE_CONSTRAINT_NOTNULL
    275: CheckViolationError,  # SQLITE_CONSTRAINT_CHECK
    19: IntegrityViolation,  # SQLITE_CONSTRAINT
    8: ReadOnlyViolation,  # SQLITE_READONLY (PRAGMA query_only)
    5: LockNotAvailable,  # SQLITE_BUSY
    6: LockNotAvailable,  # SQLITE_LOCKED
    517: LockNotAvailable,  # SQLITE_BUSY_SNAPSHOT
}

# MySQL / MariaDB error numbers
_MYSQL_CLASSES: dict[int, type[DatabaseError]] = {
    1062: DuplicateKeyError,
    1586: DuplicateKeyError,
    1451: ForeignKeyViolationError,
    1452: ForeignKeyViolationError,
    1216: ForeignKeyViolationError,
    1217: ForeignKeyViolationError,
    1048: NotNullViolationError,
    1364: NotNullViolationError,
    3819: CheckViolationError,
    4025: CheckViolationError,  # MariaDB CONSTRAINT_FAILED
    1213: DeadlockDetected,
    1205: LockNotAvailable,
    1792: ReadOnlyViolation,  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    2006: ConnectionLost,
    2013: ConnectionLost,
    2003: ConnectionLost,
    1927: ConnectionLost,
    3024: StatementTimeout,
    1969: StatementTimeout,  # MariaDB max_statement_time
}

_DESCRIPTIONS: dict[type[DatabaseError], str] = {
    DuplicateKeyError: "duplicate key",
    ForeignKeyViolationError: "foreign key violation",
    NotNullViolationError: "not-null violation",
    CheckViolationError: "check constraint violation",
    IntegrityViolation: "integrity constraint violation",
    SerializationFailure: "could not serialize access due to concurrent update",
    DeadlockDetected: "deadlock detected",
    LockNotAvailable: "lock not available",
    ConnectionLost: "connection to the database lost",
    DatabaseUnavailable: "the database is unavailable",
    StatementTimeout: "statement timeout",
    ReadOnlyViolation: "write attempted in a read-only transaction",
    InvalidDataError: "invalid data",
    DatabaseError: "database error",
}

# SQLite reports names only in its message; they are read from there, but never the class.
_SQLITE_NAMES = re.compile(r"constraint failed: ([\w\.]+(?:, [\w\.]+)*)", re.IGNORECASE)


def _driver_error(orig: BaseException | None) -> BaseException | None:
    """The innermost driver exception (asyncpg's own error lies behind SQLAlchemy's adapter)."""
    if orig is None:
        return None
    cause = orig.__cause__
    if cause is not None and type(cause).__module__.startswith("asyncpg"):
        return cause
    return orig


def _pg_details(orig: BaseException) -> dict[str, str | None]:
    diag = getattr(orig, "diag", None)  # psycopg
    if diag is not None:
        return {
            "constraint_name": diag.constraint_name,
            "table_name": diag.table_name,
            "column_name": diag.column_name,
        }
    return {
        "constraint_name": getattr(orig, "constraint_name", None),
        "table_name": getattr(orig, "table_name", None),
        "column_name": getattr(orig, "column_name", None),
    }


def _classify(
    error: sa_exc.DBAPIError,
) -> tuple[type[DatabaseError], dict[str, Any]] | None:
    orig = _driver_error(error.orig)
    if orig is None:
        return None
    details: dict[str, Any] = {}
    # PostgreSQL: psycopg, asyncpg (and SQLAlchemy's asyncpg adapter) expose ``sqlstate``
    sqlstate = getattr(orig, "sqlstate", None) or getattr(error.orig, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        cls = _PG_CLASSES.get(sqlstate) or _PG_PREFIX_CLASSES.get(sqlstate[:2])
        if cls is None:
            return None
        details.update(_pg_details(orig))
        details["sqlstate"] = sqlstate
        return cls, details
    # psycopg refuses some values client-side (a NUL byte in text): no SQLSTATE, still bad data
    if type(orig).__module__.startswith("psycopg") and type(orig).__name__ == "DataError":
        return InvalidDataError, {}
    # SQLite
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        cls = _SQLITE_CLASSES.get(code) or _SQLITE_CLASSES.get(code & 0xFF)
        if cls is None:
            return None
        match = _SQLITE_NAMES.search(str(orig))
        if match:
            first = match.group(1).split(",")[0].strip()
            if "." in first:
                details["table_name"], details["column_name"] = first.split(".", 1)
            else:
                details["constraint_name"] = first
        return cls, details
    # MySQL / MariaDB (PyMySQL, aiomysql): args[0] is the error number
    if type(orig).__module__.startswith(("pymysql", "aiomysql", "MySQLdb")):
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int):
            cls = _MYSQL_CLASSES.get(args[0])
            if cls is None:
                return None
            return cls, {"sqlstate": str(args[0])}
    return None


def _message(cls: type[DatabaseError], details: Mapping[str, Any]) -> str:
    base = cls
    while base not in _DESCRIPTIONS:
        base = base.__mro__[1]  # pragma: no cover - every class is described
    text = _DESCRIPTIONS[base]
    parts = []
    if details.get("constraint_name"):
        parts.append(f"constraint {details['constraint_name']!r}")
    if details.get("table_name"):
        parts.append(f"table {details['table_name']!r}")
    if details.get("column_name"):
        parts.append(f"column {details['column_name']!r}")
    if parts:
        text += " (" + ", ".join(parts) + ")"
    if details.get("sqlstate"):
        text += f" [{details['sqlstate']}]"
    return text


def translate(error: BaseException) -> BaseException:
    """Map *error* onto repom's typed hierarchy; return it unchanged when no mapping applies.

    This is the one translation used everywhere (engine ``handle_error`` hook, transaction
    boundaries, repositories, FastAPI dependencies).
    """
    if isinstance(error, RepomError):
        return error
    if (
        isinstance(error, sa_exc.StatementError)
        and not isinstance(error, sa_exc.DBAPIError)
        and isinstance(error.orig, RepomError)
    ):
        return error.orig  # repom's own validation (a column type refusing a value), unwrapped
    if isinstance(error, sa_exc.DBAPIError):
        found = _classify(error)
        if found is None:
            if error.connection_invalidated or (
                # no statement: the connection itself could not be made (refused, DNS, auth
                # timeouts) -- the drivers give no SQLSTATE for these
                isinstance(error, sa_exc.OperationalError) and error.statement is None
            ):
                found = (ConnectionLost, {})
            else:
                return error
        cls, details = found
        if error.connection_invalidated and not issubclass(cls, ConnectionLost):
            cls = ConnectionLost
        new = cls(
            _message(cls, details),
            statement=error.statement,
            params=error.params,
            orig=error.orig,
            connection_invalidated=error.connection_invalidated,
            ismulti=error.ismulti,
            **details,
        )
        new.__cause__ = error.orig
        return new
    if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)):
        # raised by a driver's connect (asyncpg: ConnectionRefusedError, DNS failure) outside any
        # DBAPI wrapping
        lost = ConnectionLost(f"cannot connect to the database: {type(error).__name__}", orig=error)
        lost.__cause__ = error
        return lost
    if isinstance(error, orm_exc.StaleDataError):
        new_conflict = ConflictError(
            "the row was changed or deleted by another transaction since it was read "
            "(optimistic lock conflict)"
        )
        new_conflict.__cause__ = error
        return new_conflict
    if isinstance(error, sa_exc.TimeoutError):
        new_pool = PoolExhausted(
            "no database connection became available within the pool timeout "
            "(pool exhausted: raise pool_size/max_overflow or shorten transactions)"
        )
        new_pool.__cause__ = error
        return new_pool
    return error
