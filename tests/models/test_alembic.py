"""A real Alembic autogenerate over models using every repom type and mixin: the migration
imports what it uses, contains no key material, upgrades on SQLite and PostgreSQL, a second
autogenerate finds nothing, and it downgrades again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import Connection, ForeignKey, Integer, String, create_engine, inspect, select, text
from sqlalchemy.orm import Mapped, mapped_column

from repom.models import (
    IntegerPrimaryKeyMixin,
    RepomSession,
    SoftDeleteMixin,
    TimestampMixin,
    UUIDPrimaryKeyMixin,
    VersionMixin,
)
from repom.types import ArrayType, EncryptedType, JSONBType, UTCDateTime, UUIDType, generate_key
from tests.models.conftest import make_bases

KEY = generate_key()
Base, DCBase = make_bases()


class Everything(UUIDPrimaryKeyMixin, TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
    __tablename__ = "rm_alembic_everything"

    name: Mapped[str] = mapped_column(String(50), unique=True)
    ref: Mapped[uuid.UUID | None] = mapped_column(UUIDType())
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    doc: Mapped[Any] = mapped_column(JSONBType(), nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(ArrayType(String(20)))
    scores: Mapped[list[int] | None] = mapped_column(ArrayType(Integer, mutable=False))
    secret: Mapped[str | None] = mapped_column(
        EncryptedType(String(50), key=KEY, associated_data="everything.secret")
    )


class Counter(IntegerPrimaryKeyMixin, TimestampMixin, SoftDeleteMixin, DCBase):
    __tablename__ = "rm_alembic_counter"

    everything_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rm_alembic_everything.id"))
    hits: Mapped[int] = mapped_column(default=0)


ENV_PY = """
from alembic import context
import repom.types

config = context.config
context.configure(
    connection=config.attributes["connection"],
    target_metadata=config.attributes["target_metadata"],
    render_item=repom.types.render_item,
)
with context.begin_transaction():
    context.run_migrations()
"""

SCRIPT_MAKO = '''"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''


@pytest.fixture
def connection(db_url: str) -> Iterator[Connection]:
    engine = create_engine(db_url)
    schema = None
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            schema = f"rm_alembic_{uuid.uuid4().hex[:10]}"
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(text(f'SET search_path TO "{schema}"'))
            conn.commit()
        try:
            yield conn
        finally:
            conn.rollback()
            if schema:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                conn.commit()
    engine.dispose()


def alembic_config(tmp_path: Path, connection: Connection) -> Config:
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV_PY)
    (scripts / "script.py.mako").write_text(SCRIPT_MAKO)
    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.attributes["connection"] = connection
    config.attributes["target_metadata"] = Base.metadata
    return config


def test_autogenerate_round_trip(tmp_path: Path, connection: Connection) -> None:
    config = alembic_config(tmp_path, connection)
    command.revision(config, message="everything", autogenerate=True, rev_id="0001")
    (path,) = (tmp_path / "migrations" / "versions").glob("0001_*.py")
    source = path.read_text()

    # the migration imports what it uses and renders repom types by their public names
    assert "import repom.types" in source
    for rendered in (
        "repom.types.UUIDType()",
        "repom.types.UTCDateTime()",
        "repom.types.JSONBType()",
        "repom.types.ArrayType(sa.String(length=20))",
        "repom.types.ArrayType(sa.Integer(), mutable=False)",
        "repom.types.EncryptedType(sa.String(length=50), associated_data='everything.secret')",
        "server_default=repom.types.sql_utcnow()",
        "server_default=sa.false()",
        "op.f('ix_rm_alembic_everything_is_deleted')",
        "sa.PrimaryKeyConstraint('id', name=op.f('pk_rm_alembic_everything'))",
        "sa.UniqueConstraint('name', name=op.f('uq_rm_alembic_everything_name'))",
    ):
        assert rendered in source, rendered
    assert KEY not in source and "key=" not in source
    compile(source, str(path), "exec")

    command.upgrade(config, "head")
    connection.commit()
    tables = set(inspect(connection).get_table_names())
    assert {"rm_alembic_everything", "rm_alembic_counter", "alembic_version"} <= tables

    # a second autogenerate finds no difference
    command.check(config)
    connection.rollback()

    # the migrated schema works with the models (defaults from the server too)
    with RepomSession(bind=connection) as session:
        item = Everything(
            name="x",
            ref=uuid.uuid4(),
            seen_at=datetime(2024, 1, 1, tzinfo=UTC),
            doc={"a": [1]},
            tags=["t"],
            scores=[1, 2],
            secret="s",
        )
        session.add(item)
        session.flush()
        session.add(Counter(everything_id=item.id))
        session.flush()
        session.expunge_all()
        loaded = session.scalars(select(Everything)).one()
        assert (loaded.doc, loaded.tags, loaded.scores, loaded.secret) == (
            {"a": [1]},
            ["t"],
            [1, 2],
            "s",
        )
        session.execute(
            text("INSERT INTO rm_alembic_everything (id, name) VALUES (:id, 'raw')"),
            {"id": uuid.uuid4().hex if connection.dialect.name == "sqlite" else uuid.uuid4()},
        )
        raw = session.scalars(select(Everything).where(Everything.name == "raw")).one()
        assert raw.version == 1 and raw.is_deleted is False
        assert raw.created_at.tzinfo is UTC and raw.updated_at == raw.created_at
        session.rollback()

    command.downgrade(config, "base")
    connection.commit()
    assert not {"rm_alembic_everything", "rm_alembic_counter"} & set(
        inspect(connection).get_table_names()
    )


def test_check_reports_a_changed_repom_type(tmp_path: Path, connection: Connection) -> None:
    """The comparison is not blind: a column whose repom type changed is reported."""
    config = alembic_config(tmp_path, connection)
    command.revision(config, message="everything", autogenerate=True, rev_id="0001")
    command.upgrade(config, "head")
    connection.commit()
    column = Everything.__table__.c.ref
    original = column.type
    try:
        column.type = UTCDateTime()
        with pytest.raises(CommandError, match="modify_type"):
            command.check(config)
    finally:
        column.type = original
        connection.rollback()
