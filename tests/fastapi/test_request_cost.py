"""What a request's session costs beyond its SQL.

* An endpoint that takes the session and never uses it sends nothing, checks out no connection
  and (async) makes no trip through SQLAlchemy's greenlet bridge.
* A request starts no more asyncio tasks than the same endpoint on plain SQLAlchemy with a
  ``yield`` session dependency (the cleanup's cancellation shield has no task of its own), and
  sends the same statements.
* A request cancelled while its COMMIT is in flight still commits, returns its connection and
  ends cancelled.
* Bad options fail when the dependency is made, not on every request.

Each scenario runs for the request dependency (``DbSession`` / ``AsyncDbSession``) and the
seed's session generators (``Depends(get_db_session)`` / ``Depends(get_async_db_session)``),
sync and async.
"""

# no ``from __future__ import annotations``: the endpoints' session annotation is chosen at run
# time (request dependency or seed generator), and FastAPI must see the object itself

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio
import greenlet
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import String, event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from repom.async_session import get_async_db_session
from repom.database import (
    AsyncDatabase,
    Database,
    set_async_database,
    set_database,
)
from repom.exceptions import InvalidTransactionOption
from repom.fastapi import (
    AsyncDbSession,
    DbSession,
    async_session_dependency,
    install_exception_handlers,
    session_dependency,
    use_databases,
)
from repom.session import get_db_session
from tests.fastapi._support import Backend, StatementLog, sync_engine_of
from tests.fastapi.test_sessions import client_for
from tests.support import maybe_await


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "cost_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# --------------------------------------------------------------------------- endpoint bodies
# Written once, against a sync Session (async endpoints run them through run_sync).


def read_item(session: Session, item_id: int) -> dict[str, Any]:
    item = session.get(Item, item_id)
    assert item is not None
    return {"id": item.id, "name": item.name}


def add_item(session: Session, name: str) -> dict[str, Any]:
    item = Item(name=name)
    session.add(item)
    session.flush()
    return {"id": item.id}


DEPENDENCIES = ("request", "seed")
SeedSession = Annotated[Session, Depends(get_db_session)]
AsyncSeedSession = Annotated[AsyncSession, Depends(get_async_db_session)]


def build_app(flavour: str, dependency: str, db: Database | AsyncDatabase) -> FastAPI:
    """The routes with repom's request dependency or the seed's generator."""
    app = FastAPI()
    install_exception_handlers(app)
    if flavour == "sync":
        assert isinstance(db, Database)
        use_databases(app, database=db)
        set_database(db)
        sync_session: Any = DbSession if dependency == "request" else SeedSession

        @app.get("/noop")
        def noop(session: sync_session) -> str:
            return "ok"

        @app.get("/items/{item_id}")
        def get_item(item_id: int, session: sync_session) -> Any:
            return read_item(session, item_id)

        @app.post("/items", status_code=201)
        def post_item(name: str, session: sync_session) -> Any:
            return add_item(session, name)

    else:
        assert isinstance(db, AsyncDatabase)
        use_databases(app, async_database=db)
        set_async_database(db)
        async_session: Any = AsyncDbSession if dependency == "request" else AsyncSeedSession

        @app.get("/noop")
        async def noop(session: async_session) -> str:
            return "ok"

        @app.get("/items/{item_id}")
        async def get_item(item_id: int, session: async_session) -> Any:
            return await session.run_sync(read_item, item_id)

        @app.post("/items", status_code=201)
        async def post_item(name: str, session: async_session) -> Any:
            return await session.run_sync(add_item, name)

    return app


def build_plain_app(flavour: str, db: Database | AsyncDatabase) -> FastAPI:
    """The same GET on plain SQLAlchemy: a ``yield`` session that commits before the response."""
    app = FastAPI()
    if flavour == "sync":
        maker = sessionmaker(sync_engine_of(db), expire_on_commit=False)

        def get_sync() -> Iterator[Session]:
            with maker() as session:
                yield session
                session.commit()

        @app.get("/items/{item_id}")
        def get_item(item_id: int, session: Session = Depends(get_sync, scope="function")) -> Any:
            return read_item(session, item_id)

    else:
        assert isinstance(db, AsyncDatabase)
        async_maker = async_sessionmaker(db.engine, expire_on_commit=False)

        async def get_async() -> AsyncIterator[AsyncSession]:
            async with async_maker() as session:
                yield session
                await session.commit()

        @app.get("/items/{item_id}")
        async def get_item(
            item_id: int, session: AsyncSession = Depends(get_async, scope="function")
        ) -> Any:
            return await session.run_sync(read_item, item_id)

    return app


@pytest.fixture(params=DEPENDENCIES)
def dependency(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def setup(backend: Backend, flavour: str) -> Database | AsyncDatabase:
    db = backend.flavour_database(flavour)
    await maybe_await(db.create_all(Base.metadata))
    return db


@contextmanager
def counting_tasks() -> Iterator[list[Any]]:
    """Every asyncio task created on the running loop while the block runs."""
    loop = asyncio.get_running_loop()
    created: list[Any] = []
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)
    try:
        yield created
    finally:
        loop.set_task_factory(previous)


