"""DbSession / AsyncDbSession: one transaction per request, committed before the response is sent.

Every scenario runs for both flavours (a sync endpoint with ``DbSession``, an async one with
``AsyncDbSession``) on SQLite and PostgreSQL.  The endpoint bodies are written once as sync
functions on a sync ``Session``; the async endpoints run them through ``AsyncSession.run_sync``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String, UniqueConstraint
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from repom.database import AsyncDatabase, Database
from repom.exceptions import NotFoundError
from repom.fastapi import (
    AsyncDbSession,
    AsyncReadOnlyDbSession,
    DbSession,
    ReadOnlyDbSession,
    async_session_dependency,
    install_exception_handlers,
    session_dependency,
    use_databases,
)
from repom.transactions import current_session, transaction, transactional
from tests.fastapi._support import Backend, StatementLog, sync_engine_of
from tests.support import maybe_await


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "fa_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class DeferredBase(DeclarativeBase):
    pass


class Code(DeferredBase):
    """PostgreSQL only: uniqueness is checked at COMMIT, not at INSERT."""

    __tablename__ = "fa_codes"
    __table_args__ = (
        UniqueConstraint("code", name="uq_fa_codes_code", deferrable=True, initially="DEFERRED"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20))


# --------------------------------------------------------------------------- endpoint bodies
# Written once, against a sync Session.


def add_item(session: Session, name: str, flush: bool = False) -> dict[str, Any]:
    item = Item(name=name)
    session.add(item)
    if flush:
        session.flush()
    return {"name": name, "id": item.id}


def rename_item(session: Session, item_id: int, name: str) -> dict[str, Any]:
    item = session.get(Item, item_id)
    if item is None:
        raise NotFoundError(f"item {item_id} not found", model="Item", identity=item_id)
    item.name = name  # no flush: the UPDATE goes out with the commit
    return {"id": item_id, "name": name}


def add_then_fail(session: Session, name: str) -> None:
    add_item(session, name, flush=True)
    raise HTTPException(status_code=400, detail="rejected after the insert")


def add_code(session: Session, code: str) -> dict[str, Any]:
    row = Code(code=code)
    session.add(row)
    session.flush()  # the INSERT succeeds: the deferred constraint fires at COMMIT
    return {"id": row.id, "code": code}


def count_items(session: Session) -> int:
    return len(session.query(Item).all())


@transactional
def add_via_service_sync(name: str) -> bool:
    session = current_session()
    session.add(Item(name=name))
    return True


@transactional
async def add_via_service_async(name: str) -> AsyncSession:
    session: AsyncSession = current_session()
    session.add(Item(name=name))
    return session


def build_app(flavour: str, db: Database | AsyncDatabase) -> FastAPI:
    """The same routes, as sync endpoints (DbSession) or async ones (AsyncDbSession)."""
    app = FastAPI()
    install_exception_handlers(app)
    app.state.inside = anyio.Event()
    app.state.release = threading.Event()
    if flavour == "sync":
        assert isinstance(db, Database)
        use_databases(app, database=db)

        @app.post("/items", status_code=201)
        def create(name: str, session: DbSession, flush: bool = False) -> dict[str, Any]:
            return add_item(session, name, flush)

        @app.patch("/items/{item_id}")
        def rename(item_id: int, name: str, session: DbSession) -> dict[str, Any]:
            return rename_item(session, item_id, name)

        @app.post("/items/fail")
        def fail(name: str, session: DbSession) -> None:
            add_then_fail(session, name)

        @app.post("/codes", status_code=201)
        def code(code: str, session: DbSession) -> dict[str, Any]:
            return add_code(session, code)

        @app.post("/service", status_code=201)
        def service(name: str, session: DbSession) -> dict[str, Any]:
            with transaction(session=session):  # make the request's session current here
                add_via_service_sync(name)
                same = current_session() is session
            return {"same_session": same}

        @app.get("/items/count")
        def count(session: ReadOnlyDbSession) -> int:
            return count_items(session)

        @app.post("/items/read-only")
        def write_read_only(name: str, session: ReadOnlyDbSession) -> dict[str, Any]:
            return add_item(session, name, flush=True)

        @app.post("/hold")
        def hold(name: str, session: DbSession) -> None:
            add_item(session, name, flush=True)
            anyio.from_thread.run_sync(app.state.inside.set)
            app.state.release.wait(10)

    else:
        assert isinstance(db, AsyncDatabase)
        use_databases(app, async_database=db)

        @app.post("/items", status_code=201)
        async def create(name: str, session: AsyncDbSession, flush: bool = False) -> Any:
            return await session.run_sync(add_item, name, flush)

        @app.patch("/items/{item_id}")
        async def rename(item_id: int, name: str, session: AsyncDbSession) -> Any:
            return await session.run_sync(rename_item, item_id, name)

        @app.post("/items/fail")
        async def fail(name: str, session: AsyncDbSession) -> None:
            await session.run_sync(add_then_fail, name)

        @app.post("/codes", status_code=201)
        async def code(code: str, session: AsyncDbSession) -> Any:
            return await session.run_sync(add_code, code)

        @app.post("/service", status_code=201)
        async def service(name: str, session: AsyncDbSession) -> dict[str, Any]:
            joined = await add_via_service_async(name)  # REQUIRED joins the request's transaction
            return {"same_session": joined is session}

        @app.get("/items/count")
        async def count(session: AsyncReadOnlyDbSession) -> int:
            return await session.run_sync(count_items)

        @app.post("/items/read-only")
        async def write_read_only(name: str, session: AsyncReadOnlyDbSession) -> Any:
            return await session.run_sync(add_item, name, True)

        @app.post("/hold")
        async def hold(name: str, session: AsyncDbSession) -> None:
            await session.run_sync(add_item, name, True)
            app.state.inside.set()
            await anyio.sleep(30)

    return app


class ResponseStartProbe:
    """ASGI wrapper: runs *probe* at the moment the response starts going to the client."""

    def __init__(self, app: Any, probe: Callable[[], Any]) -> None:
        self.app = app
        self.probe = probe
        self.seen: list[tuple[int, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_and_probe(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((message["status"], self.probe()))
            await send(message)

        await self.app(scope, receive, send_and_probe)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def setup(backend: Backend, flavour: str, **db_options: Any) -> Database | AsyncDatabase:
    db = backend.flavour_database(flavour, **db_options)
    await maybe_await(db.create_all(Base.metadata))
    return db


def names(backend: Backend) -> list[str]:
    return [row[0] for row in backend.rows("SELECT name FROM fa_items ORDER BY name")]


# --------------------------------------------------------------------------- scenarios


async def test_commits_before_the_response_is_sent(backend: Backend, flavour: str) -> None:
    db = await setup(backend, flavour)
    log = StatementLog().attach(db)
    probe = ResponseStartProbe(build_app(flavour, db), lambda: names(backend))
    async with client_for(probe) as client:
        response = await client.post("/items", params={"name": "alpha"})
    assert response.status_code == 201
    # when the first byte of the response left, the row was already committed
    assert probe.seen == [(201, ["alpha"])]
    assert log.count("COMMIT") == 1 and log.count("ROLLBACK") == 0
    assert log.count("SELECT") == 0  # no refresh, no extra round trip


async def test_request_scope_control_commits_after_sending(backend: Backend) -> None:
    """Control for the probe above: FastAPI's default "request" scope commits too late."""
    db = await setup(backend, "async")
    app = FastAPI()
    late = Depends(async_session_dependency(db), scope="request")

    @app.post("/items", status_code=201)
    async def create(name: str, session: AsyncSession = late) -> Any:
        return await session.run_sync(add_item, name)

    probe = ResponseStartProbe(app, lambda: names(backend))
    async with client_for(probe) as client:
        assert (await client.post("/items", params={"name": "late"})).status_code == 201
    assert probe.seen == [(201, [])]  # the client had its 201 before the COMMIT
    assert names(backend) == ["late"]


