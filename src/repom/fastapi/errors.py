"""HTTP responses for repom's typed errors.

:func:`install_exception_handlers` maps every :class:`~repom.exceptions.RepomError` (and any
SQLAlchemy error, translated first) onto a status code and a small JSON body::

    {"detail": "a resource with the same unique value already exists",
     "code": "duplicate_key", "constraint": "uq_users_email"}

Bodies never contain SQL or bound parameters: the text is either a fixed sentence chosen here or
the message of an error that repom builds for the client (not found, invalid filter, stale
version), and the structured extras are names only (constraint, column, filter field).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from repom import exceptions as exc
from repom.fastapi.causality import ReadYourWritesMiddleware

__all__ = [
    "ErrorMapping",
    "error_mapping",
    "error_payload",
    "install_exception_handlers",
]

logger = logging.getLogger("repom.fastapi")


@dataclass(frozen=True)
class ErrorMapping:
    """How one error class becomes a response.

    ``detail=None`` means the error's own message is shown (only for errors whose message repom
    writes for the client); otherwise the fixed sentence is.
    """

    status: int
    code: str
    detail: str | None = None
    retry_after: bool = False


_BUSY = "the service is temporarily unable to handle the request; retry later"

MAPPINGS: dict[type[BaseException], ErrorMapping] = {
    exc.NotFoundError: ErrorMapping(404, "not_found"),
    exc.ConflictError: ErrorMapping(409, "conflict"),
    exc.DeletedRowConflict: ErrorMapping(
        409, "duplicate_key_deleted", "a deleted resource still holds the same unique value"
    ),
    exc.DuplicateKeyError: ErrorMapping(
        409, "duplicate_key", "a resource with the same unique value already exists"
    ),
    exc.ForeignKeyViolationError: ErrorMapping(
        409,
        "foreign_key_violation",
        "the request refers to a resource that does not exist, or removes one still in use",
    ),
    exc.NotNullViolationError: ErrorMapping(
        422, "not_null_violation", "a required value is missing"
    ),
    exc.CheckViolationError: ErrorMapping(
        422, "check_violation", "a value is outside the range the data allows"
    ),
    exc.IntegrityViolation: ErrorMapping(
        409, "integrity_violation", "the request conflicts with the current state of the data"
    ),
    exc.InvalidDataError: ErrorMapping(422, "invalid_data", "the database rejected a value"),
    exc.DataValidationError: ErrorMapping(422, "invalid_value"),
    exc.InvalidCursorError: ErrorMapping(422, "invalid_cursor"),
    exc.InvalidFilterError: ErrorMapping(422, "invalid_filter"),
    exc.PoolExhausted: ErrorMapping(503, "pool_exhausted", _BUSY, retry_after=True),
    exc.TooManyConnections: ErrorMapping(503, "too_many_connections", _BUSY, retry_after=True),
    # no Retry-After: the write may have been applied, and repeating it blindly could apply it
    # twice; a 5xx the client does not retry automatically (not 502/503/504)
    exc.CommitOutcomeUnknown: ErrorMapping(
        500,
        "commit_outcome_unknown",
        "the connection to the database was lost while the change was being committed: it may "
        "or may not have been applied; check the current state before retrying",
    ),
    exc.ConnectionLost: ErrorMapping(
        503, "database_unavailable", "the database is unavailable; retry later", retry_after=True
    ),
    exc.DatabaseUnavailable: ErrorMapping(
        503, "database_unavailable", "the database is unavailable; retry later", retry_after=True
    ),
    exc.RetryableError: ErrorMapping(
        503,
        "concurrent_update",
        "the request conflicted with concurrent requests; retry it",
        retry_after=True,
    ),
    exc.StatementTimeout: ErrorMapping(504, "statement_timeout", "the database query timed out"),
    exc.ReadOnlyViolation: ErrorMapping(500, "internal_error", "internal server error"),
    exc.TransactionError: ErrorMapping(500, "internal_error", "internal server error"),
    exc.ConfigurationError: ErrorMapping(500, "internal_error", "internal server error"),
    exc.RepomError: ErrorMapping(500, "internal_error", "internal server error"),
}

_FALLBACK = ErrorMapping(500, "internal_error", "internal server error")


def error_mapping(
    error: BaseException, overrides: Mapping[type[BaseException], ErrorMapping] | None = None
) -> ErrorMapping:
    """The mapping for *error*: the most specific class in its MRO wins."""
    for cls in type(error).__mro__:
        if overrides and cls in overrides:
            return overrides[cls]
        found = MAPPINGS.get(cls)
        if found is not None:
            return found
    return _FALLBACK


def error_payload(
    error: BaseException, mapping: ErrorMapping, *, include_names: bool = True
) -> dict[str, Any]:
    """The JSON body for *error* (never SQL, never parameters)."""
    detail = mapping.detail if mapping.detail is not None else str(error)
    body: dict[str, Any] = {"detail": detail, "code": mapping.code}
    if not include_names or mapping.status >= 500:
        return body
    if isinstance(error, exc.InvalidFilterError):
        if error.field is not None:
            body["field"] = error.field
        if error.allowed is not None:
            body["allowed"] = list(error.allowed)
    elif isinstance(error, exc.IntegrityViolation):
        for key, value in (
            ("constraint", error.constraint_name),
            ("table", error.table_name),
            ("column", error.column_name),
        ):
            if value:
                body[key] = value
    elif isinstance(error, exc.NotFoundError | exc.ConflictError) and error.model:
        body["resource"] = error.model
    return body


def _log(error: BaseException, mapping: ErrorMapping, request: Request) -> None:
    where = f"{request.method} {request.url.path}"
    if mapping.status >= 500 and not mapping.retry_after:
        logger.error("%s failed: %s", where, type(error).__name__, exc_info=error)
    elif mapping.status >= 500:
        logger.warning("%s answered %d: %s", where, mapping.status, error)
    else:
        logger.debug("%s answered %d: %s", where, mapping.status, error)


def install_exception_handlers(
    app: Any,
    *,
    retry_after: int = 1,
    include_names: bool = True,
    overrides: Mapping[type[BaseException], ErrorMapping] | None = None,
) -> None:
    """Register handlers on *app* for :class:`~repom.exceptions.RepomError` and SQLAlchemy errors.

    * ``NotFoundError`` 404; ``DuplicateKeyError``, ``ConflictError`` (stale version), foreign-key
      and other integrity violations 409; ``InvalidFilterError`` / ``InvalidCursorError``, check and
      not-null violations, invalid values 422;
    * ``PoolExhausted``, ``TooManyConnections``, ``ConnectionLost``, ``DatabaseUnavailable`` and
      retryable concurrency failures (serialization, deadlock, lock timeout) 503 with
      ``Retry-After: <retry_after>``; ``StatementTimeout`` 504;
    * ``CommitOutcomeUnknown`` (the connection was lost during COMMIT: the write may have been
      applied) 500 with code ``commit_outcome_unknown`` and no ``Retry-After``;
    * anything else 500 with a generic body (the error is logged with its traceback).

    ``include_names=False`` leaves constraint/table/column names out of 4xx bodies.  ``overrides``
    maps error classes to other :class:`ErrorMapping` values.

    Also installs :class:`~repom.fastapi.causality.ReadYourWritesMiddleware` (a client reads its
    own writes even from read replicas).
    """
    if retry_after < 0:
        raise ValueError("retry_after must be >= 0")

    async def handle(request: Request, error: Exception) -> JSONResponse:
        translated = exc.translate(error)
        mapping = error_mapping(translated, overrides)
        _log(translated, mapping, request)
        headers = {"Retry-After": str(retry_after)} if mapping.retry_after else None
        return JSONResponse(
            error_payload(translated, mapping, include_names=include_names),
            status_code=mapping.status,
            headers=headers,
        )

    app.add_exception_handler(exc.RepomError, handle)
    app.add_exception_handler(SQLAlchemyError, handle)
    if not any(m.cls is ReadYourWritesMiddleware for m in app.user_middleware):
        # read-your-writes across requests when the database has read replicas (a cookie with
        # the client's last commit position; nothing is sent while nobody writes)
        app.add_middleware(ReadYourWritesMiddleware)
