"""Switching one test database between metadata mode and Alembic mode (``--repom-alembic``):
whatever the other mode left behind, each session starts from a schema it built itself.

Before this was handled, Alembic's ``alembic_version`` table survived the metadata mode's
``drop_all``, so the next Alembic session found the version at head, created nothing, and every
test failed on missing tables.  Each scenario runs real pytest sessions one after the other on
the same database (a SQLite file, or a PostgreSQL schema of its own as the connection's
``search_path``), with the sync environment that ``repom db init`` writes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy.dialects.postgresql  # noqa: F401  (loaded once: the inline runs re-import nothing)
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from tests.testing._project import INI, MODELS, unique_schema

REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "rt6_item",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), unique=True),
    )
    op.create_table("rt6_migration_only", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("rt6_migration_only")
    op.drop_table("rt6_item")
"""

TESTS = """
from sqlalchemy import select

from models import Item


def test_writes(db_test):
    db_test.add(Item(name="x"))
    db_test.commit()
    assert db_test.scalars(select(Item.name)).all() == ["x"]


def test_starts_empty(db_test):
    assert db_test.scalars(select(Item)).all() == []
"""


class _Base(DeclarativeBase):
    pass


class _Leftover(_Base):
    """A table an interrupted metadata-mode session (or ``drop=False``) left behind."""

    __tablename__ = "rt6_item"

    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture
def database(db_url: str) -> Iterator[str]:
    """The test database's URL: a SQLite file, or a fresh PostgreSQL schema set as the
    connection's ``search_path`` (tables land in the database's current schema, not a
    ``--repom-schema`` of their own, which is rebuilt every session anyway)."""
    if not db_url.startswith("postgresql"):
        yield db_url
        return
    schema = unique_schema("rt6_modes")
    admin = create_engine(db_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{db_url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(models=MODELS, test_modes=TESTS)
    assert (
        pytester.run(sys.executable, "-m", "repom.cli", "db", "init", "--models", "models").ret == 0
    )
    pytester.makepyfile(**{"migrations/versions/0001_item": REVISION})
    return pytester


def run(project: pytest.Pytester, url: str, mode: str) -> None:
    args = ["--repom-db-url", url, "-q", "-p", "no:randomly"]
    if mode == "alembic":
        args += ["--repom-alembic", "alembic.ini"]
    else:
        args += ["--repom-metadata", "models:Base"]
    project.runpytest(*args).assert_outcomes(passed=2)


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def version(url: str) -> str | None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        engine.dispose()


def test_alembic_then_metadata_then_alembic(project: pytest.Pytester, database: str) -> None:
    run(project, database, "alembic")
    assert tables(database) == {"alembic_version", "rt6_item", "rt6_migration_only"}
    run(project, database, "metadata")
    # nothing of the migrated schema is left to fool the next Alembic session
    assert tables(database) == set()
    run(project, database, "alembic")
    assert version(database) == "0001"
    assert {"rt6_item", "rt6_migration_only"} <= tables(database)


def test_metadata_leftovers_then_alembic(project: pytest.Pytester, database: str) -> None:
    engine = create_engine(database, poolclass=NullPool)
    try:
        _Base.metadata.create_all(engine)  # an interrupted metadata-mode session's tables
    finally:
        engine.dispose()
    run(project, database, "alembic")
    assert version(database) == "0001"


def test_version_table_alone_is_rebuilt(project: pytest.Pytester, database: str) -> None:
    """The state an older repom left: ``drop_all`` removed the model tables, the version table
    stayed at head."""
    run(project, database, "alembic")
    engine = create_engine(database, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE rt6_migration_only"))
            conn.execute(text("DROP TABLE rt6_item"))
    finally:
        engine.dispose()
    run(project, database, "alembic")
    assert {"rt6_item", "rt6_migration_only"} <= tables(database)