async def test_unique_violation_at_commit_is_an_error_status(
    backend: Backend, flavour: str
) -> None:
    db = await setup(backend, flavour)
    probe = ResponseStartProbe(build_app(flavour, db), lambda: names(backend))
    async with client_for(probe) as client:
        assert (await client.post("/items", params={"name": "a"})).status_code == 201
        assert (await client.post("/items", params={"name": "b"})).status_code == 201
        log = StatementLog().attach(db)
        # the endpoint returns 200-to-be; the UPDATE (and its violation) happens in COMMIT
        renamed = await client.patch("/items/2", params={"name": "a"})
        # the INSERT is not flushed by the endpoint either
        duplicate = await client.post("/items", params={"name": "a"})
    assert renamed.status_code == 409 and duplicate.status_code == 409
    assert renamed.json()["code"] == "duplicate_key"
    assert [status for status, _ in probe.seen] == [201, 201, 409, 409]
    update = next(i for i, s in enumerate(log.statements) if s.startswith("UPDATE"))
    assert "ROLLBACK" in log.statements[update:] and "COMMIT" not in log.statements[update:]
    assert names(backend) == ["a", "b"]


async def test_deferred_constraint_fails_at_commit_postgresql(
    pg_backend: Backend, flavour: str
) -> None:
    db = await setup(pg_backend, flavour)
    await maybe_await(db.create_all(DeferredBase.metadata))
    probe = ResponseStartProbe(
        build_app(flavour, db), lambda: pg_backend.rows("SELECT count(*) FROM fa_codes")[0][0]
    )
    async with client_for(probe) as client:
        first = await client.post("/codes", params={"code": "X1"})
        second = await client.post("/codes", params={"code": "X1"})
    assert first.status_code == 201
    assert second.status_code == 409, second.text
    assert second.json() == {
        "detail": "a resource with the same unique value already exists",
        "code": "duplicate_key",
        "constraint": "uq_fa_codes_code",
        "table": "fa_codes",
    }
    assert probe.seen == [(201, 1), (409, 1)]


