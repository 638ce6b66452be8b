"""HTTP responses for errors: one JSON envelope for everything an application answers.

:func:`install_exception_handlers` maps every :class:`~repom.exceptions.RepomError` (and any
SQLAlchemy error, translated first), FastAPI's request validation errors, errors while the
response is validated or serialized, ``HTTPException`` and any other unhandled error onto a
status code and one small JSON shape::

    {"detail": "a resource with the same unique value already exists",
     "code": "duplicate_key", "constraint": "uq_users_email"}

    {"detail": "invalid request: query parameter 'limit': Input should be ...",
     "code": "validation_error", "field": "limit", "errors": [{"loc": [...], "msg": ...}]}

``detail`` is always a sentence (for ``HTTPException``, the application's own ``detail``),
``code`` a stable machine-readable name; the other keys are optional names (``field``,
``allowed``, ``constraint``, ``table``, ``column``, ``resource``, ``attribute``) and, for a
request that failed validation, ``errors``: FastAPI's per-field list.

Bodies never contain SQL or bound parameters: the text is either a fixed sentence chosen here or
the message of an error that repom builds for the client (not found, invalid filter, stale
version), and the structured extras are names only (constraint, column, filter field).
"""

from __future__ import annotations

import http
import logging
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import JSONResponse
from fastapi.utils import is_body_allowed_for_status_code
from pydantic_core import PydanticSerializationError
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import MissingGreenlet, NoInspectionAvailable, SQLAlchemyError, StatementError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

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
_INTERNAL = "internal server error"

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
    exc.ReadOnlyViolation: ErrorMapping(500, "internal_error", _INTERNAL),
    exc.TransactionError: ErrorMapping(500, "internal_error", _INTERNAL),
    exc.ConfigurationError: ErrorMapping(500, "internal_error", _INTERNAL),
    exc.RepomError: ErrorMapping(500, "internal_error", _INTERNAL),
    # FastAPI's own: the request did not validate (the detail is built from the errors) ...
    RequestValidationError: ErrorMapping(422, "validation_error"),
    # ... and the endpoint's return value did not (a bug of the service, not of the request)
    ResponseValidationError: ErrorMapping(500, "internal_error", _INTERNAL),
    PydanticSerializationError: ErrorMapping(500, "internal_error", _INTERNAL),
    # an async session asked to load an attribute outside its greenlet bridge (the detail names
    # the attribute and the fix; see lazy_load_detail)
    MissingGreenlet: ErrorMapping(500, "lazy_load_in_async"),
}

_FALLBACK = ErrorMapping(500, "internal_error", _INTERNAL)
_LAZY = MAPPINGS[MissingGreenlet]


def error_mapping(
    error: BaseException, overrides: Mapping[type[BaseException], ErrorMapping] | None = None
) -> ErrorMapping:
    """The mapping for *error*: the most specific class in its MRO wins."""
    kind = MissingGreenlet if _is_missing_greenlet(error) else type(error)
    for cls in kind.__mro__:
        if overrides and cls in overrides:
            return overrides[cls]
        found = MAPPINGS.get(cls)
        if found is not None:
            return found
    return _FALLBACK


# --------------------------------------------------------------------------- lazy loads


@dataclass(frozen=True)
class LazyLoad:
    """An attribute an async session could not load while the response was built."""

    model: str
    attribute: str
    relationship: bool

    @property
    def name(self) -> str:
        return f"{self.model}.{self.attribute}"

    def detail(self) -> str:
        if self.relationship:
            fix = (
                f"load it with the query: options=[{self.attribute!r}] on the repository read, "
                f"create() or update() (or selectinload({self.name})), or "
                f"await session.refresh(obj, attribute_names=[{self.attribute!r}])"
            )
        else:
            fix = (
                "the object was expired (a commit with expire_on_commit=True, or "
                "session.expire()); await session.refresh(obj) before returning it"
            )
        return (
            f"{self.name} was read but not loaded, and an async session cannot load it on "
            f"attribute access (a lazy load); {fix}"
        )


_GENERIC_LAZY = (
    "an attribute was read but not loaded, and an async session cannot load it on attribute "
    "access (a lazy load); load relationships with the query (repository options=[...], "
    "selectinload) or await session.refresh(obj, attribute_names=[...])"
)


def _lazy_load_of(obj: Any, attribute: Any) -> LazyLoad | None:
    if not isinstance(attribute, str):
        return None
    try:
        mapper = sa_inspect(type(obj))
    except NoInspectionAvailable:
        return None
    if attribute not in mapper.attrs:
        return None
    return LazyLoad(mapper.class_.__name__, attribute, attribute in mapper.relationships)


