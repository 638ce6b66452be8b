"""Fixtures for the CLI tests: a scratch PostgreSQL database per test (dropped afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support import require_postgres


def _admin_conninfo(pg_url: str) -> str:
    return make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_pg_database(pg_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_admin_conninfo(pg_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def backend_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database for one CLI test: a scratch PostgreSQL database, or a SQLite file."""
    if backend == "postgresql":
        require_postgres()
        url: str = request.getfixturevalue("pg_scratch")
        create_pg_database(request.getfixturevalue("pg_url"), make_url(url).database or "")
        return url
    return f"sqlite:///{tmp_path / 'dev.sqlite3'}"


def pg_database_exists(pg_url: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(_admin_conninfo(pg_url), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None


@pytest.fixture
def pg_scratch(pg_url: str) -> Iterator[str]:
    """URL of a PostgreSQL database that does not exist yet (same server as REPOM_TEST_PG_URL);
    it is dropped after the test, whatever the test did.  A password is added to the URL (the
    test server trusts local connections) so tests can check that it is never shown."""
    import psycopg
    from psycopg import sql

    name = f"repom_cli_{uuid.uuid4().hex[:12]}"
    base = make_url(pg_url)
    url = base.set(database=name)
    if not url.password:
        url = url.set(password="s3cret-pw")
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(_admin_conninfo(pg_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
