"""The transaction API: one scenario body per behaviour, run sync and async on SQLite and PG."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, text

from repom.exceptions import (
    DuplicateKeyError,
    IllegalTransactionStateError,
    ReadOnlyViolation,
    RollbackOnlyError,
    StatementTimeout,
    TransactionError,
    TransactionRequiredError,
)
from repom.transactions import (
    InvalidTransactionOption,
    IsolationLevel,
    Propagation,
    current_session,
    in_transaction,
    on_commit,
    transaction,
    transactional,
)
from tests.core.conftest import Flavor
from tests.core.models import Account


async def add(flavor: Flavor, session: Any, *objs: Any) -> None:
    session.add_all(objs)
    await flavor.run(session.flush())


def owners(flavor: Flavor) -> list[str]:
    return [r[0] for r in flavor.rows("SELECT owner FROM core_accounts ORDER BY owner")]


async def test_plain_transaction_sends_begin_insert_commit_only(flavor: Flavor) -> None:
    flavor.statements.clear()
    async with flavor.enter(transaction(database=flavor.db)) as session:
        session.add(Account(id=1, owner="ann", balance=10))
    assert owners(flavor) == ["ann"]
    log = flavor.statements
    assert log[0] == "BEGIN" and log[-1] == "COMMIT", log
    assert len(log) == 3 and log[1].startswith("INSERT INTO core_accounts"), log


async def test_empty_transaction_sends_nothing(flavor: Flavor) -> None:
    flavor.statements.clear()
    async with flavor.enter(transaction(database=flavor.db)):
        pass
    assert flavor.statements == []


async def test_exception_rolls_back_and_propagates(flavor: Flavor) -> None:
    with pytest.raises(ZeroDivisionError):
        async with flavor.enter(transaction(database=flavor.db)) as session:
            await add(flavor, session, Account(id=1, owner="ann"))
            1 / 0  # noqa: B018
    assert owners(flavor) == []
    assert flavor.statements[-1] == "ROLLBACK"


async def test_required_joins_and_inner_failure_marks_rollback_only(flavor: Flavor) -> None:
    with pytest.raises(RollbackOnlyError, match="rollback-only"):
        async with flavor.enter(transaction(database=flavor.db)) as outer:
            await add(flavor, outer, Account(id=1, owner="ann"))
            try:
                async with flavor.enter(transaction(database=flavor.db)) as inner:
                    assert inner is outer
                    await add(flavor, inner, Account(id=2, owner="bob"))
                    raise ValueError("inner failure")
            except ValueError:
                pass  # swallowing the error does not make committing half the work possible
    assert owners(flavor) == []


async def test_nested_savepoints_three_deep(flavor: Flavor) -> None:
    nested = Propagation.NESTED
    async with flavor.enter(transaction(database=flavor.db)) as session:
        await add(flavor, session, Account(id=1, owner="level0"))
        async with flavor.enter(transaction(database=flavor.db, propagation=nested)):
            await add(flavor, session, Account(id=2, owner="level1"))
            with pytest.raises(DuplicateKeyError):
                async with flavor.enter(transaction(database=flavor.db, propagation=nested)):
                    await add(flavor, session, Account(id=3, owner="level2"))
                    async with flavor.enter(transaction(database=flavor.db, propagation=nested)):
                        await add(flavor, session, Account(id=4, owner="level3"))
                    await add(flavor, session, Account(id=5, owner="level0"))  # duplicate
            # the failed level-2 savepoint (and level 3 inside it) is gone; level 1 continues
            await add(flavor, session, Account(id=6, owner="level1-after"))
    assert owners(flavor) == ["level0", "level1", "level1-after"]
    assert any(s.startswith("ROLLBACK TO SAVEPOINT") for s in flavor.statements)


async def test_nested_swallowed_join_failure_rolls_back_savepoint_only(flavor: Flavor) -> None:
    async with flavor.enter(transaction(database=flavor.db)) as session:
        await add(flavor, session, Account(id=1, owner="kept"))
        with pytest.raises(RollbackOnlyError):
            async with flavor.enter(
                transaction(database=flavor.db, propagation=Propagation.NESTED)
            ):
                await add(flavor, session, Account(id=2, owner="dropped"))
                try:
                    async with flavor.enter(transaction(database=flavor.db)):
                        raise KeyError("x")
                except KeyError:
                    pass
    assert owners(flavor) == ["kept"]


async def test_requires_new_commits_independently(flavor: Flavor) -> None:
    with pytest.raises(RuntimeError):
        async with flavor.enter(transaction(database=flavor.db)) as outer:
            await flavor.run(outer.execute(select(Account)))
            async with flavor.enter(
                transaction(database=flavor.db, propagation=Propagation.REQUIRES_NEW)
            ) as inner:
                assert inner is not outer
                assert current_session() is inner
                await add(flavor, inner, Account(id=1, owner="independent"))
            assert current_session() is outer
            raise RuntimeError("outer fails")
    assert owners(flavor) == ["independent"]


async def test_mandatory_never_supports(flavor: Flavor) -> None:
    db = flavor.db
    with pytest.raises(TransactionRequiredError, match="MANDATORY"):
        async with flavor.enter(transaction(database=db, propagation="mandatory")):
            pass
    async with flavor.enter(transaction(database=db, propagation="supports")) as s:
        assert not in_transaction()
        await flavor.run(s.execute(text("SELECT 1")))
    async with flavor.enter(transaction(database=db)) as outer:
        async with flavor.enter(transaction(database=db, propagation="mandatory")) as inner:
            assert inner is outer
        async with flavor.enter(transaction(database=db, propagation="supports")) as inner:
            assert inner is outer
        with pytest.raises(IllegalTransactionStateError, match="NEVER"):
            async with flavor.enter(transaction(database=db, propagation=Propagation.NEVER)):
                pass
    async with flavor.enter(transaction(database=db, propagation=Propagation.NEVER)) as s:
        assert not in_transaction()


async def test_on_commit_order_and_dropping(flavor: Flavor) -> None:
    calls: list[str] = []
    nested = Propagation.NESTED
    async with flavor.enter(transaction(database=flavor.db)) as session:
        on_commit(lambda: calls.append("outer-1"))
        async with flavor.enter(transaction(database=flavor.db, propagation=nested)):
            on_commit(lambda: calls.append("released-savepoint"))
        assert calls == []  # a savepoint release is not a commit
        with pytest.raises(LookupError):
            async with flavor.enter(transaction(database=flavor.db, propagation=nested)):
                on_commit(lambda: calls.append("rolled-back-savepoint"))
                raise LookupError
        async with flavor.enter(transaction(database=flavor.db)):
            on_commit(lambda: calls.append("joined"))
        await add(flavor, session, Account(id=1, owner="x"))
        assert calls == []
    assert calls == ["outer-1", "released-savepoint", "joined"]
    with pytest.raises(ValueError):
        async with flavor.enter(transaction(database=flavor.db)):
            on_commit(lambda: calls.append("never"))
            raise ValueError
    assert calls == ["outer-1", "released-savepoint", "joined"]


async def test_read_only_rejects_writes_and_leaves_connection_writable(flavor: Flavor) -> None:
    with pytest.raises(ReadOnlyViolation):
        async with flavor.enter(transaction(database=flavor.db, read_only=True)) as session:
            await flavor.run(session.execute(select(Account)))
            await add(flavor, session, Account(id=1, owner="nope"))
    assert owners(flavor) == []
    # the pooled connection comes back writable
    async with flavor.enter(transaction(database=flavor.db)) as session:
        await add(flavor, session, Account(id=2, owner="yes"))
    assert owners(flavor) == ["yes"]
    async with flavor.enter(transaction(database=flavor.db, read_only=True)):
        with pytest.raises(IllegalTransactionStateError, match="read-write"):
            async with flavor.enter(transaction(database=flavor.db, read_only=False)):
                pass


async def test_isolation_applied_validated_and_never_built_from_strings(flavor: Flavor) -> None:
    serializable = IsolationLevel.SERIALIZABLE
    async with flavor.enter(transaction(database=flavor.db, isolation=serializable)) as s:
        if flavor.backend == "postgresql":
            level = await flavor.run(s.execute(text("SHOW transaction_isolation")))
            assert level.scalar() == "serializable"
        with pytest.raises(IllegalTransactionStateError, match="READ COMMITTED"):
            async with flavor.enter(transaction(database=flavor.db, isolation="read committed")):
                pass
    flavor.statements.clear()
    with pytest.raises(InvalidTransactionOption, match="invalid isolation level") as info:
        transaction(database=flavor.db, isolation="READ COMMITTED; DROP TABLE core_accounts")
    assert "SERIALIZABLE" in str(info.value)  # the allowed values are listed
    assert flavor.statements == []
    assert owners(flavor) == []  # the table is still there
    assert IsolationLevel.parse("repeatable_read") is IsolationLevel.REPEATABLE_READ


async def test_timeout(flavor: Flavor) -> None:
    if flavor.backend != "postgresql":
        with pytest.raises(InvalidTransactionOption, match="PostgreSQL only"):
            async with flavor.enter(transaction(database=flavor.db, timeout=0.1)):
                pass
        return
    with pytest.raises(StatementTimeout):
        async with flavor.enter(transaction(database=flavor.db, timeout=0.2)) as s:
            shown = await flavor.run(s.execute(text("SHOW statement_timeout")))
            assert shown.scalar() == "200ms"
            await flavor.run(s.execute(text("SELECT pg_sleep(2)")))
    # SET LOCAL: the next transaction on the pooled connection has no timeout
    async with flavor.enter(transaction(database=flavor.db)) as s:
        shown = await flavor.run(s.execute(text("SHOW statement_timeout")))
        assert shown.scalar() == "0"


async def test_bad_options_are_refused(flavor: Flavor) -> None:
    with pytest.raises(InvalidTransactionOption, match="propagation"):
        transaction(propagation="sometimes")
    with pytest.raises(InvalidTransactionOption, match="timeout"):
        transaction(timeout=-1)
    with pytest.raises(InvalidTransactionOption, match="retries"):
        transaction(retries=-2)
    with pytest.raises(TransactionError, match="decorator form"):
        async with flavor.enter(transaction(database=flavor.db, retries=3)):
            pass
    with pytest.raises(TransactionRequiredError):
        current_session()


async def test_decorator_injects_session_and_joins(flavor: Flavor) -> None:
    db = flavor.db
    if flavor.is_async:

        @transactional(database=db)
        async def create(owner: str, session: Any = None) -> Any:
            session.add(Account(id=len(owner), owner=owner))
            await session.flush()
            return session

        @transactional(database=db)
        async def outer(session: Any = None) -> tuple[Any, Any]:
            return session, await create("inner")

        s1, s2 = await outer()
    else:

        @transactional(database=db)
        def create(owner: str, session: Any = None) -> Any:
            session.add(Account(id=len(owner), owner=owner))
            session.flush()
            return session

        @transaction(database=db)
        def outer(session: Any = None) -> tuple[Any, Any]:
            return session, create("inner")

        s1, s2 = outer()
    assert s1 is s2
    assert owners(flavor) == ["inner"]


async def test_wrong_flavour_database_is_refused(flavor: Flavor) -> None:
    if flavor.is_async:
        with pytest.raises(TransactionError, match="async database"):
            with transaction(database=flavor.db):
                pass
    else:
        with pytest.raises(TransactionError, match="sync database"):
            async with transaction(database=flavor.db):
                pass


async def test_cancelled_task_commits_nothing_and_returns_connection(flavor: Flavor) -> None:
    if not flavor.is_async:
        pytest.skip("task cancellation is an asyncio concern")
    started = asyncio.Event()

    async def work() -> None:
        async with transaction(database=flavor.db) as session:
            session.add(Account(id=1, owner="cancelled"))
            await session.flush()
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert owners(flavor) == []
    assert flavor.db.engine.sync_engine.pool.checkedout() == 0  # type: ignore[union-attr]


async def test_one_transaction_object_in_concurrent_tasks_or_threads(flavor: Flavor) -> None:
    """A module-level ``tx = transaction()`` entered from several tasks/threads at once."""
    import threading

    tx = transaction(database=flavor.db)
    sessions: list[Any] = []
    if flavor.is_async:

        async def worker() -> None:
            async with tx as session:
                await session.execute(text("SELECT 1"))
                await asyncio.sleep(0.01)
                assert current_session() is session
                sessions.append(session)

        await asyncio.gather(*(worker() for _ in range(3)))
        # a child task must not share the parent's AsyncSession
        async with transaction(database=flavor.db):

            async def child() -> None:
                async with transaction(database=flavor.db):
                    pass

            with pytest.raises(IllegalTransactionStateError, match="another task"):
                await asyncio.create_task(child())
    else:
        barrier = threading.Barrier(3)

        def worker() -> None:
            with tx as session:
                session.execute(text("SELECT 1"))
                barrier.wait()
                assert current_session() is session
                sessions.append(session)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len({id(s) for s in sessions}) == 3
