"""Values the schema forbids: every repository write refuses them with a
DataValidationError naming the model and the field, on every backend, and writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import Body, FastAPI
from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    create_engine,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.database import AsyncDatabase, Database
from repom.exceptions import DataValidationError, translate
from repom.fastapi import AsyncDbSession, DbSession, install_exception_handlers, use_databases
from repom.repository import AsyncRepository, Repository
from repom.urls import convert_to_async_uri
from tests.repository.conftest import Env
from tests.support import MYSQL_URL, enter, maybe_await, require_mysql


class HVBase(DeclarativeBase):
    pass


class Sample(HVBase):
    __tablename__ = "hv_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    small: Mapped[int | None] = mapped_column(SmallInteger)
    num: Mapped[int | None] = mapped_column(Integer)
    big: Mapped[int | None] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(String(50))
    body: Mapped[str | None] = mapped_column(Text)
    flag: Mapped[bool | None] = mapped_column(Boolean)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))


#: values at the very edge of what the columns allow: stored unchanged
GOOD: dict[str, Any] = {
    "id": 1,
    "small": -(2**15),
    "num": 2**31 - 1,
    "big": 2**63 - 1,
    "name": "é" * 50,  # 50 characters (100 bytes in UTF-8)
    "body": "ü" * 20_000,  # Text: no length check (MySQL's TEXT holds 64 KiB)
    "flag": True,
    "amount": Decimal("999.99"),
}

BAD = [
    pytest.param("num", "abc", "expected an integer, got str", id="str-in-integer"),
    pytest.param("num", "12", "expected an integer, got str", id="numeric-str-in-integer"),
    pytest.param("num", True, "expected an integer, got bool", id="bool-in-integer"),
    pytest.param("num", 2**31, "32-bit range", id="int32-overflow"),
    pytest.param("small", 2**15, "16-bit range", id="int16-overflow"),
    pytest.param("big", -(2**63) - 1, "64-bit range", id="int64-underflow"),
    pytest.param("big", 2**70, "64-bit range", id="beyond-int64"),
    pytest.param("name", "x" * 5000, "5000 characters is longer than the column's 50", id="long"),
    pytest.param("name", "é" * 51, "51 characters is longer", id="long-in-characters"),
    pytest.param("name", "a\ud800b", "lone surrogate (U+D800)", id="surrogate-string"),
    pytest.param("body", "\udfff", "lone surrogate (U+DFFF)", id="surrogate-text"),
    pytest.param("body", "a\x00b", "NUL character", id="nul"),
    pytest.param("name", 5, "expected a string, got int", id="int-in-string"),
    pytest.param("flag", "yes", "expected True or False, got str", id="str-in-boolean"),
    pytest.param("flag", 1, "expected True or False, got int", id="int-in-boolean"),
    pytest.param("amount", Decimal("1000"), "more than 3 digit(s)", id="numeric-overflow"),
    pytest.param("amount", Decimal("999.995"), "more than 3 digit(s)", id="numeric-rounds-over"),
    pytest.param("amount", Decimal("NaN"), "finite", id="numeric-nan"),
    pytest.param("amount", "1.5", "expected a Decimal or a number, got str", id="str-in-numeric"),
]


def _prepare(verify: Any) -> None:
    HVBase.metadata.create_all(verify)
    with verify.begin() as conn:
        conn.execute(text("DELETE FROM hv_samples"))


def _stored(verify: Any) -> list[tuple[Any, ...]]:
    with verify.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                text("SELECT id, small, num, big, name, body, flag, amount FROM hv_samples")
            )
        ]


def _expected_good() -> tuple[Any, ...]:
    return tuple(GOOD[k] for k in ("id", "small", "num", "big", "name", "body", "flag", "amount"))


def _repo(is_async: bool, session: Any) -> Any:
    return (AsyncRepository if is_async else Repository)(session, Sample)


def _same(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # read over plain SQL: SQLite/MariaDB give booleans as 0/1, SQLite gives numerics as floats
    values = list(row)
    values[6] = bool(values[6])
    values[7] = Decimal(str(values[7])).quantize(Decimal("0.01"))
    return tuple(values)


async def _refuses_everywhere(db: Any, verify: Any, is_async: bool, field: str, bad: Any, msg: str):
    """create / update / bulk_create / bulk_update / upsert / bulk_upsert all refuse *bad* in
    *field*; the session is committed afterwards and still nothing was written."""
    async with enter(db.session()) as session:
        repo = _repo(is_async, session)
        await maybe_await(repo.create(dict(GOOD)))
        await maybe_await(session.commit())
    assert [_same(r) for r in _stored(verify)] == [_expected_good()]

    attempts: list[tuple[str, Any]] = [
        ("create", lambda r, obj: r.create({**GOOD, "id": 2, field: bad})),
        ("update", lambda r, obj: r.update(obj, {field: bad})),
        (
            "bulk_create",
            lambda r, obj: r.bulk_create([{**GOOD, "id": 3}, {**GOOD, "id": 4, field: bad}]),
        ),
        ("bulk_update", lambda r, obj: r.bulk_update([{"id": 1, field: bad}])),
        ("upsert", lambda r, obj: r.upsert({**GOOD, field: bad})),
        ("bulk_upsert", lambda r, obj: r.bulk_upsert([{**GOOD, "id": 5, field: bad}])),
    ]
    for what, call in attempts:
        async with enter(db.session()) as session:
            repo = _repo(is_async, session)
            obj = await maybe_await(repo.get_by_id(1))
            with pytest.raises(DataValidationError) as info:
                await maybe_await(call(repo, obj))
            error = info.value
            assert f"Sample.{field}" in str(error), what
            assert msg in str(error), what
            assert getattr(error, "field", None) == field, what
            assert getattr(error, "model", None) == "Sample", what
            if isinstance(bad, str) and len(bad) >= 3:
                assert bad not in str(error), what  # the value is never echoed
            await maybe_await(session.commit())  # nothing pending: the commit writes nothing
        assert [_same(r) for r in _stored(verify)] == [_expected_good()], what


@pytest.mark.parametrize(("field", "bad", "msg"), BAD)
async def test_forbidden_value_refused_by_every_write(
    env: Env, field: str, bad: Any, msg: str
) -> None:
    """SQLite/PostgreSQL x sync/async: each value the column type forbids -> a
    DataValidationError naming Sample.<field>, for every write method; nothing stored."""
    _prepare(env.verify)
    await _refuses_everywhere(env.db, env.verify, env.is_async, field, bad, msg)


@pytest.fixture(scope="module")
def mysql_url() -> Iterator[str]:
    require_mysql()
    name = f"hv_{uuid.uuid4().hex[:10]}"
    admin = create_engine(MYSQL_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    try:
        yield MYSQL_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize(
    ("field", "bad", "msg"),
    [p for p in BAD if p.id in ("str-in-integer", "long", "surrogate-string", "beyond-int64")],
)
async def test_forbidden_value_refused_on_mariadb(
    mysql_url: str, flavour: str, field: str, bad: Any, msg: str
) -> None:
    verify = create_engine(mysql_url)
    _prepare(verify)
    is_async = flavour == "async"
    db: Any = AsyncDatabase(convert_to_async_uri(mysql_url)) if is_async else Database(mysql_url)
    try:
        await _refuses_everywhere(db, verify, is_async, field, bad, msg)
    finally:
        await maybe_await(db.dispose())
        verify.dispose()


def test_translate_maps_unencodable_parameters() -> None:
    """A UnicodeEncodeError / OverflowError raised while binding parameters (as SQLAlchemy
    wraps it in a StatementError) becomes a DataValidationError that does not echo the value."""
    secret = "s3cr3t\ud800"
    wrapped = sa_exc.StatementError(
        "bind failed",
        "INSERT INTO t (s) VALUES (?)",
        {"s": secret},
        UnicodeEncodeError("utf-8", secret, 6, 7, "surrogates not allowed"),
    )
    error = translate(wrapped)
    assert isinstance(error, DataValidationError)
    assert "surrogates not allowed" in str(error) and "position 6" in str(error)
    assert "s3cr3t" not in str(error) and "INSERT" not in str(error)
    too_big = sa_exc.StatementError(
        "bind failed", "INSERT", {"n": 2**70}, OverflowError("int too large")
    )
    assert isinstance(translate(too_big), DataValidationError)
    assert str(2**70) not in str(translate(too_big))


async def test_fastapi_lone_surrogate_is_422(env: Env) -> None:
    """A JSON body with a lone surrogate ("\\ud800" is valid JSON) reaching a repository
    create() answers 422 invalid_value on every backend, never 500; nothing stored."""
    _prepare(env.verify)
    app = FastAPI()
    install_exception_handlers(app)
    if env.is_async:
        assert isinstance(env.db, AsyncDatabase)
        use_databases(app, async_database=env.db)

        @app.post("/samples", status_code=201)
        async def add_async(session: AsyncDbSession, name: str = Body(embed=True)) -> None:
            await AsyncRepository(session, Sample).create({"id": 1, "name": name})

    else:
        assert isinstance(env.db, Database)
        use_databases(app, database=env.db)

        @app.post("/samples", status_code=201)
        def add_sync(session: DbSession, name: str = Body(embed=True)) -> None:
            Repository(session, Sample).create({"id": 1, "name": name})

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(
            "/samples",
            content=b'{"name": "ab\\ud800"}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_value"
    assert "Sample.name" in response.json()["detail"]
    assert _stored(env.verify) == []


@pytest.mark.parametrize("bad", [{"name": "ab\ud800"}, {"big": 2**70}], ids=["surrogate", "int"])
async def test_plain_flush_of_an_unsendable_value_is_typed(env: Env, bad: dict[str, Any]) -> None:
    """Without a repository: ``session.add`` + ``flush`` of a value the driver cannot send is a
    typed 4xx error (DataValidationError, or the database's own InvalidDataError), never the
    driver's raw UnicodeEncodeError/OverflowError; nothing stored."""
    from repom.exceptions import InvalidDataError
    from repom.transactions import transaction

    _prepare(env.verify)
    with pytest.raises((DataValidationError, InvalidDataError)) as info:
        if env.is_async:
            async with transaction(database=env.db) as session:
                session.add(Sample(**{"id": 1, "name": "ok", **bad}))
                await session.flush()
        else:
            with transaction(database=env.db) as sync_session:
                sync_session.add(Sample(**{"id": 1, "name": "ok", **bad}))
                sync_session.flush()
    assert "\ud800" not in str(info.value)
    assert _stored(env.verify) == []
