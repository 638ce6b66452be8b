"""The transaction boundary: sessions passed in, abandoned session loops, on_commit failures.

One scenario body per behaviour, run sync and async on SQLite and PostgreSQL (the ``flavor``
fixture).  What is committed is always read back over a separate connection.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from repom.database import AsyncDatabase, Database, set_async_database, set_database
from repom.exceptions import AfterCommitError, IllegalTransactionStateError
from repom.monitoring import callback_failure_counts, metrics_text, register_metrics
from repom.session import EarlyExitWarning
from repom.transactions import (
    Propagation,
    TransactionManager,
    current_session,
    in_transaction,
    on_commit,
    transaction,
    transactional,
)
from tests.core.conftest import Flavor
from tests.core.models import Account

_ids = itertools.count(1)


def acct(owner: str) -> Account:
    return Account(id=next(_ids), owner=owner, balance=1)


def owners(flavor: Flavor) -> list[str]:
    return [r[0] for r in flavor.rows("SELECT owner FROM core_accounts ORDER BY owner")]


def own_sessionmaker(flavor: Flavor) -> Any:
    """The application's own sessionmaker (plain SQLAlchemy, not repom's factory)."""
    if flavor.is_async:
        assert isinstance(flavor.db, AsyncDatabase)
        return async_sessionmaker(flavor.db.engine, expire_on_commit=False)
    assert isinstance(flavor.db, Database)
    return sessionmaker(flavor.db.engine, expire_on_commit=False)


class UserService:
    """Seed 003's shape: the caller passes its session; the method is @transactional()."""

    def __init__(self, flavor: Flavor) -> None:
        self.flavor = flavor
        if flavor.is_async:

            @transactional()
            async def create(db: AsyncSession, owner: str, fail: bool = False) -> Account:
                return await self._create(db, owner, fail)

            self.create: Any = create
        else:

            @transactional()
            def create_sync(db: Session, owner: str, fail: bool = False) -> Account:
                account = acct(owner)
                db.add(account)
                db.flush()
                if fail:
                    raise ValueError("service failed after its INSERT")
                return account

            self.create = create_sync

    async def _create(self, db: AsyncSession, owner: str, fail: bool) -> Account:
        account = acct(owner)
        db.add(account)
        await db.flush()
        if fail:
            raise ValueError("service failed after its INSERT")
        return account

    async def __call__(self, db: Any, owner: str, fail: bool = False) -> Account:
        return await self.flavor.run(self.create(db, owner, fail=fail))


async def close(flavor: Flavor, session: Any) -> None:
    await flavor.run(session.close())


# --------------------------------------------------------------------------- 1. sessions passed in


@pytest.mark.parametrize("source", ["own_sessionmaker", "repom_session"])
async def test_service_commits_the_session_passed_in(flavor: Flavor, source: str) -> None:
    make = own_sessionmaker(flavor) if source == "own_sessionmaker" else flavor.db.session
    session = make()
    try:
        flavor.statements.clear()
        account = await UserService(flavor)(session, "x")
        assert account.id is not None
        assert owners(flavor) == ["x"]  # committed, seen over another connection
        assert flavor.statements.count("COMMIT") == 1
        assert not session.in_transaction()
    finally:
        await close(flavor, session)


async def test_service_adopts_the_transaction_sqlalchemy_autobegan(flavor: Flavor) -> None:
    session = own_sessionmaker(flavor)()
    try:
        session.add(acct("before"))
        await flavor.run(session.flush())  # autobegin: the caller's work is pending
        assert session.in_transaction()
        await UserService(flavor)(session, "inside")
        # one transaction: the service committed the caller's pending work with its own
        assert owners(flavor) == ["before", "inside"]
    finally:
        await close(flavor, session)


async def test_service_error_rolls_back_the_session_passed_in(flavor: Flavor) -> None:
    session = own_sessionmaker(flavor)()
    try:
        with pytest.raises(ValueError, match="after its INSERT"):
            await UserService(flavor)(session, "lost", fail=True)
        assert owners(flavor) == []
        assert not session.in_transaction()
        await UserService(flavor)(session, "next")  # the session is usable afterwards
        assert owners(flavor) == ["next"]
    finally:
        await close(flavor, session)


async def test_service_joins_a_session_already_in_a_repom_scope(flavor: Flavor) -> None:
    flavor.statements.clear()
    async with flavor.enter(transaction(database=flavor.db)) as outer:
        await UserService(flavor)(outer, "joined")
        assert owners(flavor) == []  # the owner commits, not the service
        assert "COMMIT" not in flavor.statements
    assert owners(flavor) == ["joined"]
    assert flavor.statements.count("COMMIT") == 1


async def test_service_failure_inside_a_scope_marks_it_rollback_only(flavor: Flavor) -> None:
    from repom.exceptions import RollbackOnlyError

    with pytest.raises(RollbackOnlyError):
        async with flavor.enter(transaction(database=flavor.db)) as outer:
            await UserService(flavor)(outer, "a")
            with pytest.raises(ValueError):
                await UserService(flavor)(outer, "b", fail=True)
    assert owners(flavor) == []


