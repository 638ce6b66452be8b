"""The typed errors repom raises, and the one function that maps driver errors onto them.

Every database error that reaches user code through an engine built by repom has already been
translated: SQLAlchemy's ``handle_error`` hook calls :func:`translate` and raises the typed error in
place of the generic one.  The typed errors still *are* the SQLAlchemy errors they replace
(``DuplicateKeyError`` is an ``sqlalchemy.exc.IntegrityError``), so existing ``except`` clauses keep
working, and the driver's own exception is kept as ``orig`` and as ``__cause__``.

Classification uses codes, never message text: the SQLSTATE for PostgreSQL (psycopg and asyncpg),
the extended result code for SQLite, the error number for MySQL/MariaDB.  Names of the constraint,
table and column are attached where the driver reports them.  The one exception is a failure to
*connect* (:func:`translate_connect_error`): libpq reports the server's FATAL message at connect
time without a SQLSTATE, so for psycopg the (English) message is read to tell a missing database,
refused credentials and a full server apart; and a pooler's "unsupported startup parameter" is
recognised by its message for both drivers (PgBouncer sends it with the generic 08P01).

Errors raised by COMMIT are told apart from the same errors elsewhere: engines built by repom mark
what the dialect's ``do_commit`` raised, and a connection lost (or an unclassified operational
error) *during COMMIT* becomes :class:`CommitOutcomeUnknown` -- the server may have committed
before the connection went away.  A definite refusal at COMMIT (serialization failure, a deferred
constraint) keeps its own type.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc

__all__ = [
    "AfterCommitError",
    "CheckViolationError",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ConflictError",
    "ConnectionLost",
    "DataValidationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "DeletedRowConflict",
    "DuplicateKeyError",
    "ForeignKeyViolationError",
    "IdleInTransactionTimeout",
    "IllegalTransactionStateError",
    "IntegrityViolation",
    "InvalidCursorError",
    "InvalidFilterError",
    "InvalidTransactionOption",
    "IsolationViolation",
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
    "TooManyConnections",
    "TransactionError",
    "TransactionRequiredError",
    "translate",
    "translate_connect_error",
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


class AfterCommitError(TransactionError):
    """An ``on_commit`` callback registered with ``robust=False`` failed.  The transaction WAS
    committed; ``errors`` holds what the failing callbacks raised (every callback ran)."""

    def __init__(self, message: str, *, errors: list[BaseException]) -> None:
        super().__init__(message)
        self.errors = errors


class InvalidTransactionOption(TransactionError, ValueError):
    """An option of ``transaction()`` (or of a retry policy) has a value that is not allowed;
    ``option`` names it.  Also importable from :mod:`repom.transactions`."""

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


class IllegalTransactionStateError(TransactionError):
    """A scope asked for something the surrounding transaction cannot give (``NEVER`` inside a
    transaction, a different isolation level, read-write inside read-only, retry when joined)."""


class IsolationViolation(IllegalTransactionStateError):
    """Test isolation (``repom.testing``): the code under test tried to end or replace the test's
    outer transaction -- a raw ``COMMIT``/``ROLLBACK``/``BEGIN`` statement, or committing the
    outer transaction itself -- which would let its writes escape into the next test."""


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


class DeletedRowConflict(DuplicateKeyError):
    """A unique value collided with a *soft-deleted* row, which reads do not show.

    Raised by the repositories' ``create()``: restore that row (``restore()``) or declare the
    column unique among live rows (:func:`repom.models.unique_live`).
    """


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
    """The connection to the database was lost (or could not be made: refused, timed out, host
    not found, server starting up or shutting down).

    Lost *during COMMIT* it is :class:`CommitOutcomeUnknown` instead, which is not a
    ``ConnectionLost``: a retry loop written as ``except ConnectionLost`` must not repeat a write
    that may have been committed.
    """


class IdleInTransactionTimeout(ConnectionLost):
    """SQLSTATE 25P03: the server ended the session because it sat idle inside a transaction
    longer than ``idle_in_transaction_session_timeout``.

    The transaction was rolled back for certain (the server only ends sessions that are idle, so
    a COMMIT it had received would have been processed) and the connection is gone, so it is a
    retryable :class:`ConnectionLost` -- even when it is reported in answer to COMMIT.  asyncpg
    discards a server message that arrives while no statement is running, so with asyncpg the
    same event surfaces as a plain :class:`ConnectionLost` (or, at COMMIT,
    :class:`CommitOutcomeUnknown`).
    """


class TooManyConnections(RetryableError):
    """SQLSTATE 53300 at connect: the server's ``max_connections`` (or a role's or database's
    ``CONNECTION LIMIT``) is reached.  Retryable: a slot frees up when another client leaves."""


class CommitOutcomeUnknown(DatabaseError, sa_exc.OperationalError):
    """The connection was lost while COMMIT was in flight: the transaction may or may not have
    been committed, and only reading the data again can tell.

    Also CockroachDB's SQLSTATE 40003 (``statement_completion_unknown``), wherever it appears.

    Deliberately *not* a :class:`RetryableError` nor a :class:`ConnectionLost`: running the
    transaction again could apply the write twice.  :func:`repom.retry.is_retryable` returns
    ``True`` for it only with ``idempotent=True``.  It is still an
    ``sqlalchemy.exc.OperationalError``.
    """


class DatabaseUnavailable(DatabaseError, sa_exc.OperationalError):
    """The database refused the connection for a reason a retry will not fix: it does not exist
    (SQLSTATE 3D000), the credentials or the client are refused (class 28), or a setting sent at
    connect time is rejected (classes 22 and 42 while connecting, such as an unknown parameter
    or an invalid ``TimeZone``)."""


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
    "25P03": IdleInTransactionTimeout,  # idle_in_transaction_session_timeout
    "53300": TooManyConnections,  # too many connections (server, role or database limit)
    "40003": CommitOutcomeUnknown,  # statement_completion_unknown (CockroachDB)
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
    IdleInTransactionTimeout: "the server closed the connection: idle in transaction too long "
    "(idle_in_transaction_session_timeout); the transaction was rolled back",
    ConnectionLost: "connection to the database lost",
    TooManyConnections: "too many connections to the database",
    CommitOutcomeUnknown: "the connection was lost during COMMIT: the transaction may or may not "
    "have been committed; check the data before retrying",
    DatabaseUnavailable: "the database is unavailable",
    StatementTimeout: "statement timeout",
    ReadOnlyViolation: "write attempted in a read-only transaction",
    InvalidDataError: "invalid data",
    DatabaseError: "database error",
}

_STATEMENT_COMPLETION_UNKNOWN = (
    "the database could not tell whether the statement completed (statement_completion_unknown): "
    "the transaction may or may not have been committed; check the data before retrying"
)

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
    if base is CommitOutcomeUnknown and details.get("sqlstate") == "40003":
        text = _STATEMENT_COMPLETION_UNKNOWN
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


# --------------------------------------------------------------------------- COMMIT

# set on the driver's exception by the ``do_commit`` wrapper of repom-built engines
_COMMIT_MARK = "_repom_raised_by_commit"


def mark_commit_error(error: BaseException) -> None:
    """Note that *error* was raised by COMMIT (the dialect's ``do_commit``), so that
    :func:`translate` tells a connection lost during COMMIT from one lost elsewhere."""
    try:
        setattr(error, _COMMIT_MARK, True)
    except Exception:  # pragma: no cover - every exception instance has a __dict__
        pass


def _outcome_unknown_at_commit(cls: type[DatabaseError]) -> bool:
    """Whether an error of class *cls* raised by COMMIT leaves its outcome unknown: a lost
    connection does (except 25P03, which guarantees a rollback); a refusal by the server
    (serialization failure, deferred constraint, ...) does not."""
    return issubclass(cls, ConnectionLost) and not issubclass(cls, IdleInTransactionTimeout)


def _as_commit_outcome_unknown(error: DatabaseError) -> CommitOutcomeUnknown:
    new = CommitOutcomeUnknown(
        _message(CommitOutcomeUnknown, {"sqlstate": error.sqlstate}),
        statement=error.statement,
        params=error.params,
        orig=error.orig,
        sqlstate=error.sqlstate,
        connection_invalidated=error.connection_invalidated,
        ismulti=error.ismulti,
    )
    new.__dict__["during_commit"] = True
    new.__cause__ = error.__cause__ if error.__cause__ is not None else error
    return new


def _unsendable_value(orig: BaseException) -> DataValidationError:
    """A parameter the driver could not even encode (a lone surrogate, an integer too large for
    the driver): bad input, not a server fault.  The message never repeats the value."""
    if isinstance(orig, UnicodeEncodeError):
        text = (
            f"a text value cannot be sent to the database: {orig.reason} "
            f"(character at position {orig.start})"
        )
    else:
        text = "a number is too large for the database column type"
    new = DataValidationError(text)
    new.__cause__ = orig
    return new


def translate(error: BaseException, *, during_commit: bool = False) -> BaseException:
    """Map *error* onto repom's typed hierarchy; return it unchanged when no mapping applies.

    This is the one translation used everywhere (engine ``handle_error`` hook, transaction
    boundaries, repositories, FastAPI dependencies).

    ``during_commit=True`` says *error* was raised by COMMIT (engines built by repom mark such
    errors themselves; the flag is for sessions on other engines): a lost connection then becomes
    :class:`CommitOutcomeUnknown`, and the translated error gets ``during_commit = True``.  A
    :class:`ConnectionLost` that already carries ``during_commit = True`` is turned into
    :class:`CommitOutcomeUnknown` as well.
    """
    if isinstance(error, RepomError):
        if isinstance(error, DatabaseError):
            commit = during_commit or bool(error.__dict__.get("during_commit"))
            if commit and _outcome_unknown_at_commit(type(error)):
                return _as_commit_outcome_unknown(error)
            if during_commit:
                error.__dict__["during_commit"] = True
        return error
    if (
        isinstance(error, sa_exc.StatementError)
        and not isinstance(error, sa_exc.DBAPIError)
        and isinstance(error.orig, RepomError)
    ):
        return error.orig  # repom's own validation (a column type refusing a value), unwrapped
    if (
        isinstance(error, sa_exc.StatementError)
        and not isinstance(error, sa_exc.DBAPIError)
        and isinstance(error.orig, UnicodeEncodeError | OverflowError)
    ):
        return _unsendable_value(error.orig)
    if isinstance(error, sa_exc.DBAPIError):
        commit = during_commit or bool(getattr(error.orig, _COMMIT_MARK, False))
        found = _classify(error)
        if found is None:
            if commit and (
                error.connection_invalidated
                or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
            ):
                # COMMIT failed without a definite answer from the server
                found = (CommitOutcomeUnknown, {})
            elif error.connection_invalidated or (
                # no statement: the connection itself could not be made (refused, DNS, auth
                # timeouts) -- the drivers give no SQLSTATE for these
                isinstance(error, sa_exc.OperationalError) and error.statement is None
            ):
                found = (ConnectionLost, {})
            else:
                return error
        cls, details = found
        if error.connection_invalidated and not issubclass(
            cls, ConnectionLost | CommitOutcomeUnknown
        ):
            cls = ConnectionLost
        if commit and _outcome_unknown_at_commit(cls):
            cls = CommitOutcomeUnknown
        new = cls(
            _message(cls, details),
            statement=error.statement,
            params=error.params,
            orig=error.orig,
            connection_invalidated=error.connection_invalidated,
            ismulti=error.ismulti,
            **details,
        )
        if commit:
            new.__dict__["during_commit"] = True
        new.__cause__ = error.orig
        return new
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror) or (
        _raw_asyncpg_connect_error(error)
    ):
        # raised by a driver's connect outside any DBAPI wrapping (asyncpg's own errors,
        # ConnectionRefusedError, a DNS failure); engines built by repom translate these where
        # the connection is made already
        return translate_connect_error(error)
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


# --------------------------------------------------------------------------- connecting

# libpq hands psycopg the server's FATAL message at connect time as text only (no SQLSTATE):
# the message is read for these cases, and for nothing else.  Servers configured with a
# non-English lc_messages send translated text; those failures stay ConnectionLost.
_CONNECT_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r'database "[^"]*" does not exist'), "3D000"),
    (re.compile(r'role "[^"]*" does not exist'), "28000"),
    (re.compile(r"password authentication failed|no password supplied"), "28P01"),
    (re.compile(r"authentication failed|no pg_hba\.conf entry"), "28000"),
    (
        re.compile(
            r"too many clients already|remaining connection slots are reserved"
            r"|too many connections for|no more connections allowed"
        ),
        "53300",
    ),
    (re.compile(r"permission denied for database"), "42501"),
    (re.compile(r"unrecognized configuration parameter"), "42704"),
    (re.compile(r"invalid value for parameter"), "22023"),
    (re.compile(r"the database system is (starting up|shutting down|in recovery mode)"), "57P03"),
)
# PgBouncer (and other poolers) refusing a parameter of the startup packet; it sends the generic
# 08P01, so this one is recognised by its message whatever the driver
_STARTUP_PARAMETER = re.compile(r"unsupported startup parameter(?::\s*([\w.\-]+))?", re.IGNORECASE)

_CONNECT_REASONS: dict[str, str] = {
    "3D000": "the database does not exist",
    "28": "the server refused the role, the password or the client",
    "22": "the server rejected a connection setting",
    "42": "the server rejected a connection setting",
    "53300": "too many connections",
    "57P03": "the server is starting up or shutting down",
}


def _is_driver_class(error: BaseException, module: str, name: str) -> bool:
    return any(
        klass.__name__ == name and klass.__module__.startswith(module)
        for klass in type(error).__mro__
    )


def _raw_asyncpg_connect_error(error: BaseException) -> bool:
    """An asyncpg exception that SQLAlchemy did not wrap and that can only come from connecting
    (SQLAlchemy wraps asyncpg's errors from statements; other raw ones pass unchanged)."""
    if not type(error).__module__.startswith("asyncpg"):
        return False
    sqlstate = getattr(error, "sqlstate", None)
    if not isinstance(sqlstate, str) or len(sqlstate) != 5:
        return _is_driver_class(error, "asyncpg", "ClientConfigurationError")
    return sqlstate == "3D000" or sqlstate[:2] in ("08", "28", "53", "57")


def _connect_class(sqlstate: str) -> type[DatabaseError]:
    if sqlstate == "53300":
        return TooManyConnections
    if sqlstate == "3D000" or sqlstate[:2] in ("28", "22", "42"):
        return DatabaseUnavailable
    return ConnectionLost


def _startup_parameter_error(parameter: str | None, text: str) -> ConfigurationError:
    name = parameter or "<the parameter named above>"
    return ConfigurationError(
        f"the connection pooler rejected a startup parameter ({text}): this looks like "
        "PgBouncer. Set REPOM_POOLER=pgbouncer (RepomConfig(pooler='pgbouncer')): repom then "
        "sends only the parameters a pooler accepts, applies statement_timeout per transaction "
        "and uses no named prepared statements. (Without it, repom sends TimeZone and "
        "statement_timeout in the startup packet -- libpq 'options' with psycopg, "
        "server_settings with asyncpg; adding them to PgBouncer's ignore_startup_parameters "
        f"({name}) silently drops them.)",
        variable="REPOM_POOLER",
    )


def translate_connect_error(error: BaseException) -> BaseException:
    """Map an exception raised while *connecting* to PostgreSQL (by psycopg, by asyncpg, or by
    the socket layer underneath) onto repom's types; anything else is returned unchanged.

    * 3D000 (no such database), class 28 (role, password, ``pg_hba.conf``) and a rejected
      startup setting (classes 22/42) -> :class:`DatabaseUnavailable`, not retryable;
    * 53300 (server, role or database connection limit) -> :class:`TooManyConnections`;
    * a refused or timed-out connection, an unknown host, a server starting up or shutting
      down, any other failure -> :class:`ConnectionLost`;
    * a pooler's "unsupported startup parameter" -> :class:`ConfigurationError` naming the fix.

    psycopg reports most of these without a SQLSTATE (libpq passes the server's FATAL message
    as text), so for psycopg the message is read when the SQLSTATE is missing.
    """
    if isinstance(error, RepomError):
        return error
    raw = _driver_error(error.orig) if isinstance(error, sa_exc.DBAPIError) else error
    if raw is None:  # pragma: no cover - a DBAPIError always has orig
        return error
    module = type(raw).__module__
    text = " ".join(str(raw).split())
    sqlstate: str | None = None
    if module.startswith(("psycopg", "asyncpg")):
        match = _STARTUP_PARAMETER.search(text)
        if match:
            config_error = _startup_parameter_error(match.group(1), text)
            config_error.__cause__ = raw
            return config_error
        code = getattr(raw, "sqlstate", None)
        if isinstance(code, str) and len(code) == 5:
            sqlstate = code
        elif module.startswith("psycopg"):
            if not _is_driver_class(raw, "psycopg", "OperationalError"):
                return error  # e.g. ProgrammingError for a malformed conninfo string
            sqlstate = next((s for pattern, s in _CONNECT_MESSAGES if pattern.search(text)), None)
        elif _is_driver_class(raw, "asyncpg", "ClientConfigurationError"):
            config_error = ConfigurationError(f"invalid connection settings: {text}")
            config_error.__cause__ = raw
            return config_error
    elif not isinstance(raw, OSError | TimeoutError):
        return error
    cls = _connect_class(sqlstate) if sqlstate is not None else ConnectionLost
    reason = None
    if sqlstate is not None:
        reason = _CONNECT_REASONS.get(sqlstate) or _CONNECT_REASONS.get(sqlstate[:2])
    message = "cannot connect to the database"
    if reason:
        message += f": {reason}"
    if sqlstate:
        message += f" [{sqlstate}]"
    message += f" ({text or type(raw).__name__})"
    new = cls(message, orig=raw, sqlstate=sqlstate)
    new.__cause__ = raw
    return new
