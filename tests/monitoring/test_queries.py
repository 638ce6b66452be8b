"""QueryCounter: N+1 detection, per-session counting, sync and async, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, selectinload

from repom.database import AsyncDatabase, Database
from repom.monitoring import QueryCounter, UnsupportedMonitorTarget, assert_max_queries
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.monitoring.conftest import make_models, unique
from tests.support import enter, maybe_await


@dataclass
class Scenario:
    db: Database | AsyncDatabase
    user: type[Any]
    address: type[Any]

    @property
    def is_async(self) -> bool:
        return self.db.is_async

    async def run(self, session: Any, fn: Callable[[Session], Any]) -> Any:
        """Run sync ORM code on the session: directly, or through ``run_sync`` for async."""
        if self.is_async:
            return await session.run_sync(fn)
        return fn(session)


@pytest.fixture(params=["sqlite-sync", "sqlite-async", "postgresql-sync", "postgresql-async"])
async def scenario(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[Scenario]:
    backend, mode = request.param.split("-")
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else sqlite_url
    user, address, metadata = make_models(unique("n1"))
    setup = create_engine(convert_to_sync_uri(url))
    metadata.create_all(setup)
    with Session(setup) as session:
        for i in range(3):
            session.add(
                user(
                    id=i + 1,
                    name=f"user {i}",
                    addresses=[address(email=f"{i}-{n}@x") for n in (1, 2)],
                )
            )
        session.commit()
    db: Database | AsyncDatabase = (
        AsyncDatabase(convert_to_async_uri(url))
        if mode == "async"
        else Database(convert_to_sync_uri(url))
    )
    try:
        yield Scenario(db, user, address)
    finally:
        await maybe_await(db.dispose())
        metadata.drop_all(setup)
        setup.dispose()


async def test_lazy_loading_in_a_loop_fails_the_n_plus_one_check(scenario: Scenario) -> None:
    user = scenario.user

    def lazy(session: Session) -> list[int]:
        return [len(u.addresses) for u in session.scalars(select(user).order_by(user.id))]

    async with enter(scenario.db.session()) as session:
        with pytest.raises(AssertionError) as failed:
            async with enter(assert_max_queries(session, 2)):
                assert await scenario.run(session, lazy) == [2, 2, 2]
    message = str(failed.value)
    assert message.startswith("expected at most 2 statement(s), 4 ran:")
    assert "repeated 3 times (N+1?" in message
    assert f"FROM {scenario.address.__tablename__}" in message


async def test_eager_loading_passes_with_two_statements(scenario: Scenario) -> None:
    user = scenario.user

    def eager(session: Session) -> list[int]:
        query = select(user).options(selectinload(user.addresses)).order_by(user.id)
        return [len(u.addresses) for u in session.scalars(query)]

    async with enter(scenario.db.session()) as session:
        async with enter(QueryCounter(session)) as queries:
            assert await scenario.run(session, eager) == [2, 2, 2]
        queries.assert_count(2)
        queries.assert_max_queries(2)
    assert queries.statements[0].startswith("SELECT")
    assert f"FROM {scenario.address.__tablename__}" in queries.statements[1]


async def test_counts_only_its_own_session(scenario: Scenario) -> None:
    user = scenario.user

    def count_users(session: Session) -> int:
        return len(session.scalars(select(user)).all())

    async with enter(scenario.db.session()) as mine, enter(scenario.db.session()) as other:
        await scenario.run(mine, count_users)  # mine is in a transaction before counting starts
        async with enter(QueryCounter(mine)) as queries, enter(QueryCounter(scenario.db)) as all_:
            await scenario.run(other, count_users)
            await scenario.run(mine, count_users)
            await maybe_await(mine.commit())
            await scenario.run(mine, count_users)  # a new transaction (and connection)
    assert queries.count == 2  # the other session's statement is not mine
    assert all_.count == 3  # the database counter sees every statement on the engine


async def test_transaction_control_is_left_out_unless_asked(scenario: Scenario) -> None:
    async with enter(scenario.db.session()) as session:
        plain = QueryCounter(session)
        everything = QueryCounter(scenario.db, include_transaction_control=True)
        async with enter(plain), enter(everything):
            await maybe_await(session.execute(text("SELECT 1")))
            nested = await maybe_await(session.begin_nested())
            await maybe_await(session.execute(text("SELECT 2")))
            await maybe_await(nested.commit())
    assert plain.statements == ["SELECT 1", "SELECT 2"]
    kinds = [s.split()[0] for s in everything.statements]
    expected = ["SELECT", "SAVEPOINT", "SELECT", "RELEASE"]
    if scenario.db.dialect_name == "sqlite":
        expected = ["BEGIN", *expected]  # repom's SQLite engines send BEGIN as a statement
    assert kinds == expected


async def test_an_error_in_the_block_is_not_masked(scenario: Scenario) -> None:
    async with enter(scenario.db.session()) as session:
        with pytest.raises(ZeroDivisionError):
            async with enter(assert_max_queries(session, 0)):
                await maybe_await(session.execute(text("SELECT 1")))
                1 / 0  # noqa: B018


def test_bad_targets_and_limits_are_refused() -> None:
    with pytest.raises(UnsupportedMonitorTarget, match="cannot count statements of a int"):
        QueryCounter(42)
    engine = create_engine("sqlite://")
    with pytest.raises(ValueError, match="max_queries must be a non-negative int, got -1"):
        QueryCounter(engine, max_queries=-1)
    counter = QueryCounter(engine)
    with counter, pytest.raises(RuntimeError, match="already counting"):
        counter.start()
    engine.dispose()
