"""One error envelope (``{"detail": str, "code": str, ...}``) for everything the application
answers as an error: repom's errors, FastAPI's request validation, ``HTTPException``, a response
that does not validate or serialize, and any other unhandled error.  Server errors are logged
with their traceback; the request's transaction is rolled back (nothing written).

Scenarios that touch the database run for both flavours (a sync endpoint with ``DbSession``, an
async one with ``AsyncDbSession``) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from repom.database import AsyncDatabase, Database
from repom.exceptions import NotFoundError
from repom.fastapi import (
    AsyncDbSession,
    DbSession,
    ErrorMapping,
    install_exception_handlers,
    use_databases,
)
from tests.fastapi._support import Backend

SECRET = "s3cr3t-internals-4242"


class Base(DeclarativeBase):
    pass


class Entry(Base):
    __tablename__ = "fa_env_entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class EntryIn(BaseModel):
    name: str
    rank: int


class Strict(BaseModel):
    count: int


class Opaque:
    """A value pydantic cannot serialize."""


class Loose(BaseModel):
    value: Any


# --------------------------------------------------------------------------- endpoint bodies
# written once against a sync Session; the async endpoints run them through run_sync


def insert(session: Session, name: str) -> None:
    session.add(Entry(name=name))
    session.flush()


def insert_then_crash(session: Session, name: str) -> None:
    insert(session, name)
    raise RuntimeError(f"unexpected failure with {SECRET}")


def build_app(flavour: str, db: Database | AsyncDatabase, **options: Any) -> FastAPI:
    app = FastAPI()
    install_exception_handlers(app, **options)

    @app.get("/items/{item_id}")
    async def item(item_id: int, limit: int = 10) -> dict[str, int]:
        return {"id": item_id, "limit": limit}

    @app.get("/missing")
    async def missing() -> None:
        raise NotFoundError("entry 7 not found", model="Entry", identity=7)

    @app.get("/http/{status}")
    async def http_error(status: int) -> None:
        if status == 401:
            raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
        if status == 400:
            raise HTTPException(400, {"reason": "LOGIN_BAD_CREDENTIALS"})
        raise HTTPException(status)

    if flavour == "sync":
        assert isinstance(db, Database)
        use_databases(app, database=db)

        @app.post("/entries", status_code=201)
        def create(data: EntryIn, session: DbSession) -> dict[str, str]:
            insert(session, data.name)
            return {"name": data.name}

        @app.post("/crash")
        def crash(name: str, session: DbSession) -> None:
            insert_then_crash(session, name)

        @app.post("/bad-response", response_model=Strict)
        def bad_response(name: str, session: DbSession) -> Any:
            insert(session, name)
            return {"count": "many"}

        @app.post("/unserializable", response_model=Loose)
        def unserializable(name: str, session: DbSession) -> Any:
            insert(session, name)
            return {"value": Opaque()}

    else:
        assert isinstance(db, AsyncDatabase)
        use_databases(app, async_database=db)

        @app.post("/entries", status_code=201)
        async def create(data: EntryIn, session: AsyncDbSession) -> dict[str, str]:
            await session.run_sync(insert, data.name)
            return {"name": data.name}

        @app.post("/crash")
        async def crash(name: str, session: AsyncDbSession) -> None:
            await session.run_sync(insert_then_crash, name)

        @app.post("/bad-response", response_model=Strict)
        async def bad_response(name: str, session: AsyncDbSession) -> Any:
            await session.run_sync(insert, name)
            return {"count": "many"}

        @app.post("/unserializable", response_model=Loose)
        async def unserializable(name: str, session: AsyncDbSession) -> Any:
            await session.run_sync(insert, name)
            return {"value": Opaque()}

    return app


async def make_app(backend: Backend, flavour: str, **options: Any) -> FastAPI:
    db = backend.flavour_database(flavour)
    if isinstance(db, AsyncDatabase):
        await db.create_all(Base.metadata)
    else:
        db.create_all(Base.metadata)
    return build_app(flavour, db, **options)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def assert_envelope(body: Any) -> None:
    assert isinstance(body, dict)
    assert isinstance(body["detail"], str) and isinstance(body["code"], str)


def server_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "repom.fastapi" and r.levelno == logging.ERROR]


async def test_request_validation_uses_the_envelope(backend: Backend, flavour: str) -> None:
    app = await make_app(backend, flavour)
    async with client_for(app) as client:
        query = await client.get("/items/3", params={"limit": "many"})
        path = await client.get("/items/three")
        body = await client.post("/entries", json={"name": "x", "rank": "first"})
        missing = await client.post("/entries", json={"rank": 1})
        several = await client.post("/entries", json={})
        repom_error = await client.get("/missing")
    for response in (query, path, body, missing, several):
        assert response.status_code == 422
        assert_envelope(response.json())
        assert response.json()["code"] == "validation_error"
    assert query.json() == {
        "detail": "invalid request: query parameter 'limit': Input should be a valid integer, "
        "unable to parse string as an integer",
        "code": "validation_error",
        "field": "limit",
        "errors": [
            {
                "type": "int_parsing",
                "loc": ["query", "limit"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": "many",
            }
        ],
    }
    assert path.json()["detail"].startswith("invalid request: path parameter 'item_id': ")
    assert body.json()["field"] == "rank"
    assert body.json()["detail"].startswith("invalid request: body field 'rank': ")
    assert missing.json()["detail"] == "invalid request: body field 'name': Field required"
    assert several.json()["detail"].endswith("Field required (and 1 more problem)")
    assert [e["loc"] for e in several.json()["errors"]] == [["body", "name"], ["body", "rank"]]
    # repom's own errors: the same envelope
    assert repom_error.status_code == 404
    assert repom_error.json() == {
        "detail": "entry 7 not found",
        "code": "not_found",
        "resource": "Entry",
    }
    assert backend.rows("SELECT count(*) FROM fa_env_entries") == [(0,)]


async def test_http_exceptions_keep_detail_and_headers(backend: Backend, flavour: str) -> None:
    app = await make_app(backend, flavour)
    async with client_for(app) as client:
        unauthorized = await client.get("/http/401")
        dict_detail = await client.get("/http/400")
        teapot = await client.get("/http/418")
        no_route = await client.get("/nowhere")
        wrong_method = await client.delete("/entries")
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    assert unauthorized.json() == {"detail": "log in first", "code": "unauthorized"}
    assert dict_detail.json() == {
        "detail": {"reason": "LOGIN_BAD_CREDENTIALS"},
        "code": "bad_request",
    }
    assert teapot.json() == {"detail": "I'm a Teapot", "code": "im_a_teapot"}
    assert (no_route.status_code, no_route.json()) == (
        404,
        {"detail": "Not Found", "code": "not_found"},
    )
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"detail": "Method Not Allowed", "code": "method_not_allowed"}
    assert wrong_method.headers["allow"] == "POST"


async def test_unexpected_error_is_json_logged_and_rolled_back(
    backend: Backend, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(backend, flavour)
    caplog.set_level(logging.ERROR, logger="repom.fastapi")
    async with client_for(app) as client:
        response = await client.post("/crash", params={"name": "lost"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "internal server error", "code": "internal_error"}
    assert SECRET not in response.text
    [record] = server_errors(caplog)
    assert record.getMessage() == "POST /crash failed: RuntimeError"
    assert record.exc_info is not None and SECRET in str(record.exc_info[1])
    assert backend.rows("SELECT count(*) FROM fa_env_entries") == [(0,)]


async def test_response_errors_are_json_logged_and_rolled_back(
    backend: Backend, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(backend, flavour)
    caplog.set_level(logging.ERROR, logger="repom.fastapi")
    async with client_for(app) as client:
        invalid = await client.post("/bad-response", params={"name": "a"})
        unserializable = await client.post("/unserializable", params={"name": "b"})
    for response in (invalid, unserializable):
        assert response.status_code == 500
        assert response.json() == {"detail": "internal server error", "code": "internal_error"}
    first, second = server_errors(caplog)
    assert first.getMessage() == (
        "POST /bad-response failed: the response did not validate: response.count: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
    assert second.getMessage() == "POST /unserializable failed: PydanticSerializationError"
    assert first.exc_info is not None and second.exc_info is not None
    assert backend.rows("SELECT count(*) FROM fa_env_entries") == [(0,)]


async def test_overrides_apply_to_validation_errors(sqlite_backend: Backend) -> None:
    from fastapi.exceptions import RequestValidationError

    app = await make_app(
        sqlite_backend,
        "async",
        overrides={RequestValidationError: ErrorMapping(400, "bad_request", "bad request")},
    )
    async with client_for(app) as client:
        response = await client.get("/items/3", params={"limit": "x"})
    assert response.status_code == 400
    body = response.json()
    assert (body["detail"], body["code"], body["field"]) == ("bad request", "bad_request", "limit")
    assert body["errors"][0]["loc"] == ["query", "limit"]
