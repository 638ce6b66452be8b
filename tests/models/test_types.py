"""Round trips of every repom type on SQLite and PostgreSQL, sync and async (one body each)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Integer, LargeBinary, Numeric, String, Text, insert, select, update
from sqlalchemy.orm import Mapped, mapped_column

from repom.exceptions import DataValidationError
from repom.types import (
    ArrayType,
    EncryptedType,
    InvalidValueError,
    JSONBType,
    TrackedDict,
    TrackedList,
    UTCDateTime,
    UUIDType,
    generate_key,
    uuid7,
)
from tests.models.conftest import Harness, make_bases
from tests.support import enter, maybe_await

KEY = generate_key()
Base, _ = make_bases()


class Row(Base):
    __tablename__ = "rm_type_row"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[uuid.UUID | None] = mapped_column(UUIDType())
    at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    doc: Mapped[Any] = mapped_column(JSONBType(), nullable=True)
    frozen: Mapped[Any] = mapped_column(JSONBType(mutable=False), nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(ArrayType(String(50)))
    nums: Mapped[list[int] | None] = mapped_column(ArrayType(Integer))
    uids: Mapped[list[uuid.UUID] | None] = mapped_column(ArrayType(UUIDType()))
    stamps: Mapped[list[datetime] | None] = mapped_column(ArrayType(UTCDateTime()))
    amounts: Mapped[list[Decimal] | None] = mapped_column(ArrayType(Numeric(10, 2)))
    secret: Mapped[str | None] = mapped_column(EncryptedType(Text, key=KEY))
    blob: Mapped[bytes | None] = mapped_column(EncryptedType(LargeBinary, key=KEY))


LARGE_DOC = {
    "items": [{"n": i, "name": f"item-{i}", "tags": ["a", "b", "ü"]} for i in range(5000)],
    "text": "x" * 100_000,
}
TOKYO = timezone(timedelta(hours=9))
U1 = uuid.UUID("0190a0b1-c2d3-7e4f-8a5b-6c7d8e9f0a1b")

CASES: dict[int, dict[str, Any]] = {
    1: {  # every value None
        "uid": None,
        "at": None,
        "doc": None,
        "tags": None,
        "nums": None,
        "uids": None,
        "stamps": None,
        "amounts": None,
        "secret": None,
        "blob": None,
    },
    2: {  # empty values, string UUID, a non-UTC aware datetime
        "uid": str(U1),
        "at": datetime(2024, 5, 1, 18, 30, 15, 123456, tzinfo=TOKYO),
        "doc": {},
        "tags": [],
        "nums": [],
        "uids": [],
        "stamps": [],
        "amounts": [],
        "secret": "",
        "blob": b"",
    },
    3: {  # unicode, nested JSON, NUL in binary/encrypted data
        "uid": U1.hex,
        "at": datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        "doc": {"名前": "テスト ✓ 😀", "nested": [1, 2.5, True, None, {"k": ["v"]}], "n": None},
        "tags": ["ü", "😀", "plain"],
        "nums": [0, -1, 2**31 - 1],
        "uids": [U1, str(uuid7())],
        "stamps": [datetime(2024, 1, 1, tzinfo=TOKYO)],
        "amounts": [Decimal("1.10"), Decimal("-99999999.99")],
        "secret": "秘密 😀 \x00 after NUL",
        "blob": b"\x00\x01\xff" * 10,
    },
    4: {"doc": LARGE_DOC, "tags": [f"t{i}" for i in range(2000)], "secret": "s" * 200_000},
    5: {"doc": ["a", "list", "at", "the", "top"], "frozen": "just a string"},
}


def expected(case: dict[str, Any]) -> dict[str, Any]:
    out = dict(case)
    for key in ("uid",):
        if isinstance(out.get(key), str):
            out[key] = uuid.UUID(out[key])
    if out.get("uids"):
        out["uids"] = [uuid.UUID(str(u)) for u in out["uids"]]
    if out.get("at") is not None:
        out["at"] = out["at"].astimezone(UTC)
    if out.get("stamps"):
        out["stamps"] = [s.astimezone(UTC) for s in out["stamps"]]
    return out


async def test_round_trip_edge_values(harness: Harness) -> None:
    harness.create(Row)
    async with enter(harness.session()) as session:
        session.add_all([Row(id=i, **values) for i, values in CASES.items()])
        await maybe_await(session.commit())

    async with enter(harness.session()) as session:
        rows = (await maybe_await(session.scalars(select(Row).order_by(Row.id)))).all()
        assert [r.id for r in rows] == list(CASES)
        for row in rows:
            want = expected(CASES[row.id])
            for key, value in want.items():
                got = getattr(row, key)
                assert got == value, (row.id, key)
                if value is not None and key in ("at",):
                    assert got.tzinfo is UTC
            if row.uid is not None:
                assert type(row.uid) is uuid.UUID
            if row.stamps:
                assert all(s.tzinfo is UTC for s in row.stamps)
            if row.amounts:
                assert all(isinstance(a, Decimal) for a in row.amounts)

    # what is really stored: NULL is SQL NULL, UUIDs native or 32 hex digits, UTC timestamps
    t = harness.table("rm_type_row")
    nulls = harness.raw(f"SELECT doc IS NULL, tags IS NULL, secret IS NULL FROM {t} WHERE id = 1")
    assert tuple(nulls[0]) in ((True, True, True), (1, 1, 1))
    (stored_uid, stored_at) = harness.raw(f"SELECT uid, at FROM {t} WHERE id = 2")[0]
    if harness.backend == "postgresql":
        assert stored_uid == U1
        assert stored_at == datetime(2024, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)
    else:
        assert stored_uid == U1.hex
        assert str(stored_at) == "2024-05-01 09:30:15.123456"


async def test_uuid_strings_accepted_garbage_refused(harness: Harness) -> None:
    harness.create(Row)
    row = Row(id=1, uid=str(U1))
    assert row.uid == U1 and type(row.uid) is uuid.UUID  # coerced on assignment
    for garbage in ("not-a-uuid", 12345, b"\x00" * 3, "0190a0b1-c2d3-7e4f-8a5b"):
        with pytest.raises(InvalidValueError, match=r"Row\.uid: invalid UUID") as info:
            row.uid = garbage
        assert isinstance(info.value, DataValidationError)
    assert row.uid == U1

    async with enter(harness.session()) as session:
        session.add(row)
        await maybe_await(session.commit())
        # string comparisons in SQL are coerced too
        found = await maybe_await(session.scalar(select(Row.id).where(Row.uid == U1.hex.upper())))
        assert found == 1
        harness.capture()
        with pytest.raises(InvalidValueError, match="invalid UUID 'garbage'"):
            await maybe_await(session.execute(insert(Row).values(id=2, uid="garbage")))
        with pytest.raises(InvalidValueError):
            await maybe_await(session.execute(select(Row).where(Row.uid == "nope")))
        assert harness.sql("INSERT") == []  # refused before anything was sent
        await maybe_await(session.rollback())
    assert harness.raw(f"SELECT count(*) FROM {harness.table('rm_type_row')}")[0][0] == 1


async def test_utc_datetime_refuses_naive_and_normalises(harness: Harness) -> None:
    harness.create(Row)
    row = Row(id=1)
    with pytest.raises(InvalidValueError, match=r"Row\.at: naive datetime 2024-01-01T00:00:00"):
        row.at = datetime(2024, 1, 1)
    with pytest.raises(InvalidValueError, match="expected a timezone-aware datetime, got str"):
        row.at = "2024-01-01T00:00:00Z"
    row.at = datetime(2024, 1, 1, 9, 0, tzinfo=TOKYO)
    assert row.at == datetime(2024, 1, 1, 0, 0, tzinfo=UTC) and row.at.tzinfo is UTC

    async with enter(harness.session()) as session:
        session.add(row)
        await maybe_await(session.commit())
        with pytest.raises(InvalidValueError, match="naive datetime"):
            await maybe_await(
                session.execute(update(Row).values(at=datetime(2024, 1, 1)).where(Row.id == 1))
            )
        await maybe_await(session.rollback())
        # comparisons with aware values of any zone
        hit = await maybe_await(
            session.scalar(
                select(Row.id).where(
                    Row.at == datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
                )
            )
        )
        assert hit == 1

    if harness.backend == "postgresql":
        # whatever the connection's time zone, values come back as UTC
        async with enter(harness.session()) as session:
            from sqlalchemy import text

            await maybe_await(session.execute(text("SET TIME ZONE 'America/New_York'")))
            got = await maybe_await(session.scalar(select(Row.at)))
            assert got == datetime(2024, 1, 1, tzinfo=UTC) and got.tzinfo is UTC


async def test_nul_characters(harness: Harness) -> None:
    """PostgreSQL text/JSONB cannot hold U+0000: refused with a clear error, nothing sent.
    SQLite stores it.  Encrypted values are binary, so NUL is fine everywhere."""
    harness.create(Row)
    bad_values = {"doc": {"k": "a\x00b"}, "tags": ["ok", "a\x00"]}
    async with enter(harness.session()) as session:
        for attribute, value in bad_values.items():
            harness.capture()
            session.add(Row(id=10, **{attribute: value}))
            if harness.backend == "postgresql":
                with pytest.raises(InvalidValueError, match="PostgreSQL cannot store the NUL"):
                    await maybe_await(session.flush())
                assert harness.sql("INSERT") == []
                await maybe_await(session.rollback())
            else:
                await maybe_await(session.commit())
                stored = await maybe_await(session.get(Row, 10, populate_existing=True))
                assert getattr(stored, attribute) == value
                await maybe_await(session.delete(stored))
                await maybe_await(session.commit())
        session.add(Row(id=11, secret="a\x00b"))
        await maybe_await(session.commit())
    async with enter(harness.session()) as session:
        assert (await maybe_await(session.get(Row, 11))).secret == "a\x00b"


async def test_json_and_array_mutations_are_tracked(harness: Harness) -> None:
    harness.create(Row)
    async with enter(harness.session()) as session:
        row = Row(id=1, doc={"a": {"b": [1]}}, frozen={"x": 1}, tags=["x"])
        session.add(row)
        await maybe_await(session.commit())
        assert isinstance(row.doc, TrackedDict) and isinstance(row.tags, TrackedList)

        harness.capture()
        await maybe_await(session.commit())
        assert harness.sql("UPDATE") == []  # nothing changed, nothing written

        row.doc["a"]["b"].append(2)  # nested list inside nested dict
        row.doc["a"]["new"] = {"deep": True}
        row.tags.append("y")
        row.tags[0] = "first"
        row.frozen["x"] = 2  # mutable=False: not tracked (documented)
        await maybe_await(session.commit())
        assert len(harness.sql("UPDATE")) == 1

        row.doc["a"]["new"]["deep"] = False  # a container added after load is tracked too
        await maybe_await(session.commit())

    async with enter(harness.session()) as session:
        fresh = await maybe_await(session.get(Row, 1))
        assert fresh.doc == {"a": {"b": [1, 2], "new": {"deep": False}}}
        assert fresh.tags == ["first", "y"]
        assert fresh.frozen == {"x": 1}
        # loaded values are tracked as well
        fresh.tags.extend(["z"])
        del fresh.doc["a"]
        await maybe_await(session.commit())
    async with enter(harness.session()) as session:
        again = await maybe_await(session.get(Row, 1))
        assert again.tags == ["first", "y", "z"] and again.doc == {}


def test_array_validates_items() -> None:
    row = Row(id=1)
    with pytest.raises(InvalidValueError, match=r"Row\.tags: expected a list, got str"):
        row.tags = "abc"
    with pytest.raises(InvalidValueError, match=r"Row\.nums: expected int, got str 'x'"):
        row.nums = [1, "x"]
    with pytest.raises(InvalidValueError, match="longer than the column's 50"):
        row.tags = ["y" * 51]
    row.uids = [str(U1), None]
    assert row.uids == [U1, None] and type(row.uids[0]) is uuid.UUID
    row.nums = (1, 2)
    assert row.nums == [1, 2] and isinstance(row.nums, list)


def test_pickle_and_copy_give_plain_containers() -> None:
    import copy
    import pickle

    row = Row(id=1, doc={"a": [1, {"b": 2}]})
    assert isinstance(row.doc, TrackedDict)
    for clone in (pickle.loads(pickle.dumps(row.doc)), copy.deepcopy(row.doc)):
        assert clone == {"a": [1, {"b": 2}]}
        assert type(clone) is dict and type(clone["a"]) is list and type(clone["a"][1]) is dict


def test_type_reprs_are_constructor_calls() -> None:
    assert repr(UUIDType()) == "UUIDType()"
    assert repr(UTCDateTime()) == "UTCDateTime()"
    assert repr(JSONBType()) == "JSONBType()"
    assert repr(JSONBType(mutable=False)) == "JSONBType(mutable=False)"
    assert repr(ArrayType(String(20))) == "ArrayType(String(length=20))"
    encrypted = EncryptedType(String(20), key=KEY, associated_data="users.ssn")
    assert repr(encrypted) == "EncryptedType(String(length=20), associated_data='users.ssn')"
    assert KEY not in repr(encrypted) and KEY not in str(encrypted.__dict__.get("inner_type"))