async def test_endpoint_error_rolls_back(backend: Backend, flavour: str) -> None:
    db = await setup(backend, flavour)
    log = StatementLog().attach(db)
    async with client_for(build_app(flavour, db)) as client:
        response = await client.post("/items/fail", params={"name": "ghost"})
    assert response.status_code == 400
    assert names(backend) == []
    assert log.count("INSERT") == 1 and log.count("ROLLBACK") == 1 and log.count("COMMIT") == 0


async def test_not_found_rolls_back_and_maps_to_404(backend: Backend, flavour: str) -> None:
    db = await setup(backend, flavour)
    async with client_for(build_app(flavour, db)) as client:
        response = await client.patch("/items/41", params={"name": "x"})
    assert response.status_code == 404
    assert response.json() == {
        "detail": "item 41 not found",
        "code": "not_found",
        "resource": "Item",
    }


async def test_service_joins_the_request_transaction(backend: Backend, flavour: str) -> None:
    db = await setup(backend, flavour)
    log = StatementLog().attach(db)
    async with client_for(build_app(flavour, db)) as client:
        response = await client.post("/service", params={"name": "svc"})
    assert response.status_code == 201
    assert response.json() == {"same_session": True}
    assert names(backend) == ["svc"]
    assert log.count("COMMIT") == 1  # one transaction: the request's


async def test_read_only_session(backend: Backend, flavour: str) -> None:
    db = await setup(backend, flavour)
    async with client_for(build_app(flavour, db)) as client:
        await client.post("/items", params={"name": "one"})
        assert (await client.get("/items/count")).json() == 1
        refused = await client.post("/items/read-only", params={"name": "two"})
    assert refused.status_code == 500
    assert refused.json() == {"detail": "internal server error", "code": "internal_error"}
    assert names(backend) == ["one"]


async def test_pool_exhausted_is_503_with_retry_after(backend: Backend, flavour: str) -> None:
    db = await setup(backend, flavour, pool_size=1, max_overflow=0, pool_timeout=0.1)
    app = build_app(flavour, db)
    held = await maybe_await(db.engine.connect())  # the only connection
    try:
        async with client_for(app) as client:
            response = await client.post("/items", params={"name": "late", "flush": True})
    finally:
        await maybe_await(held.close())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "pool_exhausted"
    assert sync_engine_of(db).pool.checkedout() == 0
    assert names(backend) == []


async def test_cancelled_request_returns_its_connection(backend: Backend, flavour: str) -> None:
    db = await setup(backend, flavour)
    app = build_app(flavour, db)
    pool = sync_engine_of(db).pool
    async with client_for(app) as client:
        task = asyncio.create_task(client.post("/hold", params={"name": "half"}))
        with anyio.fail_after(10):
            await app.state.inside.wait()
        assert pool.checkedout() == 1  # mid-transaction: the row is inserted, not committed
        task.cancel()
        app.state.release.set()  # a sync endpoint's thread cannot be interrupted; let it end
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pool.checkedout() == 0
    assert names(backend) == []


async def test_one_session_per_request_shared_by_dependencies(
    sqlite_backend: Backend,
) -> None:
    db = await setup(sqlite_backend, "async")
    app = FastAPI()
    use_databases(app, async_database=db)

    async def repository(session: AsyncDbSession) -> AsyncSession:
        return session

    @app.get("/same")
    async def same(session: AsyncDbSession, other: AsyncSession = Depends(repository)) -> bool:
        return session is other

    async with client_for(app) as client:
        first = await client.get("/same")
        assert first.json() is True


def test_dependency_factories_validate_arguments(sqlite_url: str) -> None:
    from repom.transactions import InvalidTransactionOption

    with pytest.raises(TypeError, match="AsyncDatabase"):
        async_session_dependency(Database(sqlite_url))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="repom Database"):
        session_dependency(AsyncDatabase("sqlite+aiosqlite://"))  # type: ignore[arg-type]
    with pytest.raises(InvalidTransactionOption, match="invalid isolation level"):
        session_dependency(isolation="SERIALISABLE; DROP TABLE x")


async def test_cancelled_mid_query_returns_its_connection_postgresql(pg_backend: Backend) -> None:
    from sqlalchemy import text

    db = await setup(pg_backend, "async")
    app = build_app("async", db)

    @app.post("/sleep")
    async def sleep(session: AsyncDbSession) -> None:
        await session.run_sync(add_item, "asleep", True)
        app.state.inside.set()
        await session.execute(text("SELECT pg_sleep(30)"))

    pool = sync_engine_of(db).pool
    async with client_for(app) as client:
        task = asyncio.create_task(client.post("/sleep"))
        with anyio.fail_after(10):
            await app.state.inside.wait()
        await asyncio.sleep(0.1)  # let the pg_sleep statement reach the server
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pool.checkedout() == 0
    assert names(pg_backend) == []
    sleepers = pg_backend.rows(
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
        "AND state = 'active'"
    )
    assert sleepers == [(0,)]