async def test_session_parameter_is_not_injected_twice(flavor: Flavor) -> None:
    if flavor.is_async:

        @transactional(database=flavor.db)
        async def add(session: AsyncSession, owner: str) -> Any:
            session.add(acct(owner))
            return session

    else:

        @transactional(database=flavor.db)
        def add(session: Session, owner: str) -> Any:  # type: ignore[misc]
            session.add(acct(owner))
            return session

    mine = own_sessionmaker(flavor)()
    try:
        used = await flavor.run(add(mine, "positional"))  # TypeError before the fix
        assert used is mine
        used = await flavor.run(add(owner="injected"))  # no session passed: the scope's is injected
        assert used is not mine
    finally:
        await close(flavor, mine)
    assert owners(flavor) == ["injected", "positional"]


async def test_seed_003_transaction_manager_on_a_session(flavor: Flavor) -> None:
    session = own_sessionmaker(flavor)()
    try:
        async with flavor.enter(TransactionManager(session).transaction()) as s:
            assert s is session
            s.add(acct("committed"))
        assert owners(flavor) == ["committed"]

        # commit_on_success=False: flushed, left open for the caller
        tm = TransactionManager(session)
        async with flavor.enter(tm.transaction(commit_on_success=False)) as s:
            s.add(acct("caller-commits"))
        assert session.in_transaction() and owners(flavor) == ["committed"]
        await flavor.run(session.commit())
        assert owners(flavor) == ["caller-commits", "committed"]

        # rollback_on_exception=False: the work stays in the caller's transaction
        with pytest.raises(KeyError):
            async with flavor.enter(tm.transaction(rollback_on_exception=False)) as s:
                s.add(acct("kept-after-error"))
                await flavor.run(s.flush())
                raise KeyError("handled by the caller")
        assert session.in_transaction()
        await flavor.run(session.commit())
        assert "kept-after-error" in owners(flavor)
    finally:
        await close(flavor, session)


async def test_transactional_seed_flags(flavor: Flavor) -> None:
    if flavor.is_async:

        @transactional(commit_on_success=False)
        async def stage(db: AsyncSession, owner: str) -> None:
            db.add(acct(owner))

    else:

        @transactional(commit_on_success=False)
        def stage(db: Session, owner: str) -> None:  # type: ignore[misc]
            db.add(acct(owner))

    session = own_sessionmaker(flavor)()
    try:
        await flavor.run(stage(session, "staged"))
        assert owners(flavor) == []
        await flavor.run(session.rollback())
        assert owners(flavor) == []
        await flavor.run(stage(session, "staged"))
        await flavor.run(session.commit())
        assert owners(flavor) == ["staged"]
    finally:
        await close(flavor, session)


async def test_required_joins_only_a_transaction_of_the_same_database(flavor: Flavor) -> None:
    """A service pinned to database A, called inside a scope of database B, opens its own
    transaction on A: B's rollback does not take A's row with it."""
    other: Database | AsyncDatabase = type(flavor.db)(flavor.db.url)  # another engine
    try:
        if flavor.is_async:

            @transactional(database=flavor.db)
            async def on_a(owner: str) -> Any:
                current_session().add(acct(owner))
                return current_session()

        else:

            @transactional(database=flavor.db)
            def on_a(owner: str) -> Any:  # type: ignore[misc]
                current_session().add(acct(owner))
                return current_session()

        with pytest.raises(RuntimeError):
            async with flavor.enter(transaction(database=other)) as on_b:
                session_a = await flavor.run(on_a("written-on-a"))
                assert session_a is not on_b
                assert current_session() is on_b
                assert current_session(other) is on_b
                raise RuntimeError("B rolls back")
        assert owners(flavor) == ["written-on-a"]
    finally:
        await flavor.run(other.dispose())


async def test_requires_new_with_a_scoped_session_is_refused(flavor: Flavor) -> None:
    async with flavor.enter(transaction(database=flavor.db)) as outer:
        with pytest.raises(IllegalTransactionStateError, match="REQUIRES_NEW"):
            async with flavor.enter(
                transaction(session=outer, propagation=Propagation.REQUIRES_NEW)
            ):
                pass


# --------------------------------------------------------------------------- 2. abandoned loops


@pytest.fixture
def flavor_default(flavor: Flavor) -> Iterator[Flavor]:
    """The flavour's database as repom's module default (what the session generators use)."""
    if flavor.is_async:
        assert isinstance(flavor.db, AsyncDatabase)
        previous_async = set_async_database(flavor.db)
        yield flavor
        set_async_database(previous_async)
    else:
        assert isinstance(flavor.db, Database)
        previous = set_database(flavor.db)
        yield flavor
        set_database(previous)


