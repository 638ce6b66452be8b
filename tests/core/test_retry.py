"""Whole-transaction retry, provoked with real concurrent transactions on PostgreSQL."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update

from repom.exceptions import (
    DuplicateKeyError,
    IllegalTransactionStateError,
    RetryableError,
    SerializationFailure,
)
from repom.retry import RetryPolicy, is_retryable, retry_on_database_error
from repom.transactions import IsolationLevel, transaction, transactional
from tests.core.conftest import Flavor
from tests.core.models import Account

FAST = RetryPolicy(max_retries=5, delay=0.001, max_delay=0.01)


def interfere(flavor: Flavor) -> None:
    """Another client commits a change to account 1 behind the transaction's back."""
    with flavor.verify.begin() as conn:
        conn.execute(text("UPDATE core_accounts SET balance = balance + 1 WHERE id = 1"))


async def seed(flavor: Flavor, *accounts: Account) -> None:
    async with flavor.enter(transaction(database=flavor.db)) as s:
        s.add_all(accounts)


def pg_only(flavor: Flavor) -> None:
    if flavor.backend != "postgresql":
        pytest.skip("serialization failures are provoked on PostgreSQL")


async def test_serialization_failure_retries_whole_function(flavor: Flavor) -> None:
    pg_only(flavor)
    await seed(flavor, Account(id=1, owner="a", balance=100))
    attempts: list[int] = []

    async def body(session: Any) -> None:
        attempts.append(1)
        acc = (
            await flavor.run(session.execute(select(Account).where(Account.id == 1)))
        ).scalar_one()
        if len(attempts) == 1:
            interfere(flavor)  # makes this attempt's UPDATE fail with SQLSTATE 40001
        acc.balance -= 10
        await flavor.run(session.flush())

    deco = transactional(database=flavor.db, isolation=IsolationLevel.SERIALIZABLE, retries=FAST)
    if flavor.is_async:

        @deco
        async def work(session: Any = None) -> None:
            await body(session)

        await work()
    else:

        @deco
        def work(session: Any = None) -> None:
            _run_sync(body, session)

        work()
    assert len(attempts) == 2
    assert flavor.rows("SELECT balance FROM core_accounts") == [(91,)]


def _run_sync(body: Any, session: Any) -> None:
    """Drive a scenario coroutine whose awaits are all on plain values (sync flavour)."""
    coro = body(session)
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("sync scenario body awaited something asynchronous")


async def test_without_retries_the_failure_surfaces(flavor: Flavor) -> None:
    pg_only(flavor)
    await seed(flavor, Account(id=1, owner="a", balance=100))
    with pytest.raises(SerializationFailure) as info:
        async with flavor.enter(
            transaction(database=flavor.db, isolation="SERIALIZABLE")
        ) as session:
            await flavor.run(session.execute(select(Account)))
            interfere(flavor)
            await flavor.run(
                session.execute(update(Account).where(Account.id == 1).values(balance=0))
            )
    assert info.value.sqlstate == "40001"
    assert is_retryable(info.value)
    assert flavor.rows("SELECT balance FROM core_accounts") == [(101,)]


async def test_integrity_errors_are_not_retried(flavor: Flavor) -> None:
    await seed(flavor, Account(id=1, owner="a"))
    attempts: list[int] = []
    deco = transactional(database=flavor.db, retries=FAST)
    if flavor.is_async:

        @deco
        async def dup(session: Any = None) -> None:
            attempts.append(1)
            session.add(Account(id=2, owner="a"))
            await session.flush()

        with pytest.raises(DuplicateKeyError):
            await dup()
    else:

        @deco
        def dup(session: Any = None) -> None:
            attempts.append(1)
            session.add(Account(id=2, owner="a"))
            session.flush()

        with pytest.raises(DuplicateKeyError):
            dup()
    assert attempts == [1]


