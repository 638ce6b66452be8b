"""Small pytest projects that the tests in this directory run with ``pytester``.

Each project has a model, a FastAPI app with a sync and an async endpoint (repom's ``DbSession`` /
``AsyncDbSession``), and ordered test files.  The scenario file is written once: its tests are
``async def`` and go through ``helpers.py``, which is generated for one flavour (sync or async) and
hides only how a call is made (``with``/``async with``, a plain call or an ``await``).
"""

from __future__ import annotations

import textwrap
import uuid

MODELS = """
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "rt6_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
"""

APP = """
from fastapi import FastAPI

from models import Item
from repom.fastapi import AsyncDbSession, DbSession
from repom.transactions import on_commit

SENT: list[str] = []
app = FastAPI()


@app.post("/sync/items", status_code=201)
def create_sync(name: str, session: DbSession) -> dict[str, str]:
    session.add(Item(name=name))
    session.flush()
    on_commit(lambda: SENT.append(name), session=session)
    return {"name": name}


@app.post("/async/items", status_code=201)
async def create_async(name: str, session: AsyncDbSession) -> dict[str, str]:
    session.add(Item(name=name))
    await session.flush()
    on_commit(lambda: SENT.append(name), session=session)
    return {"name": name}
"""

HELPERS = '''
import inspect
from contextlib import asynccontextmanager

from sqlalchemy import func, select

from models import Item
from repom.async_session import get_async_db_session, get_async_session
from repom.session import get_db_session, get_session
from repom.testing import capture_on_commit_callbacks
from repom.transactions import transaction

FLAVOUR = "{flavour}"
IS_ASYNC = FLAVOUR == "async"


async def aw(value):
    """Await *value* in the async flavour; the sync API returned it already."""
    return await value if inspect.isawaitable(value) else value


@asynccontextmanager
async def enter(cm):
    if IS_ASYNC:
        async with cm as value:
            yield value
    else:
        with cm as value:
            yield value


def tx(**options):
    return enter(transaction(**options))


def capture(**options):
    return enter(capture_on_commit_callbacks(**options))


async def new_session():
    return await aw(get_async_session() if IS_ASYNC else get_session())


async def generator_commit(name):
    """Seed 004's loop over the session generator (it commits when the loop finishes)."""
    if IS_ASYNC:
        async for session in get_async_db_session():
            session.add(Item(name=name))
    else:
        for session in get_db_session():
            session.add(Item(name=name))


async def names(session):
    return sorted(await aw(session.scalars(select(Item.name))))


async def committed(engine):
    """Rows a separate connection sees: what was really committed."""
    query = select(func.count()).select_from(Item)
    if IS_ASYNC:
        async with engine.connect() as conn:
            return await conn.scalar(query)
    with engine.connect() as conn:
        return conn.scalar(query)
'''

CONFTEST = '''
import pytest

from helpers import IS_ASYNC, committed, names
from models import Base
from repom.testing import create_async_test_fixtures, create_test_fixtures

if IS_ASYNC:
    async_db_engine, async_db_test = create_async_test_fixtures(metadata=Base.metadata)

    @pytest.fixture
    def session(async_db_test):
        return async_db_test

    @pytest.fixture
    def engine(async_db_engine):
        return async_db_engine

    @pytest.fixture
    def client(repom_async_client):
        return repom_async_client

else:
    db_engine, db_test = create_test_fixtures(metadata=Base.metadata)

    @pytest.fixture
    def session(db_test):
        return db_test

    @pytest.fixture
    def engine(db_engine):
        return db_engine

    @pytest.fixture
    def client(repom_client):
        return repom_client


@pytest.fixture
def repom_app():
    from app import app

    return app


@pytest.fixture(autouse=True)
async def starts_empty(session, engine):
    """Every test starts with no rows, and nothing it did was committed for real."""
    assert await names(session) == []
    assert await committed(engine) == 0
    yield
    assert await committed(engine) == 0
'''

