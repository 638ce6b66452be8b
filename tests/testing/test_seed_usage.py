"""Seed 004's usage, as written: a conftest that calls the factories with no arguments, tests
that take ``async_db_test``/``db_test``.  Run in a subprocess, like a project of its own (the
model is found among the loaded declarative registries), against SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.testing._project import unique_schema

CONFTEST = """
import pytest
from repom.testing import create_async_test_fixtures, create_test_fixtures

# AsyncSession テストフィクスチャを作成
async_db_engine, async_db_test = create_async_test_fixtures()
db_engine, db_test = create_test_fixtures()
"""

MODELS = """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "rt6_seed_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(100))
"""

ASYNC_TESTS = """
import pytest
from sqlalchemy import select
from your_project.models import User

@pytest.mark.asyncio
async def test_create_user(async_db_test):
    user = User(email="test@example.com", name="Test User")
    async_db_test.add(user)
    await async_db_test.flush()

    result = await async_db_test.execute(
        select(User).where(User.email == "test@example.com")
    )
    found = result.scalar_one()

    assert found.email == "test@example.com"
    assert found.name == "Test User"
    await async_db_test.commit()

@pytest.mark.asyncio
async def test_transaction_isolation(async_db_test):
    result = await async_db_test.execute(select(User))
    users = result.scalars().all()
    assert len(users) == 0
"""

SYNC_TESTS = """
from sqlalchemy import select
from your_project.models import User

def test_create_user(db_test):
    db_test.add(User(email="test@example.com", name="Test User"))
    db_test.commit()
    assert db_test.scalars(select(User)).one().name == "Test User"

def test_transaction_isolation(db_test):
    assert db_test.scalars(select(User)).all() == []
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_seed_conftest_works_as_written(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    pytester.mkpydir("your_project")
    pytester.makepyfile(
        **{"your_project/models": MODELS, "conftest": CONFTEST},
        test_async_seed=ASYNC_TESTS,
        test_sync_seed=SYNC_TESTS,
    )
    monkeypatch.delenv("REPOM_TEST_DATABASE_URL", raising=False)
    args = ["-p", "no:cacheprovider", "-q", "-W", "ignore::DeprecationWarning"]
    if backend == "postgresql":
        # the environment variable, and asyncpg behind a session-scoped engine
        monkeypatch.setenv("REPOM_TEST_DATABASE_URL", request.getfixturevalue("pg_url"))
        args += ["--repom-schema", unique_schema("rt6_seed")]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=4)
