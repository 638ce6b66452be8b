"""Connect-time settings applied by the engine factory, on real servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from repom.config import RepomConfig
from repom.database import AsyncDatabase, Database
from repom.urls import convert_to_async_uri
from tests.support import require_mysql


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_postgresql_session_settings(pg_url: str, mode: str) -> None:
    config = RepomConfig(statement_timeout=1.5, application_name="repom-tests")
    query = text(
        "SELECT current_setting('TimeZone'), current_setting('statement_timeout'), "
        "current_setting('application_name')"
    )
    if mode == "sync":
        db = Database(pg_url.replace("postgresql://", "postgresql+psycopg://"), config=config)
        with db.engine.connect() as conn:
            row = tuple(conn.execute(query).one())
        db.dispose()
    else:
        adb = AsyncDatabase(convert_to_async_uri(pg_url), config=config)
        async with adb.engine.connect() as aconn:
            row = tuple((await aconn.execute(query)).one())
        await adb.dispose()
    assert row == ("UTC", "1500ms", "repom-tests")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_sqlite_pragmas(tmp_path: Path, mode: str) -> None:
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    config = RepomConfig(sqlite_busy_timeout=2.5)
    sql = ["PRAGMA foreign_keys", "PRAGMA journal_mode", "PRAGMA busy_timeout"]
    if mode == "sync":
        db = Database(url, config=config)
        with db.engine.connect() as conn:
            values = [conn.exec_driver_sql(s).scalar() for s in sql]
        db.dispose()
    else:
        adb = AsyncDatabase(convert_to_async_uri(url), config=config)
        async with adb.engine.connect() as aconn:
            values = [(await aconn.exec_driver_sql(s)).scalar() for s in sql]
        await adb.dispose()
    assert values == [1, "wal", 2500]


def test_sqlite_memory_database_is_shared_and_transactional() -> None:
    db = Database("sqlite://")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with db.engine.connect() as conn:
        trans = conn.begin()
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        savepoint = conn.begin_nested()
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        savepoint.rollback()
        trans.rollback()  # DDL and DML are transactional: everything is gone
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 0


def test_mysql_strict_mode_and_utc() -> None:
    url = require_mysql()
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            mode, tz = conn.execute(text("SELECT @@SESSION.sql_mode, @@SESSION.time_zone")).one()
    finally:
        db.dispose()
    assert "STRICT_ALL_TABLES" in mode and tz == "+00:00"


def test_database_ping_and_repr(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert db.ping() >= 0
    assert "x.db" in repr(db)
    db.dispose()
