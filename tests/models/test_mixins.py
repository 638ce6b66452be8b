"""Mixins on a plain declarative base and on a dataclass base: columns, defaults, statement
counts, timestamps, optimistic locking (including a real concurrent conflict on PostgreSQL)."""

from __future__ import annotations

import asyncio
import inspect as pyinspect
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, func, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from repom.exceptions import ConflictError
from repom.models import (
    NAMING_CONVENTION,
    Base,
    DataclassBase,
    IntegerPrimaryKeyMixin,
    SoftDeleteMixin,
    TimestampMixin,
    UUIDPrimaryKeyMixin,
    VersionMixin,
    timestamp_update_values,
    uuid7,
)
from tests.models.conftest import Harness, make_bases, make_engines
from tests.support import enter, maybe_await, require_postgres

PlainBase, DCBase = make_bases()


def define(base: type[DeclarativeBase], prefix: str) -> tuple[Any, Any]:
    class Account(UUIDPrimaryKeyMixin, TimestampMixin, SoftDeleteMixin, VersionMixin, base):  # type: ignore[misc,valid-type]
        __tablename__ = f"{prefix}_account"

        name: Mapped[str] = mapped_column(String(50))
        balance: Mapped[int] = mapped_column(default=0)

    class Entry(IntegerPrimaryKeyMixin, TimestampMixin, base):  # type: ignore[misc,valid-type]
        __tablename__ = f"{prefix}_entry"

        account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(f"{prefix}_account.id"))
        amount: Mapped[int]

    return Account, Entry


MODELS = {"plain": define(PlainBase, "rm_pl"), "dataclass": define(DCBase, "rm_dc")}


