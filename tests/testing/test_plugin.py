"""repom's pytest plugin: its ready fixtures and options, event-loop scoping, pytest-xdist and
Alembic, each proven by running a small pytest project."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.testing._project import APP, INI, MODELS, unique_schema

EXTRAS_APP = (
    APP
    + '''

from fastapi import Depends


def get_db():
    """The app's own session dependency (not repom's): tests must override it."""
    raise RuntimeError("get_db was not overridden")


@app.post("/own/items", status_code=201)
def create_own(name: str, session=Depends(get_db)) -> dict[str, str]:
    session.add(Item(name=name))
    return {"name": name}
'''
)

EXTRAS_TESTS = """
import asyncio

import pytest
from sqlalchemy import select

import app as app_module
from models import Item
from repom.exceptions import ConfigurationError


@pytest.fixture
def repom_session_dependencies():
    return [app_module.get_db]


def test_aliases_and_default_url(db_session, db_test, db_engine):
    assert db_session is db_test
    assert db_engine.url.database.endswith("db_engine.sqlite3")


def test_query_counter_and_limit(db_test, query_counter, assert_max_queries):
    db_test.execute(select(Item)).all()
    assert query_counter.count == 1  # the SAVEPOINT is not counted
    with assert_max_queries(2):
        db_test.execute(select(Item)).all()
        db_test.execute(select(Item)).all()
    with pytest.raises(AssertionError, match="at most 1"):
        with assert_max_queries(1):
            db_test.execute(select(Item)).all()
            db_test.execute(select(Item)).all()


async def test_async_query_counter(async_db_session, async_db_test, query_counter):
    assert async_db_session is async_db_test
    await async_db_test.execute(select(Item))
    assert query_counter.count == 1


def test_sync_test_refuses_async_app_sessions(db_test):
    from repom.async_session import get_async_session

    with pytest.raises(ConfigurationError, match="Use the async_db_test fixture"):
        asyncio.run(get_async_session())


def test_own_dependency_overridden(repom_client, db_test):
    response = repom_client.post("/own/items", params={"name": "own"})
    assert response.status_code == 201, response.text
    assert db_test.scalars(select(Item.name)).all() == ["own"]


async def test_async_client(repom_async_client, async_db_test):
    response = await repom_async_client.post("/async/items", params={"name": "a"})
    assert response.status_code == 201, response.text
    assert (await async_db_test.scalars(select(Item.name))).all() == ["a"]


@pytest.mark.asyncio(loop_scope="function")
async def test_wrong_loop_scope(async_db_test):
    raise AssertionError("must not run")
"""


def test_plugin_fixtures_and_options(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "repom_app = app:app\n")
    pytester.makepyfile(models=MODELS, app=EXTRAS_APP, test_extras=EXTRAS_TESTS)
    result = pytester.runpytest("--repom-metadata", "models:Base", "-q")
    result.assert_outcomes(passed=6, errors=1)
    result.stdout.fnmatch_lines(
        ["*test_wrong_loop_scope*'function' event loop*repom's async database fixtures*"]
    )


XDIST_TESTS = """
import os

import pytest
from sqlalchemy import select, text

from models import Item

SCHEMA = "{schema}"


@pytest.mark.parametrize("n", range(4))
def test_each_worker_has_its_schema(db_test, n):
    assert db_test.scalars(select(Item)).all() == []
    db_test.add(Item(name=f"n{{n}}"))
    db_test.commit()
    worker = os.environ["PYTEST_XDIST_WORKER"]
    assert db_test.scalar(text("SELECT current_schema()")) == f"{{SCHEMA}}_{{worker}}"


def test_client_needs_an_app(repom_client):
    raise AssertionError("must not run")