async def test_left_loop_is_never_joined(flavor_default: Flavor) -> None:
    """Seed 004's ``return`` inside the session loop, then a @transactional function."""
    flavor = flavor_default
    from repom.async_session import get_async_db_session
    from repom.session import get_db_session

    if flavor.is_async:

        async def get_or_create(owner: str) -> str:
            async for s in get_async_db_session():
                s.add(acct(owner))
                await s.flush()
                return owner
            return ""

        @transactional
        async def audit(owner: str) -> None:
            current_session().add(acct(owner))

    else:

        def get_or_create(owner: str) -> str:  # type: ignore[misc]
            for s in get_db_session():
                s.add(acct(owner))
                s.flush()
                return owner
            return ""

        @transactional
        def audit(owner: str) -> None:  # type: ignore[misc]
            current_session().add(acct(owner))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EarlyExitWarning)
        for round_ in range(3):
            await flavor.run(get_or_create(f"loop-{round_}"))
            # the loop was left: nothing is current any more, and audit() has its own transaction
            assert not in_transaction()
            await flavor.run(audit(f"audit-{round_}"))
        for _ in range(10):  # let the event loop close the abandoned generators
            gc.collect()
            await asyncio.sleep(0.01)
    assert sum(issubclass(w.category, EarlyExitWarning) for w in caught) == 3
    assert owners(flavor) == ["audit-0", "audit-1", "audit-2"]
    # no broken connection went back to the pool: an unrelated transaction works
    async with flavor.enter(transaction(database=flavor.db)) as session:
        await flavor.run(session.execute(select(Account)))
    assert flavor.db.pool_status()["checked_out"] == 0


async def test_code_inside_the_loop_still_joins(flavor_default: Flavor) -> None:
    flavor = flavor_default
    from repom.async_session import get_async_db_session
    from repom.session import get_db_session

    if flavor.is_async:

        @transactional
        async def audit(owner: str) -> Any:
            current_session().add(acct(owner))
            return current_session()

        async def body() -> None:
            async for s in get_async_db_session():
                assert await audit("inside") is s  # joins the loop's transaction
                s.add(acct("loop"))

    else:

        @transactional
        def audit(owner: str) -> Any:  # type: ignore[misc]
            current_session().add(acct(owner))
            return current_session()

        def body() -> None:  # type: ignore[misc]
            for s in get_db_session():
                assert audit("inside") is s
                s.add(acct("loop"))

    await flavor.run(body())
    assert owners(flavor) == ["inside", "loop"]


# --------------------------------------------------------------------------- 4. on_commit


async def test_failing_on_commit_callback_never_undoes_the_commit(
    flavor: Flavor, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def first() -> None:
        ran.append("first")

    def broken_mailer() -> None:
        ran.append("broken")
        raise ConnectionError("smtp down")

    def last() -> None:
        ran.append("last")

    before = callback_failure_counts()
    name = f"{__name__}.{broken_mailer.__qualname__}"
    with caplog.at_level(logging.ERROR, logger="repom.transactions"):
        async with flavor.enter(transaction(database=flavor.db)) as session:
            session.add(acct("paid"))
            on_commit(first)
            on_commit(broken_mailer)
            on_commit(last)
    # returned normally: the write is committed and every callback ran
    assert ran == ["first", "broken", "last"]
    assert owners(flavor) == ["paid"]
    assert callback_failure_counts().get(name, 0) == before.get(name, 0) + 1
    registry = CollectorRegistry()
    register_metrics(registry)
    exposed = metrics_text(registry)[0].decode()
    count = callback_failure_counts()[name]
    assert f'repom_on_commit_failures_total{{callback="{name}"}} {float(count)}' in exposed
    assert any(name in r.getMessage() and "WAS" not in r.getMessage() for r in caplog.records)


async def test_strict_on_commit_callback_raises_after_all_ran(flavor: Flavor) -> None:
    ran: list[str] = []

    def strict() -> None:
        ran.append("strict")
        raise ValueError("must be reported")

    with pytest.raises(AfterCommitError, match="WAS committed") as info:
        async with flavor.enter(transaction(database=flavor.db)) as session:
            session.add(acct("paid"))
            on_commit(strict, robust=False)
            on_commit(lambda: ran.append("after"))
    assert ran == ["strict", "after"]
    assert isinstance(info.value.errors[0], ValueError)
    assert owners(flavor) == ["paid"]


async def test_isolation_for_a_session_that_already_ran_sql_is_refused(flavor: Flavor) -> None:
    session = own_sessionmaker(flavor)()
    try:
        session.add(acct("pending"))
        await flavor.run(session.flush())  # BEGIN went out with the database's defaults
        with pytest.raises(IllegalTransactionStateError, match="set at BEGIN"):
            async with flavor.enter(transaction(session=session, isolation="SERIALIZABLE")):
                pass
        assert session.in_transaction()  # the caller's work is untouched
        await flavor.run(session.commit())
        assert owners(flavor) == ["pending"]
    finally:
        await close(flavor, session)
