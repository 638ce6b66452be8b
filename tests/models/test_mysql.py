"""The types and mixins on MySQL/MariaDB (skipped when no server is reachable)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import String, event, select
from sqlalchemy.orm import Mapped, mapped_column

from repom.exceptions import ConflictError
from repom.models import SoftDeleteMixin, TimestampMixin, UUIDPrimaryKeyMixin, VersionMixin
from repom.models import soft_delete as mark_deleted
from repom.types import (
    ArrayType,
    EncryptedType,
    JSONBType,
    Keyring,
    UTCDateTime,
    UUIDType,
    generate_key,
)
from tests.models.conftest import Harness, dispose, make_bases, make_engines
from tests.support import enter, maybe_await, require_mysql

KEY = generate_key()
Base, _ = make_bases()


class Thing(UUIDPrimaryKeyMixin, TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
    __tablename__ = "rm_my_thing"

    name: Mapped[str] = mapped_column(String(40))
    ref: Mapped[uuid.UUID | None] = mapped_column(UUIDType())
    at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    doc: Mapped[Any] = mapped_column(JSONBType(), nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(ArrayType(String(20)))
    stamps: Mapped[list[datetime] | None] = mapped_column(ArrayType(UTCDateTime()))
    secret: Mapped[str | None] = mapped_column(EncryptedType(String(40), key=KEY))


@pytest.fixture
async def mysql() -> AsyncIterator[Harness]:
    # sync only: with PyMySQL 1.2.x, aiomysql 0.3.2 cannot send any bytes parameter
    # (aio-libs/aiomysql#1080), and encrypted values are bytes
    flavour = "sync"
    url = require_mysql()
    raw, session_engine, schema = make_engines(url, flavour)
    h = Harness(flavour, "mysql", url, schema, raw, session_engine)
    sync_engine = getattr(session_engine, "sync_engine", session_engine)

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        h.statements.append(statement)

    try:
        yield h
    finally:
        await dispose(raw, session_engine, schema)


async def test_round_trip_and_mixins_on_mysql(mysql: Harness) -> None:
    mysql.create(Thing)
    ref = uuid.uuid4()
    at = datetime(2024, 3, 1, 12, 0, 0, 654321, tzinfo=timezone(timedelta(hours=-5)))
    async with enter(mysql.session()) as session:
        full = Thing(
            name="full",
            ref=str(ref),
            at=at,
            doc={"ü": [1, {"x": None}], "s": "a\x00b"},
            tags=["a", "😀"],
            stamps=[at],
            secret="秘密",
        )
        empty = Thing(name="empty", doc={}, tags=[], stamps=[], secret="")
        nothing = Thing(name="none")
        session.add_all([full, empty, nothing])
        await maybe_await(session.commit())
        assert full.created_at == full.updated_at and full.version == 1

    async with enter(mysql.session()) as session:
        rows = {t.name: t for t in (await maybe_await(session.scalars(select(Thing)))).all()}
        got = rows["full"]
        assert got.ref == ref and type(got.ref) is uuid.UUID
        assert got.at == at.astimezone(UTC) and got.at.tzinfo is UTC  # microseconds kept
        assert got.doc == {"ü": [1, {"x": None}], "s": "a\x00b"}
        assert got.tags == ["a", "😀"] and got.stamps == [at.astimezone(UTC)]
        assert got.secret == "秘密" and got.created_at.tzinfo is UTC
        assert (rows["empty"].doc, rows["empty"].tags, rows["empty"].secret) == ({}, [], "")
        assert (rows["none"].doc, rows["none"].tags, rows["none"].secret) == (None, None, None)

        got.doc["new"] = True  # tracked mutation
        mark_deleted(rows["none"])
        await maybe_await(session.commit())
        names = await maybe_await(session.scalars(select(Thing.name).order_by(Thing.name)))
        assert names.all() == ["empty", "full"]

    t = mysql.table("rm_my_thing")
    stored = mysql.raw(f"SELECT secret, at, doc IS NULL FROM {t} WHERE name = 'full'")[0]
    assert Keyring.key_id_of(bytes(stored[0])) and "秘密".encode() not in bytes(stored[0])
    assert stored[1] == datetime(2024, 3, 1, 17, 0, 0, 654321)  # naive UTC in DATETIME(6)
    # server defaults for rows written by other clients
    mysql.raw_exec(f"INSERT INTO {t} (id, name) VALUES ('{uuid.uuid4().hex}', 'raw')")

    async with enter(mysql.session()) as session, enter(mysql.session()) as other:
        by_name = select(Thing).where(Thing.name == "raw")
        raw_row = (await maybe_await(session.scalars(by_name))).one()
        assert raw_row.version == 1 and raw_row.created_at.tzinfo is UTC
        full = (await maybe_await(session.scalars(select(Thing).where(Thing.name == "full")))).one()
        assert full.doc["new"] is True and full.version == 2
        await maybe_await(session.commit())
        theirs = await maybe_await(other.get(Thing, full.id))
        theirs.name = "theirs"
        await maybe_await(other.commit())
        full.name = "mine"
        with pytest.raises(ConflictError):
            await maybe_await(session.commit())
        await maybe_await(session.rollback())
