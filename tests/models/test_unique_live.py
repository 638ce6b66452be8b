"""``unique_live``: a unique index among rows that are not soft-deleted, from ``create_all`` on
SQLite, PostgreSQL (psycopg and asyncpg sessions) and MariaDB, and from Alembic autogenerate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, String, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from repom.exceptions import ConfigurationError, DuplicateKeyError
from repom.models import IntegerPrimaryKeyMixin, SoftDeleteMixin, unique_live
from repom.models import soft_delete as mark_deleted
from tests.models.conftest import Harness, dispose, make_bases, make_engines
from tests.models.test_alembic import alembic_config, connection  # noqa: F401
from tests.support import enter, maybe_await, require_mysql

Base, _ = make_bases()


class Account(IntegerPrimaryKeyMixin, SoftDeleteMixin, Base):
    __tablename__ = "rm_live_account"
    __table_args__ = (unique_live("email"), unique_live("team", "handle", name="uq_live_handle"))

    email: Mapped[str] = mapped_column(String(100))
    team: Mapped[str] = mapped_column(String(20), default="a")
    handle: Mapped[str] = mapped_column(String(20), default="h")


async def _scenario(h: Harness) -> None:
    h.create(Account)
    async with enter(h.session()) as s:
        first = Account(email="x@example.com", handle="one")
        s.add(first)
        await maybe_await(s.flush())
        mark_deleted(first)
        await maybe_await(s.commit())
    async with enter(h.session()) as s:
        s.add(Account(email="x@example.com", handle="one"))  # the deleted row does not count
        await maybe_await(s.commit())
    for values in ({"email": "x@example.com", "handle": "two"}, {"email": "y@example.com"}):
        async with enter(h.session()) as s:
            s.add(Account(**{"handle": "one", **values}))
            with pytest.raises(DuplicateKeyError):
                await maybe_await(s.flush())
            await maybe_await(s.rollback())
    assert sorted(
        tuple(r)
        for r in h.raw(f"SELECT email, handle, is_deleted FROM {h.table('rm_live_account')}")
    ) == [("x@example.com", "one", False), ("x@example.com", "one", True)]


async def test_create_all_builds_a_live_unique_index(harness: Harness) -> None:
    await _scenario(harness)
    if harness.backend in ("postgresql", "sqlite"):
        indexes = {
            i["name"]: i
            for i in inspect(harness.raw_engine).get_indexes(
                "rm_live_account", schema=harness.schema
            )
        }
        assert indexes["uq_rm_live_account_email_live"]["unique"]
        assert indexes["uq_live_handle"]["column_names"] == ["team", "handle"]


@pytest.fixture
async def mariadb() -> AsyncIterator[Harness]:
    url = require_mysql()
    raw, session_engine, schema = make_engines(url, "sync")
    try:
        yield Harness("sync", "mysql", url, schema, raw, session_engine)
    finally:
        await dispose(raw, session_engine, schema)


async def test_create_all_on_mariadb_uses_a_generated_marker(mariadb: Harness) -> None:
    await _scenario(mariadb)
    columns = {
        c["name"]
        for c in inspect(mariadb.raw_engine).get_columns("rm_live_account", schema=mariadb.schema)
    }
    assert "uq_rm_live_account_email_live__live" in columns
    with mariadb.raw_engine.begin() as conn:
        Account.__table__.drop(conn)  # DROP TABLE takes the markers along


def test_unique_live_needs_the_flag_column() -> None:
    other, _ = make_bases()
    with pytest.raises(ConfigurationError, match="no 'is_deleted' column"):

        class Plain(IntegerPrimaryKeyMixin, other):  # type: ignore[misc,valid-type]
            __tablename__ = "rm_live_plain"
            __table_args__ = (unique_live("email"),)

            email: Mapped[str] = mapped_column(String(100))


def test_alembic_autogenerate_round_trip(
    tmp_path: Path,
    connection: Connection,  # noqa: F811
) -> None:
    config = alembic_config(tmp_path, connection)
    config.attributes["target_metadata"] = Base.metadata
    command.revision(config, message="live", autogenerate=True, rev_id="0001")
    (path,) = (tmp_path / "migrations" / "versions").glob("0001_*.py")
    source = path.read_text()
    assert "op.create_index(op.f('uq_rm_live_account_email_live')" in source
    assert "postgresql_where=" in source and "sqlite_where=" in source
    assert "mysql_live_flag='is_deleted'" in source
    command.upgrade(config, "head")
    connection.commit()
    indexes = {i["name"]: i for i in inspect(connection).get_indexes("rm_live_account")}
    assert indexes["uq_rm_live_account_email_live"]["unique"]
    command.check(config)  # a second compare finds nothing
    connection.rollback()
    connection.exec_driver_sql(
        "INSERT INTO rm_live_account (email, team, handle, is_deleted) "
        "VALUES ('z', 'a', 'h', true), ('z', 'a', 'h', false)"
    )
    with pytest.raises(IntegrityError):  # a plain engine: not translated
        connection.exec_driver_sql(
            "INSERT INTO rm_live_account (email, team, handle, is_deleted) "
            "VALUES ('z', 'b', 'k', false)"
        )
    connection.rollback()
