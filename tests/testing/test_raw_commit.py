"""Raw transaction control in code under test: a literal ``COMMIT``/``ROLLBACK``/``BEGIN`` sent as
SQL on an isolated test's connection is refused with :class:`IsolationViolation` before it reaches
the database, so nothing escapes the test; the session/transaction API and savepoints still work.
One body per scenario, run for both flavours on SQLite and PostgreSQL (psycopg and asyncpg)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import Integer, String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from repom.exceptions import IllegalTransactionStateError, IsolationViolation
from repom.testing import AsyncIsolatedDatabase, IsolatedDatabase
from repom.testing.raw_sql import transaction_control
from repom.transactions import transaction
from repom.urls import convert_to_sync_uri
from tests.support import maybe_await


class Base(DeclarativeBase):
    pass


class Entry(Base):
    __tablename__ = "rt14_raw_entry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# what a test might send, and what it is refused as
REFUSED = {
    "COMMIT": "COMMIT",
    "  commit;": "COMMIT",
    "/* app */ Commit Work ;": "COMMIT",
    "-- finish\nEND": "END",
    "COMMIT AND CHAIN": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "rollback work": "ROLLBACK",
    "ABORT": "ABORT",
    "BEGIN": "BEGIN",
    "START TRANSACTION": "START TRANSACTION",
    "PREPARE TRANSACTION 'rt14'": "PREPARE TRANSACTION",
    "INSERT INTO rt14_raw_entry (name) VALUES ('multi'); COMMIT": "COMMIT",
}


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def enter(cm: Any, flavour: str) -> AsyncIterator[Any]:
    if flavour == "async":
        async with cm as value:
            yield value
    else:
        with cm as value:
            yield value


@asynccontextmanager
async def started(db_url: str, flavour: str) -> AsyncIterator[Any]:
    """A started isolated database of *flavour* (PostgreSQL: a fresh schema of its own)."""
    options: dict[str, Any] = {}
    if db_url.startswith("postgresql"):
        options["schema"] = f"rt14_raw_{uuid.uuid4().hex[:10]}"
    cls = AsyncIsolatedDatabase if flavour == "async" else IsolatedDatabase
    isolated = cls(db_url, Base.metadata, **options)
    await maybe_await(isolated.start())
    try:
        yield isolated
    finally:
        await maybe_await(isolated.stop())


def committed_names(isolated: Any) -> list[str]:
    """What a new plain connection sees: what was really committed."""
    connect_args = {}
    if isolated.plan.pg_schema:
        connect_args["options"] = f"-c search_path={isolated.plan.pg_schema}"
    engine = create_engine(
        convert_to_sync_uri(isolated.url), poolclass=NullPool, connect_args=connect_args
    )
    try:
        with engine.connect() as conn:
            return sorted(conn.scalars(select(Entry.name)))
    finally:
        engine.dispose()


async def names(session: Any) -> list[str]:
    return sorted(await maybe_await(session.scalars(select(Entry.name))))


async def test_raw_transaction_control_is_refused_and_nothing_escapes(
    db_url: str, flavour: str
) -> None:
    async with started(db_url, flavour) as isolated:
        for statement, word in REFUSED.items():
            async with enter(isolated.isolated_session(), flavour) as session:
                session.add(Entry(name="test"))
                await maybe_await(session.flush())
                with pytest.raises(IsolationViolation) as refused:
                    await maybe_await(session.execute(text(statement)))
                message = str(refused.value)
                assert message.startswith(f"{word} sent as raw SQL is refused"), message
                assert "rolled back at teardown" in message
                assert "session.commit()" in message and "savepoint" in message
                assert "rt14" not in message  # the statement text itself is not echoed
                # refused before it was sent: the test's transaction goes on
                assert await names(session) == ["test"]
            assert committed_names(isolated) == [], statement


async def test_app_code_on_its_connection_is_refused(db_url: str, flavour: str) -> None:
    """``conn.exec_driver_sql("commit")`` inside the app's own ``transaction()``."""
    async with started(db_url, flavour) as isolated:
        async with enter(isolated.isolated_session(), flavour) as session:
            with pytest.raises(IsolationViolation, match="outer transaction"):
                async with enter(transaction(), flavour) as app_session:
                    app_session.add(Entry(name="app"))
                    await maybe_await(app_session.flush())
                    conn = await maybe_await(app_session.connection())
                    await maybe_await(conn.exec_driver_sql("commit"))
            assert await names(session) == []  # the app's scope rolled back its savepoint
            with pytest.raises(IllegalTransactionStateError):  # the base class catches it too
                await maybe_await(session.execute(text("END")))
        assert committed_names(isolated) == []