"""


def test_xdist_gives_each_worker_a_schema(pytester: pytest.Pytester, pg_url: str) -> None:
    schema = unique_schema("rt6_xd")
    pytester.makeini(INI)
    pytester.makepyfile(models=MODELS, test_xdist=XDIST_TESTS.format(schema=schema))
    result = pytester.runpytest(
        "-n", "2", "--repom-db-url", pg_url, "--repom-schema", schema, "--repom-metadata",
        "models:Base", "-q",
    )  # fmt: skip
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*repom_client needs your FastAPI app*"])
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            left = conn.scalar(
                text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE :p"),
                {"p": schema + "%"},
            )
        assert left == 0
    finally:
        engine.dispose()


ALEMBIC_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "rt6_item",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), unique=True),
    )


def downgrade():
    op.drop_table("rt6_item")
"""

ALEMBIC_TESTS = """
from sqlalchemy import select, text

from models import Item


def test_migrated_schema(db_test):
    assert db_test.scalar(text("SELECT version_num FROM alembic_version")) == "0001"
    db_test.add(Item(name="migrated"))
    db_test.commit()


def test_still_empty(db_test):
    assert db_test.scalars(select(Item)).all() == []


async def test_async_flavour_migrated_too(async_db_test):
    await async_db_test.execute(text("SELECT version_num FROM alembic_version"))
    async_db_test.add(Item(name="async"))
    await async_db_test.commit()
"""


def test_schema_from_repom_migrations(pytester: pytest.Pytester, db_url: str) -> None:
    """The migration folder ``repom db init`` writes (sync env.py on SQLite, async env.py on
    PostgreSQL) builds the schema: env.py runs on the fixture's connection."""
    pytester.makeini(INI)
    pytester.makepyfile(models=MODELS, test_alembic=ALEMBIC_TESTS)
    postgres = db_url.startswith("postgresql")
    init = [sys.executable, "-m", "repom.cli", "db", "init", "--models", "models"]
    assert pytester.run(*init, *(["--async"] if postgres else [])).ret == 0
    pytester.makepyfile(**{"migrations/versions/0001_item": ALEMBIC_REVISION})
    args = ["--repom-db-url", db_url, "--repom-alembic", "alembic.ini", "-q"]
    if postgres:
        args += ["--repom-schema", unique_schema("rt6_alembic")]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=3)


COST_CONFTEST = """
from models import Base
from repom.testing import create_test_fixtures

mine_engine, mine = create_test_fixtures(
    metadata=Base.metadata, engine_fixture="mine_engine", session_fixture="mine"
)
"""

COST_TESTS = """
import os

from sqlalchemy import select

from models import Item

PLUGIN = os.environ["RT6_PLUGIN"] == "on"


def arguments(request, name):
    return request._fixturemanager.getfixturedefs(name, request.node)[-1].argnames


def test_fixture_arguments(request, mine):
    # pytest builds a fixture definition for "request" each time a fixture in the chain asks for
    # it, session-scoped ones included: with the plugin, the chain asks for nothing else
    assert arguments(request, "mine") == ("mine_engine",)
    assert arguments(request, "mine_engine") == (() if PLUGIN else ("request",))
    if PLUGIN:
        assert arguments(request, "db_test") == ("db_engine",)
        assert arguments(request, "db_engine") == ()
    mine.add(Item(name="x"))
    mine.commit()


def test_still_isolated(mine):
    assert mine.scalars(select(Item)).all() == []
    assert mine.get_bind().engine.url.database.endswith("mine_engine.sqlite3")
"""


@pytest.mark.parametrize("plugin", ["on", "off"])
def test_fixtures_take_no_request_while_the_plugin_is_active(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, plugin: str
) -> None:
    """The fixture factories work with and without the plugin (``-p no:repom``); with it, their
    fixtures ask pytest for nothing but the engine, so a test pays for no ``request``."""
    monkeypatch.setenv("RT6_PLUGIN", plugin)
    pytester.makeini(INI)
    pytester.makepyfile(models=MODELS, conftest=COST_CONFTEST, test_cost=COST_TESTS)
    args = ["-q", "-p", "no:randomly"] + (["-p", "no:repom"] if plugin == "off" else [])
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=2)