SCENARIOS = """
import pytest

import app as app_module
from helpers import FLAVOUR, aw, capture, committed, generator_commit, names, new_session, tx
from models import Item
from repom.exceptions import DuplicateKeyError, IllegalTransactionStateError, ReadOnlyViolation
from repom.transactions import Propagation, on_commit


async def test_01_commits_in_test_and_app(session, engine):
    session.add(Item(name="test"))
    await aw(session.commit())
    async with tx() as app_session:
        app_session.add(Item(name="app-tx"))
    await generator_commit("app-generator")
    assert await names(session) == ["app-generator", "app-tx", "test"]
    assert await committed(engine) == 0


async def test_02_rollback_then_commit(session, engine):
    session.add(Item(name="gone"))
    await aw(session.flush())
    await aw(session.rollback())
    session.add(Item(name="kept"))
    await aw(session.commit())
    app_session = await new_session()
    app_session.add(Item(name="app-gone"))
    await aw(app_session.flush())
    await aw(app_session.rollback())
    app_session.add(Item(name="app-kept"))
    await aw(app_session.commit())
    await aw(app_session.close())
    assert await names(session) == ["app-kept", "kept"]
    assert await committed(engine) == 0


async def test_03_nested_savepoints(session):
    async with tx() as outer:
        outer.add(Item(name="outer"))
        with pytest.raises(RuntimeError):
            async with tx(propagation=Propagation.NESTED) as inner:
                inner.add(Item(name="inner-failed"))
                await aw(inner.flush())
                raise RuntimeError("inner scope fails")
        async with tx(propagation=Propagation.NESTED) as inner:
            inner.add(Item(name="inner-ok"))
    savepoint = await aw(session.begin_nested())
    session.add(Item(name="test-savepoint"))
    await aw(session.flush())
    await aw(savepoint.rollback())
    assert await names(session) == ["inner-ok", "outer"]


async def test_04_failing_flush(session):
    session.add(Item(name="dup"))
    await aw(session.commit())
    with pytest.raises(DuplicateKeyError):
        async with tx() as app_session:
            app_session.add(Item(name="with-dup"))
            await aw(app_session.flush())
            app_session.add(Item(name="dup"))
            await aw(app_session.flush())
    session.add(Item(name="dup"))
    with pytest.raises(DuplicateKeyError):
        await aw(session.flush())
    await aw(session.rollback())
    session.add(Item(name="after"))
    await aw(session.commit())
    assert await names(session) == ["after", "dup"]


async def test_05_request_commits(session, client, engine):
    response = await aw(client.post(f"/{FLAVOUR}/items", params={"name": "via-http"}))
    assert response.status_code == 201, response.text
    assert await names(session) == ["via-http"]
    assert await committed(engine) == 0


async def test_06_on_commit(session, client):
    ran = []
    async with tx() as app_session:
        app_session.add(Item(name="a"))
        on_commit(lambda: ran.append("a"))
    assert ran == ["a"]  # the app's commit is real to the app: its callbacks run
    with pytest.raises(RuntimeError):
        async with tx():
            on_commit(lambda: ran.append("rolled-back"))
            raise RuntimeError("rolled back")
    assert ran == ["a"]
    app_module.SENT.clear()
    async with capture() as captured:
        async with tx() as app_session:
            on_commit(lambda: ran.append("b"))
        response = await aw(client.post(f"/{FLAVOUR}/items", params={"name": "c"}))
        assert response.status_code == 201, response.text
    assert ran == ["a"] and app_module.SENT == [] and len(captured) == 2
    captured[0]()
    captured[1]()
    assert ran == ["a", "b"] and app_module.SENT == ["c"]
    async with capture(execute=True) as captured:
        async with tx():
            on_commit(lambda: on_commit(lambda: ran.append("chained")))
        assert ran == ["a", "b"]
    assert ran == ["a", "b", "chained"] and len(captured) == 2


async def test_07_read_only_scope_keeps_test_writable(session):
    async with tx(read_only=True) as reader:
        assert await names(reader) == []
    with pytest.raises(ReadOnlyViolation):
        async with tx(read_only=True) as reader:
            reader.add(Item(name="read-only"))
            await aw(reader.flush())
    async with tx() as writer:
        writer.add(Item(name="written-after"))
    session.add(Item(name="test-after"))
    await aw(session.commit())
    assert await names(session) == ["test-after", "written-after"]


async def test_08_outer_commit_refused(session, engine):
    session.add(Item(name="x"))
    await aw(session.flush())
    connection = await aw(session.connection())
    with pytest.raises(IllegalTransactionStateError, match="outer transaction cannot be committed"):
        await aw(connection.commit())
    assert await committed(engine) == 0


async def test_99_starts_empty(session):
    assert await names(session) == []
"""

SCENARIO_COUNT = 9

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
addopts = -p no:cacheprovider
"""


def scenario_files(flavour: str) -> dict[str, str]:
    """The files of the ordered-scenario project for *flavour* (``sync`` or ``async``)."""
    return {
        "models": MODELS,
        "app": APP,
        "helpers": HELPERS.replace("{flavour}", flavour),
        "conftest": CONFTEST,
        "test_scenarios": SCENARIOS,
    }


def dedent(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


def unique_schema(prefix: str) -> str:
    """A PostgreSQL schema name no other run uses (tests may run in parallel)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