async def test_retry_refused_inside_a_transaction_it_did_not_open(flavor: Flavor) -> None:
    deco = transactional(database=flavor.db, retries=2)
    seed_deco = retry_on_database_error(max_retries=2)
    if flavor.is_async:

        @deco
        async def inner() -> None: ...

        @seed_deco
        async def seeded() -> None: ...

        async with transaction(database=flavor.db):
            with pytest.raises(IllegalTransactionStateError, match="did not open"):
                await inner()
            with pytest.raises(IllegalTransactionStateError, match="did not open"):
                await seeded()
        await inner()  # fine at the top level
    else:

        @deco
        def inner() -> None: ...

        @seed_deco
        def seeded() -> None: ...

        with transaction(database=flavor.db):
            with pytest.raises(IllegalTransactionStateError, match="did not open"):
                inner()
            with pytest.raises(IllegalTransactionStateError, match="did not open"):
                seeded()
        inner()


def test_backoff_is_capped_full_jitter() -> None:
    policy = RetryPolicy(max_retries=10, delay=0.1, backoff_factor=2, max_delay=1.0, jitter=False)
    assert [policy.wait_before(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    jittered = RetryPolicy(delay=0.1, backoff_factor=2, max_delay=1.0)
    assert all(0 <= jittered.wait_before(3) <= 0.4 for _ in range(100))


# ------------------------------------------------------------------ the concurrency proof

WORKERS, TRANSFERS, ACCOUNTS, START = 8, 250, 20, 1000


def _transfer_plan(seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    plan = []
    for _ in range(TRANSFERS):
        a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
        plan.append((a, b, rng.randint(1, 50)))
    return plan


def _setup_accounts(url: str) -> Any:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM core_accounts"))
        conn.execute(
            Account.__table__.insert(),
            [{"id": i, "owner": f"acc{i}", "balance": START} for i in range(1, ACCOUNTS + 1)],
        )
    return engine


def _totals(engine: Any) -> tuple[int, int]:
    with engine.connect() as conn:
        total, negative = conn.execute(
            text(
                "SELECT SUM(balance), SUM(CASE WHEN balance < 0 THEN 1 ELSE 0 END) "
                "FROM core_accounts"
            )
        ).one()
    return int(total), int(negative)


def transfer_sync(session: Any, src: int, dst: int, amount: int) -> None:
    accounts = {
        a.id: a
        for a in session.execute(select(Account).where(Account.id.in_([src, dst]))).scalars()
    }
    if accounts[src].balance < amount:
        raise ValueError("insufficient funds")
    accounts[src].balance -= amount
    accounts[dst].balance += amount


@pytest.mark.parametrize("retries", [25, 0], ids=["with-retries", "without-retries"])
def test_concurrent_serializable_transfers(pg_url: str, retries: int, flavor_stats: dict) -> None:
    """8 threads x 250 random transfers between 20 accounts at SERIALIZABLE."""
    from repom.database import Database
    from repom.retry import retry_listeners
    from tests.core.models import CoreBase

    verify = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    CoreBase.metadata.create_all(verify)
    _setup_accounts(str(verify.url.render_as_string(hide_password=False)))
    db = Database(verify.url, pool_size=WORKERS, max_overflow=0)
    retried: list[int] = []
    listener = lambda attempt, error: retried.append(attempt)  # noqa: E731
    retry_listeners.append(listener)
    outcomes: dict[str, int] = {"committed": 0, "insufficient": 0, "failed": 0}
    lock = threading.Lock()

    @transactional(
        database=db,
        isolation=IsolationLevel.SERIALIZABLE,
        retries=RetryPolicy(max_retries=retries, delay=0.002, max_delay=0.1),
    )
    def transfer(src: int, dst: int, amount: int, session: Any = None) -> None:
        transfer_sync(session, src, dst, amount)

    def worker(n: int) -> None:
        for src, dst, amount in _transfer_plan(n):
            try:
                transfer(src, dst, amount)
                key = "committed"
            except ValueError:
                key = "insufficient"
            except RetryableError:  # serialization failure or deadlock that was not retried
                key = "failed"
            with lock:
                outcomes[key] += 1

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        retry_listeners.remove(listener)
        db.dispose()
    total, negative = _totals(verify)
    CoreBase.metadata.drop_all(verify)
    verify.dispose()
    assert total == ACCOUNTS * START and negative == 0
    assert sum(outcomes.values()) == WORKERS * TRANSFERS
    flavor_stats[f"retries={retries}"] = {**outcomes, "retries": len(retried)}
    if retries:
        assert outcomes["failed"] == 0
    else:
        assert outcomes["failed"] > 0  # what the retries prevent
