"""Bulk writes under concurrency and odd keys (issue 14, item 4).

* Rows are written in key order, so two concurrent ``bulk_upsert``/``bulk_update`` calls over
  the same keys in opposite orders queue behind each other instead of deadlocking.
* Duplicate keys in one batch: the last row wins, also when the duplicates are spelled
  differently (a UUID and its string); keys only the database sees as equal get a typed error
  naming them, not PostgreSQL's raw "cannot affect row a second time".
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import CHAR, Engine, Integer, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.database import AsyncDatabase, Database
from repom.repository import AsyncRepository, InvalidOptionError, Repository
from repom.types import UUIDType
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.support import enter, maybe_await, pg_available, require_postgres

KEYS = 2_000
ROUNDS = 20


class BulkBase(DeclarativeBase):
    pass


class Cell(BulkBase):
    __tablename__ = "hb_cells"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    val: Mapped[str] = mapped_column(String(30))


class Badge(BulkBase):
    __tablename__ = "hb_badges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[uuid.UUID] = mapped_column(UUIDType(), unique=True)
    code: Mapped[str] = mapped_column(CHAR(4), unique=True)
    label: Mapped[str] = mapped_column(String(30))


def _pg_args(schema: str, is_async: bool) -> dict[str, Any]:
    if is_async:
        return {"connect_args": {"server_settings": {"search_path": schema}}}
    return {"connect_args": {"options": f"-c search_path={schema}"}}


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str | None]:
    if not pg_available():
        yield None
        return
    schema = f"hb_{uuid.uuid4().hex[:10]}"
    engine = create_engine(convert_to_sync_uri(require_postgres()), **_pg_args(schema, False))
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


class Env:
    def __init__(self, name: str, db: Any, verify: Engine, is_async: bool) -> None:
        self.name, self.db, self.verify, self.is_async = name, db, verify, is_async

    def repo(self, session: Any, model: type[Any]) -> Any:
        return (AsyncRepository if self.is_async else Repository)(session, model)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.verify.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]


async def _make_env(param: str, request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    backend, mode = param.split("-")
    is_async = mode == "async"
    options: dict[str, Any] = {}
    if backend == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        url = convert_to_sync_uri(require_postgres())
        options = _pg_args(schema, is_async)
        verify = create_engine(url, **_pg_args(schema, False))
    else:
        url = f"sqlite:///{tmp_path / 'bulk.sqlite3'}"
        verify = create_engine(url)
    BulkBase.metadata.drop_all(verify)
    BulkBase.metadata.create_all(verify)
    db: Any
    if is_async:
        db = AsyncDatabase(convert_to_async_uri(url), **options)
    else:
        db = Database(url, **options)
    return Env(param, db, verify, is_async)


@pytest.fixture(params=["sqlite-sync", "sqlite-async", "postgresql-sync", "postgresql-async"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    env = await _make_env(request.param, request, tmp_path)
    try:
        yield env
    finally:
        await maybe_await(env.db.dispose())
        env.verify.dispose()


@pytest.fixture(params=["postgresql-sync", "postgresql-async"])
async def pg_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    env = await _make_env(request.param, request, tmp_path)
    try:
        yield env
    finally:
        await maybe_await(env.db.dispose())
        env.verify.dispose()


async def _race(env: Env, write: Any) -> list[BaseException]:
    """Run ``write(repo, keys, tag)`` in two transactions at once (threads for the sync API,
    tasks for the async one), keys ascending in one and descending in the other."""
    ascending = list(range(KEYS))
    descending = ascending[::-1]
    errors: list[BaseException] = []
    if env.is_async:

        async def one(keys: list[int], tag: str) -> None:
            try:
                async with enter(env.db.session()) as session:
                    await write(env.repo(session, Cell), keys, tag)
                    await session.commit()
            except Exception as exc:
                errors.append(exc)

        await asyncio.gather(one(ascending, "A"), one(descending, "B"))
        return errors
    barrier = threading.Barrier(2)

    def run(keys: list[int], tag: str) -> None:
        try:
            with env.db.session() as session:
                barrier.wait()
                write(env.repo(session, Cell), keys, tag)
                session.commit()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in ((ascending, "A"), (descending, "B"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


async def _seed(env: Env) -> None:
    env.verify.dispose()
    with env.verify.begin() as conn:
        conn.execute(Cell.__table__.insert(), [{"id": i, "val": "seed"} for i in range(KEYS)])


def _check_round(env: Env, round_: int) -> None:
    found = env.rows("SELECT val, count(*) FROM hb_cells GROUP BY val")
    # the transaction that committed last wrote every row: one value, on all KEYS rows
    assert len(found) == 1 and found[0][1] == KEYS, (round_, found)
    assert found[0][0] in (f"{round_}-A", f"{round_}-B"), found


async def test_opposite_order_bulk_upserts_never_deadlock(pg_env: Env) -> None:
    await _seed(pg_env)
    failures: list[BaseException] = []
    for round_ in range(ROUNDS):

        def write(repo: Any, keys: list[int], tag: str, round_: int = round_) -> Any:
            return repo.bulk_upsert([{"id": k, "val": f"{round_}-{tag}"} for k in keys])

        errors = await _race(pg_env, write)
        failures.extend(errors)
        if not errors:
            _check_round(pg_env, round_)
    assert failures == [], f"{len(failures)} of {ROUNDS} rounds failed: {failures[:1]!r}"


async def test_opposite_order_bulk_updates_never_deadlock(pg_env: Env) -> None:
    await _seed(pg_env)
    failures: list[BaseException] = []
    for round_ in range(ROUNDS):

        def write(repo: Any, keys: list[int], tag: str, round_: int = round_) -> Any:
            return repo.bulk_update([{"id": k, "val": f"{round_}-{tag}"} for k in keys])

        errors = await _race(pg_env, write)
        failures.extend(errors)
        if not errors:
            _check_round(pg_env, round_)
    assert failures == [], f"{len(failures)} of {ROUNDS} rounds failed: {failures[:1]!r}"


async def test_same_key_spelled_twice_in_one_batch_last_row_wins(env: Env) -> None:
    ref = uuid.uuid4()
    rows = [
        {"id": 1, "ref": ref, "code": "a1", "label": "first"},
        {"id": 2, "ref": uuid.uuid4(), "code": "b2", "label": "other"},
        {"id": 3, "ref": str(ref), "code": "c3", "label": "last"},  # the same UUID, as text
    ]
    async with enter(env.db.session()) as session:
        count = await maybe_await(env.repo(session, Badge).bulk_upsert(rows, conflict_on="ref"))
        assert count == 2
        await maybe_await(session.commit())
    assert env.rows("SELECT id, rtrim(code), label FROM hb_badges ORDER BY id") == [
        (2, "b2", "other"),
        (3, "c3", "last"),
    ]


async def test_keys_equal_only_in_the_database_get_a_typed_error(pg_env: Env) -> None:
    # CHAR(4) ignores trailing blanks: "ab" and "ab  " are one key for PostgreSQL
    rows = [
        {"id": 1, "ref": uuid.uuid4(), "code": "ab", "label": "x"},
        {"id": 2, "ref": uuid.uuid4(), "code": "ab  ", "label": "y"},
    ]
    async with enter(pg_env.db.session()) as session:
        repo = pg_env.repo(session, Badge)
        with pytest.raises(InvalidOptionError) as caught:
            await maybe_await(repo.bulk_upsert(rows, conflict_on="code"))
        await maybe_await(session.rollback())
    message = str(caught.value)
    assert "same conflict key (code)" in message
    assert "'ab'" in message and "'ab  '" in message
    assert caught.value.option == "items"
    assert "INSERT" not in message  # no SQL, no parameters in the message
    assert pg_env.rows("SELECT count(*) FROM hb_badges") == [(0,)]