@pytest.fixture(params=sorted(MODELS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_columns_keys_and_constructors(kind: str) -> None:
    Account, Entry = MODELS[kind]
    table = Account.__table__
    assert list(table.c.keys()) == [
        "id",
        "name",
        "balance",
        "created_at",
        "updated_at",
        "is_deleted",
        "deleted_at",
        "version",
    ]
    assert next(iter(Entry.__table__.c.keys())) == "id"
    assert table.primary_key.name == f"pk_{table.name}"
    assert {ix.name for ix in table.indexes} == {f"ix_{table.name}_is_deleted"}
    fk = next(iter(Entry.__table__.foreign_keys)).constraint
    assert fk.name == f"fk_{Entry.__table__.name}_account_id_{table.name}"
    assert table.c.deleted_at.nullable is True and table.c.created_at.nullable is False
    assert Account.__mapper__.version_id_col is table.c.version

    before = time.time_ns() // 1_000_000
    account = Account(name="a")
    # the key exists before any flush; it is a version-7 (time-ordered) UUID
    assert isinstance(account.id, uuid.UUID) and account.id.version == 7
    assert before <= account.id.int >> 80 <= time.time_ns() // 1_000_000
    assert account.is_deleted is False and account.deleted_at is None
    chosen = uuid7()
    if kind == "dataclass":
        signature = pyinspect.signature(Account.__init__)
        # mixin columns are init=False, except the UUID key: an optional keyword
        assert list(signature.parameters) == ["self", "name", "balance", "id"]
        assert signature.parameters["id"].kind is pyinspect.Parameter.KEYWORD_ONLY
        assert Account(name="b", balance=3).balance == 3
    else:
        assert Account(id=None, name="b").id is not None
    assert Account(id=chosen, name="b").id == chosen
    assert Account(name="c").id != Account(name="c").id


def test_uuid7_is_monotonic_and_well_formed() -> None:
    values = [uuid7() for _ in range(5000)]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert {v.version for v in values} == {7} and {v.variant for v in values} == {uuid.RFC_4122}
    assert [v.hex for v in values] == sorted(v.hex for v in values)  # CHAR(32) sorts the same


async def test_defaults_need_no_extra_round_trip(harness: Harness, kind: str) -> None:
    Account, Entry = MODELS[kind]
    harness.create(Account, Entry)
    async with enter(harness.session()) as session:
        account = Account(name="alice")
        session.add(account)
        harness.capture()
        await maybe_await(session.flush())
        assert len(harness.work) == 1 and harness.sql("INSERT")
        assert account.version == 1 and account.is_deleted is False
        assert account.created_at == account.updated_at
        assert account.created_at.tzinfo is UTC
        entry = Entry(account_id=account.id, amount=5)
        session.add(entry)
        harness.capture()
        await maybe_await(session.commit())
        assert isinstance(entry.id, int)
        assert harness.sql("SELECT") == []  # identity key via RETURNING/lastrowid, no refresh

        created = account.created_at
        account.name = "alice 2"
        harness.capture()
        await maybe_await(session.commit())
        (statement,) = harness.sql("UPDATE")
        assert "updated_at" in statement and "version" in statement and "WHERE" in statement
        assert harness.sql("SELECT") == []
        assert account.version == 2 and account.updated_at > created == account.created_at
        harness.capture()
        assert account.to_dict()["name"] == "alice 2" and harness.work == []

    row = harness.raw(
        f"SELECT name, version, updated_at FROM {harness.table(Account.__tablename__)}"
    )[0]
    assert (row[0], row[1]) == ("alice 2", 2)


async def test_bulk_insert_fills_every_default(harness: Harness, kind: str) -> None:
    Account, Entry = MODELS[kind]
    harness.create(Account, Entry)
    async with enter(harness.session()) as session:
        harness.capture()
        await maybe_await(
            session.execute(insert(Account), [{"name": f"bulk{i}"} for i in range(50)])
        )
        assert len(harness.sql("INSERT")) == 1  # insertmanyvalues: one statement
        rows = (
            await maybe_await(
                session.execute(
                    select(
                        Account.id,
                        Account.created_at,
                        Account.updated_at,
                        Account.version,
                        Account.is_deleted,
                    )
                )
            )
        ).all()
        await maybe_await(session.commit())
    assert len(rows) == 50 and len({r.id for r in rows}) == 50
    assert all(r.id.version == 7 and r.created_at == r.updated_at for r in rows)
    assert {(r.version, r.is_deleted) for r in rows} == {(1, False)}


async def test_bulk_updates_bump_updated_at(harness: Harness, kind: str) -> None:
    Account, _ = MODELS[kind]
    harness.create(Account)
    async with enter(harness.session()) as session:
        accounts = [Account(name=f"n{i}") for i in range(3)]
        session.add_all(accounts)
        await maybe_await(session.commit())
        stamps = {a.id: a.updated_at for a in accounts}

        # Core-style UPDATE: the Python onupdate fills updated_at
        await maybe_await(
            session.execute(update(Account).where(Account.id == accounts[0].id).values(balance=1))
        )
        # explicit, one timestamp for the statement
        values = timestamp_update_values(Account)
        assert set(values) == {"updated_at"} and values["updated_at"].tzinfo is UTC
        await maybe_await(
            session.execute(
                update(Account).where(Account.id == accounts[1].id).values(balance=2, **values)
            )
        )
        # ORM bulk UPDATE by primary key (executemany; versioned rows need their version)
        third = {"id": accounts[2].id, "balance": 3, "version": accounts[2].version}
        await maybe_await(session.execute(update(Account), [third]))
        await maybe_await(session.commit())
        rows = (await maybe_await(session.execute(select(Account.id, Account.updated_at)))).all()
    assert all(updated > stamps[key] for key, updated in rows)
    assert timestamp_update_values(object) == {}


async def test_stale_write_raises_conflict(harness: Harness, kind: str) -> None:
    Account, _ = MODELS[kind]
    harness.create(Account)
    async with enter(harness.session()) as session:
        account = Account(name="shared", balance=10)
        session.add(account)
        await maybe_await(session.commit())
        key = account.id

    # Each read ends its transaction (as a web request would); the objects keep the version they
    # read (expire_on_commit=False), so the next write is checked against it.
    async with enter(harness.session()) as first, enter(harness.session()) as second:
        mine = await maybe_await(first.get(Account, key))
        await maybe_await(first.commit())
        theirs = await maybe_await(second.get(Account, key))
        theirs.balance = 20
        await maybe_await(second.commit())  # version 1 -> 2

        mine.balance = 30  # still believes version 1
        with pytest.raises(ConflictError, match="optimistic lock conflict") as info:
            await maybe_await(first.flush())
        assert isinstance(info.value, StaleDataError)  # existing except clauses keep working
        await maybe_await(first.rollback())

        again = await maybe_await(first.get(Account, key, populate_existing=True))
        await maybe_await(first.commit())
        assert again.version == 2 and again.balance == 20
        theirs.balance = 40
        await maybe_await(second.commit())  # -> 3
        again.balance = 50
        with pytest.raises(ConflictError):
            await maybe_await(first.commit())  # the flush inside commit
        await maybe_await(first.rollback())

        stale = await maybe_await(first.get(Account, key, populate_existing=True))
        await maybe_await(first.commit())
        theirs.balance = 60
        await maybe_await(second.commit())  # -> 4
        await maybe_await(first.delete(stale))
        with pytest.raises(ConflictError):
            await maybe_await(first.flush())  # a stale DELETE too
        await maybe_await(first.rollback())

        # ORM bulk UPDATE by primary key checks the version as well
        with pytest.raises(ConflictError):
            await maybe_await(
                first.execute(update(Account), [{"id": key, "balance": 0, "version": 1}])
            )
        await maybe_await(first.rollback())

    rows = harness.raw(f"SELECT balance, version FROM {harness.table(Account.__tablename__)}")
    assert [tuple(r) for r in rows] == [(60, 4)]


async def test_concurrent_stale_update_on_postgresql(flavour: str) -> None:
    """Two transactions update the same row at the same time: the second one waits for the
    first one's row lock; after the first commits, PostgreSQL re-checks ``version = 1`` on the
    new row, matches nothing, and the second gets ConflictError."""
    url = require_postgres()
    Account, _ = MODELS["plain"]
    raw, session_engine, schema = make_engines(url, flavour)
    h = Harness(flavour, "postgresql", url, schema, raw, session_engine)
    try:
        h.create(Account)
        async with enter(h.session()) as session:
            account = Account(name="race", balance=0)
            session.add(account)
            await maybe_await(session.commit())
            key = account.id

        async with enter(h.session()) as first, enter(h.session()) as second:
            a = await maybe_await(first.get(Account, key))
            b = await maybe_await(second.get(Account, key))
            a.balance = 1
            await maybe_await(first.flush())  # UPDATE sent, row locked, not committed
            b.balance = 2

            async def second_writer() -> BaseException | None:
                try:
                    await maybe_await(second.flush())  # blocks on the row lock
                except BaseException as exc:
                    return exc
                return None

            if h.is_async:
                waiter: Any = asyncio.ensure_future(second_writer())
            else:
                waiter = asyncio.ensure_future(
                    asyncio.to_thread(lambda: asyncio.run(second_writer()))
                )
            probe = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE :pattern"
            )
            for _ in range(1000):  # until the second UPDATE is really waiting for the lock
                if h.raw(probe, pattern=f"UPDATE {schema}.%")[0][0]:
                    break
                await asyncio.sleep(0.01)
            else:  # pragma: no cover - diagnostics only
                pytest.fail("the second UPDATE never blocked on the row lock")
            assert not waiter.done()
            await maybe_await(first.commit())
            error = await waiter
            assert isinstance(error, ConflictError)
            await maybe_await(second.rollback())
        rows = h.raw(f"SELECT balance, version FROM {h.table(Account.__tablename__)}")
        assert [tuple(r) for r in rows] == [(1, 2)]
    finally:
        from tests.models.conftest import dispose

        await dispose(raw, session_engine, schema)


def test_own_mapper_args_and_columns_are_kept() -> None:
    class Custom(TimestampMixin, VersionMixin, PlainBase):  # type: ignore[misc,valid-type]
        __tablename__ = "rm_custom"
        __mapper_args__ = {"eager_defaults": False}

        id: Mapped[int] = mapped_column(primary_key=True)
        created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    assert Custom.__mapper__.version_id_col is Custom.__table__.c.version
    assert Custom.__mapper__.eager_defaults is False
    # the model's own created_at wins (no insert default from the mixin)
    assert Custom.__table__.c.created_at.default is None
    assert Custom.__table__.c.updated_at.onupdate is not None

    class Child(Custom):  # single-table inheritance: columns are not added twice
        kind: Mapped[str | None] = mapped_column(String(10))

    assert Child.__table__ is Custom.__table__
    assert Child.__mapper__.version_id_col is Custom.__table__.c.version

    with pytest.raises(TypeError, match="list repom mixins before the declarative base"):

        class Wrong(PlainBase, TimestampMixin):  # type: ignore[misc,valid-type]
            __tablename__ = "rm_wrong"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_legacy_declarative_base() -> None:
    from sqlalchemy.orm import declarative_base

    Legacy = declarative_base()

    class Old(UUIDPrimaryKeyMixin, TimestampMixin, VersionMixin, Legacy):  # type: ignore[misc,valid-type]
        __tablename__ = "rm_legacy"
        name: Mapped[str] = mapped_column(String(10))

    assert list(Old.__table__.c.keys()) == ["id", "name", "created_at", "updated_at", "version"]
    assert Old.__mapper__.version_id_col is Old.__table__.c.version
    assert Old(name="x").id.version == 7


def test_to_dict_and_repr(kind: str) -> None:
    Account, _ = MODELS[kind]
    account = Account(name="x")
    data = account.to_dict()
    assert data["name"] == "x" and data["id"] == account.id
    assert set(account.to_dict(exclude=["version", "deleted_at"])) == set(data) - {
        "version",
        "deleted_at",
    }
    if kind == "plain":
        assert repr(account) == f"<Account id={account.id!r}>"


def test_real_bases_in_a_clean_interpreter(tmp_path: Any) -> None:
    """``repom.models.Base`` and ``DataclassBase`` themselves (in a subprocess, so that these
    models never join the application-wide ``Base.metadata`` of the test run)."""
    script = textwrap.dedent(
        f"""
        import uuid
        from datetime import datetime
        from typing import Any
        from sqlalchemy import ForeignKey, String, create_engine, select
        from sqlalchemy.orm import Mapped, mapped_column, relationship
        from repom.models import *
        from repom.types import JSONBType, UTCDateTime, UUIDType

        assert DataclassBase.metadata is Base.metadata
        assert Base.metadata.naming_convention == {NAMING_CONVENTION!r}

        class Owner(UUIDPrimaryKeyMixin, TimestampMixin, SoftDeleteMixin, Base):
            __tablename__ = "owner"
            name: Mapped[str] = mapped_column(String(20))
            seen: Mapped[datetime | None]
            extra: Mapped[dict[str, Any] | None]
            pets: Mapped[list["Pet"]] = relationship(back_populates="owner")

        class Pet(IntegerPrimaryKeyMixin, VersionMixin, SoftDeleteMixin, DataclassBase):
            __tablename__ = "pet"
            name: Mapped[str] = mapped_column(String(20))
            owner_id: Mapped[uuid.UUID | None] = mapped_column(
                ForeignKey("owner.id"), default=None
            )
            owner: Mapped[Owner | None] = relationship(back_populates="pets", default=None)

        # annotations map to repom types
        assert isinstance(Owner.__table__.c.seen.type, UTCDateTime)
        assert isinstance(Owner.__table__.c.extra.type, JSONBType)
        assert isinstance(Owner.__table__.c.id.type, UUIDType)
        engine = create_engine("sqlite:///{tmp_path / "real.sqlite3"}")
        Base.metadata.create_all(engine)
        with RepomSession(engine) as session:
            owner = Owner(name="o")
            owner.pets.append(Pet(name="p1"))
            gone = Pet(name="p2")
            owner.pets.append(gone)
            session.add(owner)
            session.flush()
            soft_delete(gone)
            session.commit()
            session.expunge_all()
            loaded = session.scalars(select(Owner)).one()
            assert [p.name for p in loaded.pets] == ["p1"], loaded.pets
            assert loaded.to_dict()["name"] == "o"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    # and this process's Base has no test models
    assert "owner" not in Base.metadata.tables and "pet" not in DataclassBase.metadata.tables
    assert text  # keep import used