def _lazy_load_in_validation(errors: Sequence[Any]) -> LazyLoad | None:
    """The first attribute whose read raised ``MissingGreenlet`` while pydantic validated the
    response (pydantic reports it as ``get_attribute_error`` on the object it was reading)."""
    for item in errors:
        if not isinstance(item, Mapping) or item.get("type") != "get_attribute_error":
            continue
        context = item.get("ctx") or {}
        text = str(context.get("error", ""))
        # "MissingGreenlet: ..." (SQLAlchemy 2.0), "StatementError: (...MissingGreenlet) ..." (2.1)
        if not text.startswith(MissingGreenlet.__name__) and ".MissingGreenlet)" not in text[:80]:
            continue
        loc = item.get("loc") or ()
        attribute = loc[-1] if loc else None
        found = _lazy_load_of(item.get("input"), attribute)
        if found is not None:
            return found
        # not a mapped attribute (a property that reads one, say): name what pydantic read
        return LazyLoad(type(item.get("input")).__name__, str(attribute or "?"), True)
    return None


def _lazy_load_in_traceback(error: BaseException) -> LazyLoad | None:
    """The outermost mapped-attribute read in *error*'s traceback (``post.author`` in the
    endpoint's code), found on SQLAlchemy's instrumented-attribute frames."""
    tb: types.TracebackType | None = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        if code.co_name in ("__get__", "get") and code.co_filename.replace("\\", "/").endswith(
            "sqlalchemy/orm/attributes.py"
        ):
            owner = frame.f_locals.get("self")
            key = getattr(owner, "key", None)
            cls = getattr(owner, "class_", None)
            if isinstance(key, str) and isinstance(cls, type):
                mapper: Any
                try:
                    mapper = sa_inspect(cls)
                except NoInspectionAvailable:
                    mapper = None
                if mapper is not None and key in mapper.attrs:
                    return LazyLoad(cls.__name__, key, key in mapper.relationships)
        tb = tb.tb_next
    return None


def _is_missing_greenlet(error: BaseException) -> bool:
    """A lazy load in async code: ``MissingGreenlet`` itself (SQLAlchemy 2.0), or the
    ``StatementError`` that wraps it (SQLAlchemy 2.1)."""
    if isinstance(error, MissingGreenlet):
        return True
    return isinstance(error, StatementError) and isinstance(error.orig, MissingGreenlet)


def lazy_load_detail(error: BaseException) -> LazyLoad | None:
    """What was being lazily loaded when *error* (a ``MissingGreenlet``, directly or inside a
    ``ResponseValidationError``) happened, when that can be told."""
    if isinstance(error, ResponseValidationError):
        return _lazy_load_in_validation(error.errors())
    if _is_missing_greenlet(error):
        return _lazy_load_in_traceback(error)
    return None


def _is_lazy_load(error: ResponseValidationError) -> bool:
    return _lazy_load_in_validation(error.errors()) is not None


# --------------------------------------------------------------------------- bodies


_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header"}


def _where(loc: Sequence[Any]) -> str:
    if not loc:
        return "request"
    place, *rest = loc
    names = ".".join(str(part) for part in rest)
    if place == "body":
        return f"body field {names!r}" if names else "body"
    if place in _PLACES and names:
        return f"{_PLACES[place]} {names!r}"
    if place == "cookie" and names:
        return f"cookie {names!r}"
    return ".".join(str(part) for part in loc)


def validation_detail(errors: Sequence[Any]) -> str:
    """One sentence for FastAPI's per-field validation errors."""
    if not errors:
        return "invalid request"
    first = errors[0] if isinstance(errors[0], Mapping) else {}
    text = f"invalid request: {_where(first.get('loc') or ())}: {first.get('msg', 'invalid')}"
    more = len(errors) - 1
    if more:
        text += f" (and {more} more {'problem' if more == 1 else 'problems'})"
    return text


def _field(errors: Sequence[Any]) -> str | None:
    for item in errors:
        loc = item.get("loc") if isinstance(item, Mapping) else None
        if loc and len(loc) > 1:
            names = [part for part in loc[1:] if isinstance(part, str)]
            if names:
                return str(names[-1])
    return None


def error_payload(
    error: BaseException, mapping: ErrorMapping, *, include_names: bool = True
) -> dict[str, Any]:
    """The JSON body for *error* (never SQL, never parameters)."""
    if isinstance(error, RequestValidationError):
        errors = list(error.errors())
        detail = mapping.detail if mapping.detail is not None else validation_detail(errors)
        body: dict[str, Any] = {"detail": detail, "code": mapping.code}
        field = _field(errors)
        if field is not None:
            body["field"] = field
        body["errors"] = jsonable_encoder(errors)
        return body
    if mapping is _LAZY:
        found = lazy_load_detail(error)
        if found is None or not include_names:
            return {"detail": _GENERIC_LAZY, "code": mapping.code}
        return {"detail": found.detail(), "code": mapping.code, "attribute": found.name}
    detail = mapping.detail if mapping.detail is not None else str(error)
    body = {"detail": detail, "code": mapping.code}
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


