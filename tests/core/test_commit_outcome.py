"""A connection lost during COMMIT is ``CommitOutcomeUnknown``: never retried unless the caller
declares the work idempotent.  Definite answers at COMMIT keep their own types.

The connection drops are real: ``pg_terminate_backend`` of the session's server process from a
second connection right before COMMIT (the server never sees the COMMIT, but the client cannot
know that), and a TCP proxy that lets the COMMIT through and drops the server's answer (the
transaction *is* committed and the client cannot know that either).  Every scenario body runs on
psycopg (sync) and asyncpg (async); the definite-refusal ones on SQLite as well, and the
connection drop on MySQL/MariaDB (KILL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy import exc as sa_exc

from repom.database import AsyncDatabase, Database
from repom.exceptions import (
    CommitOutcomeUnknown,
    ConnectionLost,
    DatabaseError,
    ForeignKeyViolationError,
    IdleInTransactionTimeout,
    RetryableError,
    SerializationFailure,
    translate,
)
from repom.retry import is_retryable, retry_on_database_error
from repom.transactions import transaction
from repom.urls import convert_to_async_uri
from tests.core.conftest import Flavor
from tests.core.models import Account
from tests.support import maybe_await, require_mysql
from tests.support.network import CommitDropProxy, terminate_backend

PG = pytest.mark.parametrize("flavor", ["postgresql-sync", "postgresql-async"], indirect=True)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a scenario coroutine whose awaits are all on plain values (the sync flavour)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("sync scenario body awaited something asynchronous")


async def run_retried(
    flavor: Flavor, body: Callable[[], Coroutine[Any, Any, None]], **options: Any
) -> None:
    """``body`` under ``@retry_on_database_error`` as an async function or a sync one."""
    deco = retry_on_database_error(max_retries=3, delay=0.001, max_delay=0.01, **options)
    if flavor.is_async:

        @deco
        async def work_async() -> None:
            await body()

        await work_async()
    else:

        @deco
        def work_sync() -> None:
            drive(body())

        work_sync()


async def backend_pid(flavor: Flavor, executor: Any) -> int:
    result = await flavor.run(executor.execute(text("SELECT pg_backend_pid()")))
    return int(result.scalar_one())


async def add_and_flush(flavor: Flavor, session: Any, n: int) -> None:
    session.add(Account(id=n, owner=f"owner{n}", balance=n))
    await flavor.run(session.flush())  # the INSERT is done: only COMMIT is left


def assert_commit_outcome_unknown(err: BaseException) -> None:
    assert isinstance(err, CommitOutcomeUnknown)
    # still the SQLAlchemy error it replaces, but not a retryable/connection-lost one
    assert isinstance(err, sa_exc.OperationalError) and isinstance(err, DatabaseError)
    assert not isinstance(err, RetryableError | ConnectionLost)
    assert getattr(err, "during_commit", False) is True
    assert not is_retryable(err) and is_retryable(err, idempotent=True)
    assert err.__cause__ is err.orig and err.orig is not None
    assert "may or may not have been committed" in str(err)
    assert "INSERT" not in str(err) and "COMMIT;" not in str(err)


# --------------------------------------------------------------------------- connection killed


@PG
async def test_session_commit_on_a_killed_connection(flavor: Flavor) -> None:
    session = flavor.db.session()
    try:
        await add_and_flush(flavor, session, 1)
        terminate_backend(flavor.verify, await backend_pid(flavor, session))
        with pytest.raises(CommitOutcomeUnknown) as info:
            await flavor.run(session.commit())
    finally:
        await flavor.run(session.close())
    assert_commit_outcome_unknown(info.value)
    # the server ended the session before the COMMIT arrived: nothing was written -- but only
    # the server can tell
    assert flavor.rows("SELECT id FROM core_accounts") == []


@PG
async def test_connection_commit_on_a_killed_connection(flavor: Flavor) -> None:
    conn = await flavor.run(flavor.db.engine.connect())
    try:
        await flavor.run(
            conn.execute(text("INSERT INTO core_accounts (id, owner, balance) VALUES (1, 'a', 1)"))
        )
        terminate_backend(flavor.verify, await backend_pid(flavor, conn))
        with pytest.raises(CommitOutcomeUnknown) as info:
            await flavor.run(conn.commit())
    finally:
        await flavor.run(conn.close())
    assert_commit_outcome_unknown(info.value)
    assert flavor.rows("SELECT id FROM core_accounts") == []


@PG
async def test_transaction_scope_commit_on_a_killed_connection(flavor: Flavor) -> None:
    with pytest.raises(CommitOutcomeUnknown) as info:
        async with flavor.enter(transaction(database=flavor.db)) as session:
            await add_and_flush(flavor, session, 1)
            terminate_backend(flavor.verify, await backend_pid(flavor, session))
    assert_commit_outcome_unknown(info.value)
    assert flavor.rows("SELECT id FROM core_accounts") == []


@PG
@pytest.mark.parametrize("idempotent", [False, True], ids=["default", "idempotent"])
async def test_retry_does_not_repeat_a_commit_with_unknown_outcome(
    flavor: Flavor, idempotent: bool
) -> None:
    attempts: list[int] = []

    async def body() -> None:
        attempts.append(len(attempts) + 1)
        session = flavor.db.session()
        try:
            await add_and_flush(flavor, session, len(attempts))
            if len(attempts) == 1:
                terminate_backend(flavor.verify, await backend_pid(flavor, session))
            await flavor.run(session.commit())
        finally:
            await flavor.run(session.close())

    if idempotent:
        await run_retried(flavor, body, idempotent=True)
        assert attempts == [1, 2]
        assert flavor.rows("SELECT id FROM core_accounts") == [(2,)]
    else:
        with pytest.raises(CommitOutcomeUnknown):
            await run_retried(flavor, body)
        assert attempts == [1]
        assert flavor.rows("SELECT id FROM core_accounts") == []


# --------------------------------------------------------------------------- answer lost


def proxied_database(flavor: Flavor, proxy: CommitDropProxy) -> Database | AsyncDatabase:
    url = make_url(flavor.url).set(host="127.0.0.1", port=proxy.port)
    rendered = url.render_as_string(hide_password=False)
    if flavor.is_async:
        return AsyncDatabase(convert_to_async_uri(rendered), connect_args={"ssl": False})
    return Database(rendered, connect_args={"sslmode": "disable"})


@PG
@pytest.mark.parametrize("idempotent", [False, True], ids=["default", "idempotent"])
async def test_commit_applied_but_its_answer_lost(flavor: Flavor, idempotent: bool) -> None:
    """The case the type exists for: the server committed, the client got a dropped
    connection.  Retrying by default would write twice."""
    url = make_url(flavor.url)
    attempts: list[int] = []
    with CommitDropProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        db = proxied_database(flavor, proxy)

        async def body() -> None:
            attempts.append(len(attempts) + 1)
            session = db.session()
            try:
                await add_and_flush(flavor, session, len(attempts))
                if len(attempts) == 1:
                    proxy.arm()
                await flavor.run(session.commit())
            finally:
                await flavor.run(session.close())

        try:
            if idempotent:
                await run_retried(flavor, body, idempotent=True)
            else:
                with pytest.raises(CommitOutcomeUnknown) as info:
                    await run_retried(flavor, body)
                assert_commit_outcome_unknown(info.value)
        finally:
            await flavor.run(db.dispose())
        assert proxy.dropped.is_set()
    if idempotent:
        # idempotent=True is the caller's promise; this body breaks it and writes twice
        assert attempts == [1, 2]
        assert flavor.rows("SELECT id FROM core_accounts ORDER BY id") == [(1,), (2,)]
    else:
        assert attempts == [1]
        assert flavor.rows("SELECT id FROM core_accounts") == [(1,)]  # it WAS committed


# --------------------------------------------------------------------------- 25P03


@PG
@pytest.mark.parametrize("where", ["statement", "commit"])
async def test_idle_in_transaction_timeout(flavor: Flavor, where: str) -> None:
    session = flavor.db.session()
    try:
        await flavor.run(session.execute(text("SET idle_in_transaction_session_timeout = '50ms'")))
        await add_and_flush(flavor, session, 1)
        await asyncio.sleep(0.3)  # the server ends the session after 50 ms idle in transaction
        with pytest.raises(DatabaseError) as info:
            if where == "statement":
                await flavor.run(session.execute(text("SELECT 1")))
            else:
                await flavor.run(session.commit())
    finally:
        await flavor.run(session.close())
    err = info.value
    if not flavor.is_async:
        # psycopg reads the server's FATAL: a definite rollback, even in answer to COMMIT
        assert type(err) is IdleInTransactionTimeout and err.sqlstate == "25P03"
        assert isinstance(err, ConnectionLost) and is_retryable(err)
        assert "idle_in_transaction_session_timeout" in str(err)
        assert getattr(err, "during_commit", False) is (where == "commit")
    elif where == "statement":
        # asyncpg discards a server message that arrives while no statement runs: all it
        # knows is that the connection is closed
        assert type(err) is ConnectionLost and is_retryable(err)
    else:
        assert_commit_outcome_unknown(err)
    assert flavor.rows("SELECT id FROM core_accounts") == []


# --------------------------------------------------------------------------- definite answers


@pytest.mark.parametrize(
    "flavor",
    ["sqlite-sync", "sqlite-async", "postgresql-sync", "postgresql-async"],
    indirect=True,
)
async def test_deferred_constraint_at_commit_keeps_its_type(flavor: Flavor) -> None:
    with flavor.verify.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE core_deferred (id INTEGER PRIMARY KEY, account_id INTEGER "
                "REFERENCES core_accounts (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    try:
        session = flavor.db.session()
        try:
            await flavor.run(
                session.execute(text("INSERT INTO core_deferred (id, account_id) VALUES (1, 999)"))
            )  # accepted: the foreign key is checked at COMMIT
            with pytest.raises(ForeignKeyViolationError) as info:
                await flavor.run(session.commit())
        finally:
            await flavor.run(session.close())
        err = info.value
        assert not isinstance(err, CommitOutcomeUnknown)
        assert getattr(err, "during_commit", False) is True
        assert not is_retryable(err, idempotent=True)
        assert flavor.rows("SELECT id FROM core_deferred") == []
    finally:
        with flavor.verify.begin() as conn:
            conn.execute(text("DROP TABLE core_deferred"))


@PG
async def test_serialization_failure_at_commit_keeps_its_type(flavor: Flavor) -> None:
    with flavor.verify.begin() as conn:
        conn.execute(text("INSERT INTO core_accounts VALUES (1, 'a', 500), (2, 'b', 500)"))
    with pytest.raises(SerializationFailure) as info:
        async with flavor.enter(
            transaction(database=flavor.db, isolation="SERIALIZABLE")
        ) as session:
            # write skew: each transaction reads what the other one writes
            await flavor.run(
                session.execute(text("SELECT SUM(balance) FROM core_accounts WHERE balance > 0"))
            )
            with flavor.verify.connect().execution_options(isolation_level="SERIALIZABLE") as other:
                other.execute(text("SELECT SUM(balance) FROM core_accounts WHERE balance > 0"))
                other.execute(text("INSERT INTO core_accounts VALUES (3, 'c', 1)"))
                await flavor.run(
                    session.execute(text("INSERT INTO core_accounts VALUES (4, 'd', 1)"))
                )
                other.commit()
            # this transaction's COMMIT is refused: a definite answer, rolled back
    err = info.value
    assert err.sqlstate == "40001" and getattr(err, "during_commit", False) is True
    assert not isinstance(err, CommitOutcomeUnknown) and is_retryable(err)
    assert flavor.rows("SELECT id FROM core_accounts ORDER BY id") == [(1,), (2,), (3,)]


@PG
async def test_statement_completion_unknown_40003(flavor: Flavor) -> None:
    """CockroachDB's 40003, raised for real by the server (PL/pgSQL ``RAISE``), through both
    drivers: CommitOutcomeUnknown wherever it appears, and not retried."""
    attempts: list[int] = []

    async def body() -> None:
        attempts.append(1)
        async with flavor.enter(transaction(database=flavor.db)) as session:
            await flavor.run(
                session.execute(
                    text(
                        "DO $$ BEGIN RAISE EXCEPTION 'result is ambiguous' "
                        "USING ERRCODE = '40003'; END $$"
                    )
                )
            )

    with pytest.raises(CommitOutcomeUnknown) as info:
        await run_retried(flavor, body)
    assert attempts == [1]
    err = info.value
    assert err.sqlstate == "40003" and "statement_completion_unknown" in str(err)
    assert isinstance(err, sa_exc.OperationalError) and not isinstance(err, RetryableError)
    assert not is_retryable(err) and is_retryable(err, idempotent=True)


def test_connection_lost_marked_during_commit_is_commit_outcome_unknown() -> None:
    """A session on an engine repom did not build: the transaction scope marks the
    ConnectionLost it translated from COMMIT; the retry and the HTTP mapping treat it as
    CommitOutcomeUnknown (via translate), except 25P03, whose rollback is certain."""
    lost = ConnectionLost("connection to the database lost", sqlstate="08006")
    lost.__dict__["during_commit"] = True
    unknown = translate(lost)
    assert isinstance(unknown, CommitOutcomeUnknown) and unknown.sqlstate == "08006"
    assert unknown.__cause__ is lost
    assert not is_retryable(lost) and is_retryable(lost, idempotent=True)
    assert isinstance(translate(ConnectionLost("x"), during_commit=True), CommitOutcomeUnknown)
    idle = IdleInTransactionTimeout("idle", sqlstate="25P03")
    assert translate(idle, during_commit=True) is idle and is_retryable(idle)


@pytest.mark.parametrize("is_async", [False, True], ids=["pymysql", "aiomysql"])
async def test_mysql_connection_killed_before_commit(is_async: bool) -> None:
    """MySQL/MariaDB: errors 2006/2013 during COMMIT are CommitOutcomeUnknown too."""
    url = require_mysql()
    verify = create_engine(url)
    with verify.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS core_commit_probe"))
        conn.execute(text("CREATE TABLE core_commit_probe (id INTEGER PRIMARY KEY)"))
    db: Database | AsyncDatabase = (
        AsyncDatabase(convert_to_async_uri(url)) if is_async else Database(url)
    )
    try:
        session = db.session()
        try:
            await maybe_await(session.execute(text("INSERT INTO core_commit_probe VALUES (1)")))
            result = await maybe_await(session.execute(text("SELECT CONNECTION_ID()")))
            with verify.connect() as admin:
                admin.execute(text(f"KILL {int(result.scalar_one())}"))
            with pytest.raises(CommitOutcomeUnknown) as info:
                await maybe_await(session.commit())
        finally:
            await maybe_await(session.close())
        assert_commit_outcome_unknown(info.value)
        with verify.connect() as conn:
            assert conn.execute(text("SELECT id FROM core_commit_probe")).all() == []
    finally:
        await maybe_await(db.dispose())
        with verify.begin() as conn:
            conn.execute(text("DROP TABLE core_commit_probe"))
        verify.dispose()
