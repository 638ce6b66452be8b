"""install_exception_handlers: every repom error class maps onto its status, code and headers;
bodies never carry SQL or bound parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import String, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from repom import exceptions as exc
from repom.fastapi import AsyncDbSession, ErrorMapping, install_exception_handlers, use_databases
from repom.transactions import InvalidTransactionOption
from tests.fastapi._support import Backend

SECRET = "s3cr3t-value-4242"


def _db_error(cls: type[exc.DatabaseError], **names: Any) -> exc.DatabaseError:
    return cls(
        "as the driver said it",
        statement=f"INSERT INTO users (email) VALUES ('{SECRET}')",
        params={"email": SECRET},
        **names,
    )


COMMIT_UNKNOWN_DETAIL = (
    "the connection to the database was lost while the change was being committed: it may or "
    "may not have been applied; check the current state before retrying"
)


def _during_commit(error: exc.DatabaseError) -> exc.DatabaseError:
    error.__dict__["during_commit"] = True
    return error


CASES: list[tuple[str, Callable[[], BaseException], int, dict[str, Any], bool]] = [
    (
        "not_found",
        lambda: exc.NotFoundError("Article 7 not found", model="Article", identity=7),
        404,
        {"detail": "Article 7 not found", "code": "not_found", "resource": "Article"},
        False,
    ),
    (
        "stale_version",
        lambda: exc.ConflictError("profile 3 was changed since version 2", model="Profile"),
        409,
        {
            "detail": "profile 3 was changed since version 2",
            "code": "conflict",
            "resource": "Profile",
        },
        False,
    ),
    (
        "duplicate",
        lambda: _db_error(exc.DuplicateKeyError, constraint_name="uq_users_email"),
        409,
        {
            "detail": "a resource with the same unique value already exists",
            "code": "duplicate_key",
            "constraint": "uq_users_email",
        },
        False,
    ),
    (
        "foreign_key",
        lambda: _db_error(exc.ForeignKeyViolationError, table_name="articles"),
        409,
        {"code": "foreign_key_violation", "table": "articles"},
        False,
    ),
    (
        "not_null",
        lambda: _db_error(exc.NotNullViolationError, column_name="email"),
        422,
        {"code": "not_null_violation", "column": "email"},
        False,
    ),
    ("check", lambda: _db_error(exc.CheckViolationError), 422, {"code": "check_violation"}, False),
    (
        "integrity",
        lambda: _db_error(exc.IntegrityViolation),
        409,
        {"code": "integrity_violation"},
        False,
    ),
    (
        "invalid_filter",
        lambda: exc.InvalidFilterError(
            "unknown filter field 'password'", field="password", allowed=["email", "name"]
        ),
        422,
        {
            "detail": "unknown filter field 'password'",
            "code": "invalid_filter",
            "field": "password",
            "allowed": ["email", "name"],
        },
        False,
    ),
    (
        "invalid_cursor",
        lambda: exc.InvalidCursorError("cursor was made for another query"),
        422,
        {"detail": "cursor was made for another query", "code": "invalid_cursor"},
        False,
    ),
    (
        "invalid_value",
        lambda: exc.DataValidationError("naive datetime for a UTCDateTime column"),
        422,
        {"code": "invalid_value"},
        False,
    ),
    ("pool", lambda: exc.PoolExhausted("pool exhausted"), 503, {"code": "pool_exhausted"}, True),
    (
        "connection",
        lambda: _db_error(exc.ConnectionLost),
        503,
        {"code": "database_unavailable"},
        True,
    ),
    (
        "serialization",
        lambda: _db_error(exc.SerializationFailure),
        503,
        {"code": "concurrent_update"},
        True,
    ),
    ("deadlock", lambda: _db_error(exc.DeadlockDetected), 503, {"code": "concurrent_update"}, True),
    (
        "too_many_connections",
        lambda: _db_error(exc.TooManyConnections, sqlstate="53300"),
        503,
        {"code": "too_many_connections"},
        True,
    ),
    (
        "database_unavailable",
        lambda: _db_error(exc.DatabaseUnavailable, sqlstate="3D000"),
        503,
        {"code": "database_unavailable"},
        True,
    ),
    (
        "idle_in_transaction",
        lambda: _db_error(exc.IdleInTransactionTimeout, sqlstate="25P03"),
        503,
        {"code": "database_unavailable"},
        True,
    ),
    (
        "commit_outcome_unknown",
        lambda: _db_error(exc.CommitOutcomeUnknown),
        500,
        {"code": "commit_outcome_unknown", "detail": COMMIT_UNKNOWN_DETAIL},
        False,
    ),
    (
        # a session on an engine repom did not build: the transaction scope marks the
        # ConnectionLost it translated from COMMIT
        "connection_lost_during_commit",
        lambda: _during_commit(_db_error(exc.ConnectionLost)),
        500,
        {"code": "commit_outcome_unknown"},
        False,
    ),
    (
        "timeout",
        lambda: _db_error(exc.StatementTimeout),
        504,
        {"detail": "the database query timed out", "code": "statement_timeout"},
        False,
    ),
    (
        "read_only",
        lambda: _db_error(exc.ReadOnlyViolation),
        500,
        {"detail": "internal server error", "code": "internal_error"},
        False,
    ),
    (
        "transaction_misuse",
        lambda: InvalidTransactionOption("bad option", option="x"),
        500,
        {"detail": "internal server error", "code": "internal_error"},
        False,
    ),
    (
        "raw_pool_timeout",
        lambda: sa_exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached"),
        503,
        {"code": "pool_exhausted"},
        True,
    ),
    (
        # MissingGreenlet raised where no attribute read can be found: the generic fix
        "missing_greenlet",
        lambda: sa_exc.MissingGreenlet("greenlet_spawn has not been called"),
        500,
        {
            "code": "lazy_load_in_async",
            "detail": "an attribute was read but not loaded, and an async session cannot load "
            "it on attribute access (a lazy load); load relationships with the query "
            "(repository options=[...], selectinload) or await session.refresh(obj, "
            "attribute_names=[...])",
        },
        False,
    ),
    (
        "raw_stale_data",
        lambda: StaleDataError("UPDATE matched 0 rows"),
        409,
        {"code": "conflict"},
        False,
    ),
]


def build_app(**options: Any) -> FastAPI:
    app = FastAPI()
    install_exception_handlers(app, **options)
    by_name = {name: factory for name, factory, *_ in CASES}

    @app.get("/raise/{name}")
    async def raise_it(name: str) -> None:
        raise by_name[name]()

    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.parametrize(
    ("name", "status", "expected", "retry"),
    [(name, status, expected, retry) for name, _, status, expected, retry in CASES],
    ids=[case[0] for case in CASES],
)
async def test_mapping(name: str, status: int, expected: dict[str, Any], retry: bool) -> None:
    async with client_for(build_app()) as client:
        response = await client.get(f"/raise/{name}")
    assert response.status_code == status
    body = response.json()
    assert body.items() >= expected.items()
    assert ("retry-after" in response.headers) is retry
    if retry:
        assert response.headers["retry-after"] == "1"
    assert SECRET not in response.text and "INSERT" not in response.text
    assert "as the driver said it" not in response.text


async def test_options_retry_after_names_and_overrides() -> None:
    app = build_app(
        retry_after=7,
        include_names=False,
        overrides={exc.NotFoundError: ErrorMapping(410, "gone", "it is gone")},
    )
    async with client_for(app) as client:
        busy = await client.get("/raise/pool")
        duplicate = await client.get("/raise/duplicate")
        gone = await client.get("/raise/not_found")
    assert busy.headers["retry-after"] == "7"
    assert duplicate.json() == {
        "detail": "a resource with the same unique value already exists",
        "code": "duplicate_key",
    }
    assert (gone.status_code, gone.json()) == (410, {"detail": "it is gone", "code": "gone"})
    with pytest.raises(ValueError, match="retry_after"):
        install_exception_handlers(FastAPI(), retry_after=-1)


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "fa_members"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)


async def test_real_database_errors_leak_no_sql(backend: Backend) -> None:
    """A real unique violation and a real programming error, through the real driver."""
    db = backend.async_database()
    await db.create_all(Base.metadata)
    app = FastAPI()
    use_databases(app, async_database=db)
    install_exception_handlers(app)

    @app.post("/members", status_code=201)
    async def add(email: str, session: AsyncDbSession) -> None:
        session.add(Member(email=email))
        await session.flush()

    @app.get("/broken")
    async def broken(session: AsyncDbSession) -> None:
        await session.execute(
            text("SELECT secret_column FROM no_such_table_h6 WHERE x = :v"), {"v": SECRET}
        )

    async with client_for(app) as client:
        assert (await client.post("/members", params={"email": SECRET})).status_code == 201
        duplicate = await client.post("/members", params={"email": SECRET})
        broken_response = await client.get("/broken")
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "duplicate_key"
    assert broken_response.status_code == 500
    assert broken_response.json() == {"detail": "internal server error", "code": "internal_error"}
    for response in (duplicate, broken_response):
        text_ = json.dumps(response.json())
        assert SECRET not in text_
        assert "INSERT" not in text_ and "SELECT" not in text_ and "no_such_table" not in text_
