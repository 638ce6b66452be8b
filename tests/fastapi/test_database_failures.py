"""Real database failures through a FastAPI app (in-process ASGI transport), sync endpoints with
``DbSession`` and async ones with ``AsyncDbSession`` (psycopg and asyncpg).

* A commit whose outcome is unknown answers 500 ``commit_outcome_unknown`` without
  ``Retry-After``: the write may have been applied (here, once, it was), so inviting the client
  to repeat it could apply it twice.
* Connect failures answer typed JSON, never a plain-text 500: a missing database and a refused
  port ``database_unavailable``, a full server ``too_many_connections``, both 503 with
  ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import String, make_url, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from repom.database import AsyncDatabase, Database
from repom.fastapi import (
    AsyncDbSession,
    AsyncReadOnlyDbSession,
    DbSession,
    ReadOnlyDbSession,
    install_exception_handlers,
    use_databases,
)
from repom.urls import convert_to_async_uri
from tests.fastapi._support import Backend
from tests.support.network import (
    CommitDropProxy,
    connection_limited_role,
    free_port,
    terminate_backend,
)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "fa_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)


COMMIT_UNKNOWN = {
    "detail": "the connection to the database was lost while the change was being committed: "
    "it may or may not have been applied; check the current state before retrying",
    "code": "commit_outcome_unknown",
}


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def place_order(session: Session, ref: str, before_commit: Callable[[Session], None]) -> Any:
    session.add(Order(ref=ref))
    session.flush()
    before_commit(session)
    return {"ref": ref}


def order_app(
    flavour: str, db: Database | AsyncDatabase, before_commit: Callable[[Session], None]
) -> FastAPI:
    """``POST /orders`` (the request's session, committed by the dependency) and
    ``POST /orders/explicit`` (the endpoint's own session and its own ``commit()``)."""
    app = FastAPI()
    install_exception_handlers(app)
    if flavour == "sync":
        assert isinstance(db, Database)
        use_databases(app, database=db)

        @app.post("/orders", status_code=201)
        def create(ref: str, session: DbSession) -> Any:
            return place_order(session, ref, before_commit)

        @app.post("/orders/explicit", status_code=201)
        def create_explicit(ref: str) -> Any:
            with db.session() as session:
                result = place_order(session, ref, before_commit)
                session.commit()
            return result

    else:
        assert isinstance(db, AsyncDatabase)
        use_databases(app, async_database=db)

        @app.post("/orders", status_code=201)
        async def create(ref: str, session: AsyncDbSession) -> Any:
            return await session.run_sync(place_order, ref, before_commit)

        @app.post("/orders/explicit", status_code=201)
        async def create_explicit(ref: str) -> Any:
            async with db.session() as session:
                result = await session.run_sync(place_order, ref, before_commit)
                await session.commit()
            return result

    return app


def assert_commit_outcome_unknown(response: httpx.Response) -> None:
    assert response.status_code == 500
    assert response.json() == COMMIT_UNKNOWN
    assert "retry-after" not in response.headers


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_commit_applied_but_answer_lost_is_500_without_retry_after(
    pg_backend: Backend, flavour: str
) -> None:
    """The dependency's COMMIT reaches the server and is applied; the answer is lost."""
    pg_backend.database().create_all(Base.metadata)
    url = make_url(pg_backend.sync_url)
    with CommitDropProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        schema = pg_backend.schema
        db: Database | AsyncDatabase
        if flavour == "async":
            db = AsyncDatabase(
                convert_to_async_uri(proxied),
                connect_args={"ssl": False, "server_settings": {"search_path": schema}},
            )
        else:
            db = Database(
                proxied, connect_args={"sslmode": "disable", "options": f"-csearch_path={schema}"}
            )
        pg_backend._made.append(db)
        app = order_app(flavour, db, lambda session: proxy.arm())
        async with client_for(app) as client:
            response = await client.post("/orders", params={"ref": "order-1"})
        assert proxy.dropped.is_set()
    assert_commit_outcome_unknown(response)
    assert pg_backend.rows("SELECT ref FROM fa_orders") == [("order-1",)]  # it was applied


@pytest.mark.parametrize("route", ["/orders", "/orders/explicit"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_connection_killed_before_commit_is_500_without_retry_after(
    pg_backend: Backend, flavour: str, route: str
) -> None:
    pg_backend.database().create_all(Base.metadata)
    admin = pg_backend.verify_engine()

    def kill(session: Session) -> None:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        terminate_backend(admin, pid)

    try:
        app = order_app(flavour, pg_backend.flavour_database(flavour), kill)
        async with client_for(app) as client:
            response = await client.post(route, params={"ref": "order-1"})
    finally:
        admin.dispose()
    assert_commit_outcome_unknown(response)
    assert pg_backend.rows("SELECT ref FROM fa_orders") == []


# --------------------------------------------------------------------------- connect failures


def ping_app(flavour: str, db: Database | AsyncDatabase) -> FastAPI:
    """``/ping`` connects at the endpoint's first statement, ``/ping/read-only`` at BEGIN (in
    the dependency, since the read-only transaction has options to set)."""
    app = FastAPI()
    install_exception_handlers(app)
    if flavour == "sync":
        assert isinstance(db, Database)
        use_databases(app, database=db)

        @app.get("/ping")
        def ping(session: DbSession) -> int:
            return int(session.execute(text("SELECT 1")).scalar_one())

        @app.get("/ping/read-only")
        def ping_read_only(session: ReadOnlyDbSession) -> int:
            return int(session.execute(text("SELECT 1")).scalar_one())

    else:
        assert isinstance(db, AsyncDatabase)
        use_databases(app, async_database=db)

        @app.get("/ping")
        async def ping(session: AsyncDbSession) -> int:
            return int((await session.execute(text("SELECT 1"))).scalar_one())

        @app.get("/ping/read-only")
        async def ping_read_only(session: AsyncReadOnlyDbSession) -> int:
            return int((await session.execute(text("SELECT 1"))).scalar_one())

    return app


def flavour_db(flavour: str, url: Any) -> Database | AsyncDatabase:
    rendered = url.render_as_string(hide_password=False)
    if flavour == "async":
        return AsyncDatabase(convert_to_async_uri(rendered))
    return Database(rendered)


async def ping_responses(flavour: str, db: Database | AsyncDatabase) -> list[httpx.Response]:
    try:
        async with client_for(ping_app(flavour, db)) as client:
            return [await client.get("/ping"), await client.get("/ping/read-only")]
    finally:
        if isinstance(db, AsyncDatabase):
            await db.dispose()
        else:
            db.dispose()


@pytest.mark.parametrize(
    ("case", "code"),
    [("missing_database", "database_unavailable"), ("refused_port", "database_unavailable")],
)
@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_connect_failures_are_typed_responses(
    pg_url: str, flavour: str, case: str, code: str
) -> None:
    url = make_url(pg_url)
    if case == "missing_database":
        url = url.set(database="repom_missing_db_h6")
    else:
        url = url.set(host="127.0.0.1", port=free_port())
    for response in await ping_responses(flavour, flavour_db(flavour, url)):
        assert response.status_code == 503
        assert response.json() == {
            "detail": "the database is unavailable; retry later",
            "code": code,
        }
        assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_too_many_connections_is_503_with_retry_after(pg_url: str, flavour: str) -> None:
    admin_url = make_url(pg_url)
    with connection_limited_role(admin_url) as role:
        url = admin_url.set(username=role)
        holder = psycopg.connect(
            host=url.host, port=url.port or 5432, user=role, dbname=url.database
        )
        try:
            responses = await ping_responses(flavour, flavour_db(flavour, url))
        finally:
            holder.close()
    for response in responses:
        assert response.status_code == 503
        assert response.json() == {
            "detail": "the service is temporarily unable to handle the request; retry later",
            "code": "too_many_connections",
        }
        assert response.headers["retry-after"] == "1"