@contextmanager
def counting_greenlet_switches() -> Iterator[list[str]]:
    """Switches into and out of greenlets (SQLAlchemy's async bridge) in this thread."""
    events: list[str] = []

    def trace(kind: str, _args: Any) -> None:
        events.append(kind)

    previous = greenlet.settrace(trace)
    try:
        yield events
    finally:
        greenlet.settrace(previous)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll *condition* (in a worker thread) until it holds or *timeout* seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def counting_checkouts(db: Database | AsyncDatabase) -> Iterator[list[int]]:
    engine = sync_engine_of(db)
    checkouts: list[int] = []

    def checkout(*_args: Any) -> None:
        checkouts.append(1)

    event.listen(engine, "checkout", checkout)
    try:
        yield checkouts
    finally:
        event.remove(engine, "checkout", checkout)


# --------------------------------------------------------------------------- scenarios


async def test_an_untouched_session_costs_no_io(
    backend: Backend, flavour: str, dependency: str
) -> None:
    db = await setup(backend, flavour)
    log = StatementLog().attach(db)
    async with client_for(build_app(flavour, dependency, db)) as client:
        assert (await client.get("/noop")).json() == "ok"  # warm up
        log.clear()
        with counting_checkouts(db) as checkouts, counting_greenlet_switches() as switches:
            response = await client.get("/noop")
    assert response.status_code == 200
    assert log.statements == []  # no BEGIN, no COMMIT, nothing
    assert checkouts == []
    assert switches == []  # begin, commit and close of an unused session are bookkeeping only
    assert sync_engine_of(db).pool.checkedout() == 0


async def test_a_request_starts_no_more_tasks_than_plain_sqlalchemy(
    backend: Backend, flavour: str, dependency: str
) -> None:
    db = await setup(backend, flavour)
    async with client_for(build_app(flavour, dependency, db)) as client:
        assert (await client.post("/items", params={"name": "one"})).status_code == 201

    async def one_get(app: FastAPI) -> tuple[int, list[str]]:
        log = StatementLog().attach(db)
        async with client_for(app) as client:
            assert (await client.get("/items/1")).json() == {"id": 1, "name": "one"}  # warm up
            log.clear()
            with counting_tasks() as created:
                response = await client.get("/items/1")
        assert response.status_code == 200
        return len(created), [s.split(" ")[0] for s in log.statements]

    repom_tasks, repom_sql = await one_get(build_app(flavour, dependency, db))
    plain_tasks, plain_sql = await one_get(build_plain_app(flavour, db))
    assert repom_tasks <= plain_tasks
    assert repom_sql == plain_sql  # the same statements: BEGIN (implicit), SELECT, COMMIT
    assert repom_sql[-1] == "COMMIT" and repom_sql.count("SELECT") == 1


async def test_cancelled_while_committing_still_commits_postgresql(
    pg_backend: Backend, flavour: str, dependency: str
) -> None:
    """The COMMIT is slowed down by a deferred constraint trigger (0.5 s at COMMIT); the request
    is cancelled while it is in flight.  The COMMIT is not interrupted: the row is there, the
    connection is back in the pool (async: when the cancelled request ends), and the request
    ends cancelled."""
    db = await setup(pg_backend, flavour)
    schema = pg_backend.schema
    ddl = [
        f'CREATE FUNCTION "{schema}".slow_commit() RETURNS trigger LANGUAGE plpgsql AS '
        "$$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$",
        f'CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON "{schema}".cost_items '
        f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{schema}".slow_commit()',
    ]
    engine = pg_backend.verify_engine()
    with engine.begin() as conn:
        for statement in ddl:
            conn.execute(text(statement))
    engine.dispose()

    loop = asyncio.get_running_loop()
    committing = asyncio.Event()

    def on_commit(_conn: Any) -> None:  # the COMMIT is about to be sent (any thread)
        loop.call_soon_threadsafe(committing.set)

    event.listen(sync_engine_of(db), "commit", on_commit)
    app = build_app(flavour, dependency, db)
    async with client_for(app) as client:
        task = asyncio.create_task(client.post("/items", params={"name": "slow"}))
        with anyio.fail_after(10):
            await committing.wait()
        await asyncio.sleep(0.15)  # the COMMIT is on the server, sleeping in the trigger
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if flavour == "async":  # back before the cancelled request ended
            assert sync_engine_of(db).pool.checkedout() == 0
    # sync: a worker thread cannot be interrupted, and FastAPI's own wrapper of a sync
    # dependency does not wait for it: its COMMIT may go on after the request ended
    pool = sync_engine_of(db).pool
    assert await anyio.to_thread.run_sync(wait_until, lambda: pool.checkedout() == 0)
    assert pg_backend.rows("SELECT name FROM cost_items") == [("slow",)]


@pytest.mark.parametrize(
    "factory", [session_dependency, async_session_dependency], ids=["sync", "async"]
)
def test_bad_options_fail_when_the_dependency_is_made(factory: Callable[..., Any]) -> None:
    with pytest.raises(InvalidTransactionOption, match="read_only must be True, False or None"):
        factory(read_only="yes")
    with pytest.raises(InvalidTransactionOption, match="invalid isolation level"):
        factory(isolation="SERIALISABLE")