async def test_api_commit_and_savepoints_work_around_a_refusal(db_url: str, flavour: str) -> None:
    async with started(db_url, flavour) as isolated:
        async with enter(isolated.isolated_session(), flavour) as session:
            session.add(Entry(name="before"))
            await maybe_await(session.commit())  # a savepoint release
            with pytest.raises(IsolationViolation):
                await maybe_await(session.execute(text("COMMIT")))
            # SQLAlchemy's ROLLBACK TO SAVEPOINT (begin_nested, then rollback)
            nested = await maybe_await(session.begin_nested())
            session.add(Entry(name="nested-gone"))
            await maybe_await(session.flush())
            await maybe_await(nested.rollback())
            session.add(Entry(name="rolled-back"))
            await maybe_await(session.flush())
            await maybe_await(session.rollback())  # the session's own savepoint
            # savepoint statements sent as raw SQL pass
            await maybe_await(session.execute(text("SAVEPOINT rt14_sp")))
            await maybe_await(
                session.execute(text("INSERT INTO rt14_raw_entry (name) VALUES ('x')"))
            )
            await maybe_await(session.execute(text("ROLLBACK TO SAVEPOINT rt14_sp")))
            await maybe_await(session.execute(text("RELEASE SAVEPOINT rt14_sp")))
            async with enter(transaction(), flavour) as app_session:  # the app's commit
                app_session.add(Entry(name="app"))
            session.add(Entry(name="after"))
            await maybe_await(session.commit())
            assert await names(session) == ["after", "app", "before"]
        assert committed_names(isolated) == []


async def test_committing_the_outer_transaction_is_an_isolation_violation(
    db_url: str, flavour: str
) -> None:
    async with started(db_url, flavour) as isolated:
        async with enter(isolated.isolated_session(), flavour) as session:
            session.add(Entry(name="x"))
            await maybe_await(session.flush())
            conn = await maybe_await(session.connection())
            with pytest.raises(IsolationViolation, match="outer transaction cannot be committed"):
                await maybe_await(conn.commit())
        assert committed_names(isolated) == []


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        *REFUSED.items(),
        ("SELECT 1;\n-- done\n  end;", "END"),
        ("SELECT $$a$$; COMMIT", "COMMIT"),
        ("SELECT E'it\\'s'; ROLLBACK", "ROLLBACK"),
        ("CREATE TABLE t (begin int); COMMIT", "COMMIT"),
        ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 1; END; COMMIT", "COMMIT"),
        # savepoints and settings leave the transaction running
        ("SAVEPOINT sa_savepoint_1", None),
        ("RELEASE SAVEPOINT sa_savepoint_1", None),
        ("ROLLBACK TO SAVEPOINT sa_savepoint_1", None),
        ("rollback work to sp", None),
        ("SET TRANSACTION READ ONLY", None),
        ("PREPARE q AS SELECT 1", None),
        # COMMIT that is not a statement
        ("SELECT 'COMMIT'", None),
        ("SELECT 'a; COMMIT'", None),
        ("SELECT 1; -- COMMIT", None),
        ('SELECT "end" FROM t', None),
        ("SELECT CASE WHEN true THEN 1 END; SELECT 2", None),
        ("DO $$ BEGIN PERFORM 1; END $$", None),
        ("CREATE FUNCTION f() RETURNS int AS $b$ BEGIN RETURN 1; END; $b$ LANGUAGE plpgsql", None),
        (
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN "
            "UPDATE t SET x = CASE WHEN 1 THEN 2 END; END",
            None,
        ),
        ("CREATE PROCEDURE p() BEGIN IF 1 THEN SELECT 1; END IF; END", None),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", None),
    ],
)
def test_what_counts_as_transaction_control(sql: str, found: str | None) -> None:
    assert transaction_control(sql) == found
