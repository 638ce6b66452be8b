"""IsolatedDatabase / AsyncIsolatedDatabase directly: the SQL a test costs, what gets bound,
what is refused.  One body per scenario, run for both flavours on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import Integer, MetaData, String, create_engine, event, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from repom import database as databases
from repom.database import AsyncDatabase, Database
from repom.exceptions import ConfigurationError, IllegalTransactionStateError, TransactionError
from repom.testing import (
    AsyncIsolatedDatabase,
    IsolatedDatabase,
    capture_on_commit_callbacks,
    resolve_metadata,
)
from repom.testing.fixtures import _per_worker_sqlite
from repom.transactions import on_commit, transaction
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.support import maybe_await


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "rt6_iso_note"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(50))


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def enter(cm: Any, flavour: str = "sync") -> AsyncIterator[Any]:
    """``async with`` for the async flavour (or an async-only object), else ``with``."""
    if flavour == "async" or not hasattr(cm, "__enter__"):
        async with cm as value:
            yield value
    else:
        with cm as value:
            yield value


@asynccontextmanager
async def started(db_url: str, flavour: str, **options: Any) -> AsyncIterator[Any]:
    """A started isolated database of *flavour* (a fresh PostgreSQL schema of its own)."""
    if db_url.startswith("postgresql"):
        options.setdefault("schema", f"rt6_iso_{uuid.uuid4().hex[:10]}")
    cls = AsyncIsolatedDatabase if flavour == "async" else IsolatedDatabase
    isolated = cls(db_url, Base.metadata, **options)
    await maybe_await(isolated.start())
    try:
        yield isolated
    finally:
        await maybe_await(isolated.stop())


def sync_engine(isolated: Any) -> Any:
    return getattr(isolated.engine, "sync_engine", isolated.engine)


def committed_rows(isolated: Any) -> int:
    """Rows a new plain connection sees (PostgreSQL: in the isolated schema)."""
    connect_args = {}
    if isolated.plan.pg_schema:
        connect_args["options"] = f"-c search_path={isolated.plan.pg_schema}"
    url = convert_to_sync_uri(isolated.url)
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Note)) or 0)
    finally:
        engine.dispose()


async def test_a_test_costs_its_own_statements_only(db_url: str, flavour: str) -> None:
    async with started(db_url, flavour) as isolated:
        statements: list[str] = []
        event.listen(
            sync_engine(isolated),
            "before_cursor_execute",
            lambda conn, cursor, statement, *args: statements.append(statement.split()[0]),
        )
        for _ in range(2):  # the second test reuses the pooled connection
            statements.clear()
            async with enter(isolated.isolated_session()) as session:
                session.add(Note(body="x"))
                await maybe_await(session.commit())
            begin = ["BEGIN"] if db_url.startswith("sqlite") else []
            # no BEGIN/ROLLBACK round trip of our own, no savepoint rollback at the end
            assert statements == [*begin, "SAVEPOINT", "INSERT", "RELEASE"]
        statements.clear()
        async with enter(isolated.isolated_session()):
            pass
        assert statements == ([] if db_url.startswith("postgresql") else ["BEGIN"])
        assert committed_rows(isolated) == 0


async def test_one_connection_serves_test_after_test(db_url: str, flavour: str) -> None:
    async with started(db_url, flavour) as isolated:
        checkouts: list[int] = []
        event.listen(sync_engine(isolated), "checkout", lambda *args: checkouts.append(1))
        for n in range(3):
            async with enter(isolated.isolated_session()) as session:
                session.add(Note(body=f"test {n}"))
                await maybe_await(session.commit())
                assert await maybe_await(session.scalar(select(func.count(Note.id)))) == 1
        assert len(checkouts) == 1  # no pool checkout per test
        # what a test does to its Connection (execution options, event listeners) ends with it
        heard: list[str] = []
        async with enter(isolated.isolated_session()) as session:
            conn = await maybe_await(session.connection())
            await maybe_await(conn.execution_options(rt6_marker=True))
            sync_conn = getattr(conn, "sync_connection", conn)
            event.listen(sync_conn, "before_cursor_execute", lambda *args: heard.append(args[2]))
            await maybe_await(session.execute(select(Note.id)))
        assert len(heard) == 1
        async with enter(isolated.isolated_session()) as session:
            conn = await maybe_await(session.connection())
            options = getattr(conn, "sync_connection", conn).get_execution_options()
            assert "rt6_marker" not in options
            await maybe_await(session.execute(select(Note.id)))
        assert len(heard) == 1 and len(checkouts) == 1
        # a test inside a test (nested use of one IsolatedDatabase) gets a connection of its own
        async with enter(isolated.isolated_session()) as outer:
            outer.add(Note(body="outer"))
            await maybe_await(outer.flush())
            async with enter(isolated.isolated_session()) as inner:
                assert inner.bind is not outer.bind
                assert await maybe_await(inner.scalar(select(func.count(Note.id)))) == 0
        assert committed_rows(isolated) == 0


async def test_defaults_are_bound_guarded_and_restored(db_url: str, flavour: str) -> None:
    sync_before = Database("sqlite://")
    async_before = AsyncDatabase("sqlite+aiosqlite://")
    databases.set_database(sync_before)
    databases.set_async_database(async_before)
    try:
        async with started(db_url, flavour) as isolated:
            async with enter(isolated.isolated_session()) as session:
                same = databases.get_async_database() if flavour == "async" else None
                same = same or databases.get_database()
                other = databases.get_database() if flavour == "async" else None
                other = other or databases.get_async_database()
                assert same.bound_connection is session.bind
                fixture = "db_test" if flavour == "async" else "async_db_test"
                with pytest.raises(ConfigurationError, match=f"Use the {fixture} fixture"):
                    other.session()
                # the app's transaction API runs on the test connection
                async with enter(transaction(), flavour) as app_session:
                    app_session.add(Note(body="app"))
                rows = await maybe_await(session.scalar(select(func.count(Note.id))))
                assert rows == 1
            assert committed_rows(isolated) == 0
        assert databases.get_database() is sync_before
        assert databases.get_async_database() is async_before
    finally:
        databases.set_database(None)
        databases.set_async_database(None)


async def test_both_flavours_in_one_test_are_both_bound(sqlite_url: str) -> None:
    sync_db = IsolatedDatabase(sqlite_url, Base.metadata)
    async_db = AsyncIsolatedDatabase(sqlite_url, Base.metadata)
    sync_db.start()
    await async_db.start()
    try:
        with sync_db.isolated_session() as sync_session:
            async with async_db.isolated_session() as async_session:
                assert databases.get_database().bound_connection is sync_session.bind
                assert databases.get_async_database().bound_connection is async_session.bind
            # the async one ended: its default is guarded again, the sync one still bound
            assert databases.get_database().bound_connection is sync_session.bind
            with pytest.raises(ConfigurationError):
                databases.get_async_database().session()
    finally:
        sync_db.stop()
        await async_db.stop()
        databases.set_database(None)
        databases.set_async_database(None)


async def test_extra_databases_are_bound(db_url: str, flavour: str) -> None:
    url = convert_to_async_uri(db_url) if flavour == "async" else db_url
    own = AsyncDatabase(url) if flavour == "async" else Database(url)
    async with started(db_url, flavour, databases=[own]) as isolated:
        async with enter(isolated.isolated_session()) as session:
            async with enter(transaction(database=own), flavour) as app_session:
                app_session.add(Note(body="own database"))
            assert own.bound_connection is session.bind
        assert own.bound_connection is None
        assert committed_rows(isolated) == 0
    await maybe_await(own.dispose())


async def test_committing_the_outer_transaction_is_refused(db_url: str, flavour: str) -> None:
    async with started(db_url, flavour) as isolated:
        async with enter(isolated.isolated_session()) as session:
            session.add(Note(body="must not persist"))
            await maybe_await(session.flush())
            connection = await maybe_await(session.connection())
            with pytest.raises(IllegalTransactionStateError, match="outer transaction cannot"):
                await maybe_await(connection.commit())
        assert committed_rows(isolated) == 0
        async with enter(isolated.isolated_session()) as session:  # a clean connection again
            assert await maybe_await(session.scalar(select(func.count(Note.id)))) == 0


async def test_a_refused_commit_frees_the_sqlite_write_lock_at_teardown(
    sqlite_url: str, flavour: str
) -> None:
    """The refused commit leaves the database transaction open; the connection is discarded at
    teardown.  SQLite defers closing a connection whose statements are still referenced, so
    the write lock would outlive the test (until garbage collection) unless it is rolled back
    first: another connection must be able to write at once."""
    kept: list[Any] = []

    def write_and_commit(session: Any) -> None:
        conn = session.connection()
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.executemany("INSERT INTO rt6_iso_note (body) VALUES (?)", [("a",), ("b",)])
        cursor.execute("SELECT body FROM rt6_iso_note")
        cursor.fetchone()  # a statement in progress, still referenced (a traceback may keep one)
        kept.append(cursor)
        with pytest.raises(IllegalTransactionStateError, match="outer transaction cannot"):
            conn.commit()

    async with started(sqlite_url, flavour) as isolated:
        async with enter(isolated.isolated_session()) as session:
            if flavour == "async":
                await session.run_sync(write_and_commit)
            else:
                write_and_commit(session)
        probe = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")  # "database is locked" while the lock lives on
            probe.rollback()
        finally:
            probe.close()
        assert committed_rows(isolated) == 0
    kept.clear()


async def test_capture_on_commit_callbacks(sqlite_url: str, flavour: str) -> None:
    ran: list[str] = []

    async def async_callback() -> None:
        ran.append("async")

    async with started(sqlite_url, flavour) as isolated:
        async with enter(isolated.isolated_session()):
            async with enter(capture_on_commit_callbacks(), flavour) as captured:
                async with enter(transaction(), flavour):
                    on_commit(lambda: ran.append("committed"))
                with pytest.raises(RuntimeError):
                    async with enter(transaction(), flavour):
                        on_commit(lambda: ran.append("rolled back"))
                        raise RuntimeError
                on_commit(lambda: ran.append("no transaction"))
            assert ran == [] and len(captured) == 2
            with pytest.raises(KeyError):
                async with enter(capture_on_commit_callbacks(execute=True), flavour):
                    on_commit(lambda: ran.append("block failed"))
                    raise KeyError
            assert ran == []
            async with enter(capture_on_commit_callbacks(execute=True), flavour) as captured:
                async with enter(transaction(), flavour):
                    on_commit(async_callback if flavour == "async" else lambda: ran.append("s"))
            assert ran == (["async"] if flavour == "async" else ["s"]) and len(captured) == 1
    # outside the block callbacks run as usual again
    on_commit(lambda: ran.append("after"))
    assert ran[-1] == "after"


def test_sync_capture_refuses_async_callbacks() -> None:
    async def callback() -> None:
        raise AssertionError("must not run")

    with pytest.raises(TransactionError, match="async with capture_on_commit_callbacks"):
        with capture_on_commit_callbacks(execute=True):
            on_commit(callback)


@pytest.mark.parametrize("name", ["Bad-Name", "drop table x;", "1abc", "a" * 64, ""])
def test_bad_schema_name_is_refused(pg_url: str, name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid test schema name"):
        IsolatedDatabase(pg_url, Base.metadata, schema=name)


def test_bad_arguments_name_the_problem(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="metadata= expects a sqlalchemy MetaData"):
        IsolatedDatabase(sqlite_url, metadata="Base")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="alembic= expects a path"):
        IsolatedDatabase(sqlite_url, alembic=42)
    with pytest.raises(ConfigurationError, match="not started"):
        _ = IsolatedDatabase(sqlite_url).engine
    with pytest.raises(ConfigurationError, match=r"must look like 'package\.module:attribute'"):
        resolve_metadata("no_colon_here")
    with pytest.raises(ConfigurationError, match="metadata= expects a MetaData"):
        resolve_metadata(42)


def test_metadata_forms() -> None:
    assert resolve_metadata(Base) is Base.metadata
    assert resolve_metadata(Base.metadata) is Base.metadata
    assert resolve_metadata(lambda: Base) is Base.metadata
    assert resolve_metadata(f"{__name__}:Base") is Base.metadata
    assert resolve_metadata(f"{__name__}:Base.metadata") is Base.metadata


def test_ambiguous_metadata_names_the_candidates() -> None:
    class Other(DeclarativeBase):
        metadata = MetaData()

    class Thing(Other):
        __tablename__ = "rt6_iso_other_thing"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError, match="rt6_iso_other_thing") as info:
        resolve_metadata(None)
    assert "rt6_iso_note" in str(info.value) and "repom_metadata" in str(info.value)


def test_sqlite_file_per_xdist_worker() -> None:
    assert _per_worker_sqlite("sqlite:////tmp/x/test.db", "gw1") == "sqlite:////tmp/x/test_gw1.db"
    assert _per_worker_sqlite("sqlite://", "gw1") == "sqlite://"
    assert _per_worker_sqlite("sqlite+aiosqlite:///rel.sqlite3", "gw0") == (
        "sqlite+aiosqlite:///rel_gw0.sqlite3"
    )


async def test_read_only_scope_in_bound_mode_leaves_the_test_writable(
    db_url: str, flavour: str
) -> None:
    from repom.exceptions import ReadOnlyViolation

    async with started(db_url, flavour) as isolated:
        async with enter(isolated.isolated_session()) as session:
            async with enter(transaction(read_only=True), flavour) as reader:
                await maybe_await(reader.execute(text("SELECT 1")))
            with pytest.raises(ReadOnlyViolation):
                async with enter(transaction(read_only=True), flavour) as reader:
                    reader.add(Note(body="read-only"))
                    await maybe_await(reader.flush())
            session.add(Note(body="written"))
            await maybe_await(session.commit())
            assert await maybe_await(session.scalar(select(func.count(Note.id)))) == 1