def http_error_code(status: int) -> str:
    """``404`` -> ``"not_found"``: the code of an ``HTTPException`` with this status."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        return f"http_{status}"
    return "_".join(phrase.lower().replace("-", " ").replace("'", "").split())


# --------------------------------------------------------------------------- logging


def _log(error: BaseException, mapping: ErrorMapping, request: Request) -> None:
    where = f"{request.method} {request.url.path}"
    if mapping is _LAZY:
        found = lazy_load_detail(error)
        what = found.detail() if found is not None else _GENERIC_LAZY
        name = MissingGreenlet.__name__ if _is_missing_greenlet(error) else type(error).__name__
        logger.error("%s failed: %s: %s", where, name, what, exc_info=error)
    elif isinstance(error, ResponseValidationError):
        logger.error(
            "%s failed: the response did not validate: %s",
            where,
            _summary(error.errors()),
            exc_info=error,
        )
    elif mapping.status >= 500 and not mapping.retry_after:
        logger.error("%s failed: %s", where, type(error).__name__, exc_info=error)
    elif mapping.status >= 500:
        logger.warning("%s answered %d: %s", where, mapping.status, error)
    else:
        logger.debug("%s answered %d: %s", where, mapping.status, error)


def _summary(errors: Sequence[Any]) -> str:
    parts = []
    for item in errors:
        if isinstance(item, Mapping):
            loc = ".".join(str(p) for p in item.get("loc") or ())
            parts.append(f"{loc}: {item.get('msg')}")
    return "; ".join(parts) or "(no details)"


# --------------------------------------------------------------------------- installation


def install_exception_handlers(
    app: Any,
    *,
    retry_after: int = 1,
    include_names: bool = True,
    overrides: Mapping[type[BaseException], ErrorMapping] | None = None,
) -> None:
    """Register handlers on *app* that answer every error with one JSON envelope
    (``{"detail": ..., "code": ..., ...}``, see the module docs).

    * ``NotFoundError`` 404; ``DuplicateKeyError``, ``ConflictError`` (stale version), foreign-key
      and other integrity violations 409; ``InvalidFilterError`` / ``InvalidCursorError``, check and
      not-null violations, invalid values 422;
    * FastAPI's ``RequestValidationError`` 422 with code ``validation_error``, a one-sentence
      ``detail``, the first offending ``field`` and FastAPI's per-field list as ``errors``;
    * ``PoolExhausted``, ``TooManyConnections``, ``ConnectionLost``, ``DatabaseUnavailable`` and
      retryable concurrency failures (serialization, deadlock, lock timeout) 503 with
      ``Retry-After: <retry_after>``; ``StatementTimeout`` 504;
    * ``CommitOutcomeUnknown`` (the connection was lost during COMMIT: the write may have been
      applied) 500 with code ``commit_outcome_unknown`` and no ``Retry-After``;
    * an unloaded attribute read by an async endpoint or its response model
      (``MissingGreenlet``) 500 with code ``lazy_load_in_async``, naming the attribute and the
      fix;
    * ``HTTPException`` keeps its status, headers and ``detail`` and gains a ``code`` (``404``
      -> ``not_found``);
    * anything else -- a response that does not validate or serialize included -- 500
      ``internal_error`` with a generic body.  Every 500 is logged (logger ``repom.fastapi``)
      with its traceback.

    ``include_names=False`` leaves constraint/table/column names out of 4xx bodies and the
    attribute out of ``lazy_load_in_async``.  ``overrides`` maps error classes to other
    :class:`ErrorMapping` values.

    Also installs :class:`~repom.fastapi.causality.ReadYourWritesMiddleware` (a client reads its
    own writes even from read replicas).
    """
    if retry_after < 0:
        raise ValueError("retry_after must be >= 0")

    async def handle(request: Request, error: Exception) -> Response:
        # a lazy load stays itself (SQLAlchemy 2.1 wraps it in a StatementError, which
        # translate() would take for a value the driver could not send)
        translated = error if _is_missing_greenlet(error) else exc.translate(error)
        if isinstance(translated, ResponseValidationError) and _is_lazy_load(translated):
            # the response model read an unloaded attribute: answered as the MissingGreenlet
            # that pydantic wrapped
            mapping = (overrides or {}).get(MissingGreenlet, _LAZY)
        else:
            mapping = error_mapping(translated, overrides)
        _log(translated, mapping, request)
        headers = {"Retry-After": str(retry_after)} if mapping.retry_after else None
        return JSONResponse(
            error_payload(translated, mapping, include_names=include_names),
            status_code=mapping.status,
            headers=headers,
        )

    async def handle_http(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        headers = getattr(error, "headers", None)
        if not is_body_allowed_for_status_code(error.status_code):
            return Response(status_code=error.status_code, headers=headers)
        body = {"detail": error.detail, "code": http_error_code(error.status_code)}
        return JSONResponse(body, status_code=error.status_code, headers=headers)

    for error_class in (
        exc.RepomError,
        SQLAlchemyError,
        RequestValidationError,
        ResponseValidationError,
        PydanticSerializationError,
        # the rest: Starlette answers it from its outermost middleware (and re-raises it for
        # the server to see); the body is the envelope
        Exception,
    ):
        app.add_exception_handler(error_class, handle)
    app.add_exception_handler(HTTPException, handle_http)
    if not any(m.cls is ReadYourWritesMiddleware for m in app.user_middleware):
        # read-your-writes across requests when the database has read replicas (a cookie with
        # the client's last commit position; nothing is sent while nobody writes)
        app.add_middleware(ReadYourWritesMiddleware)
