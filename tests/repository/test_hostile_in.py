"""``__in`` / ``__not_in`` filters of any length (issue 14, item 5).

A list of 40,000 values used to hit the drivers' parameter limits (asyncpg: 32,767, SQLite:
32,766) with a raw driver error.  Now the list travels as one bound parameter (PostgreSQL: one
array, SQLite: one JSON text), whatever its length, in one statement; MySQL/MariaDB drivers
inline the values client-side, so a plain ``IN`` list is one statement with no limit there.
Every backend and flavour runs the same scenario body.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, String, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.database import AsyncDatabase, Database
from repom.repository import AsyncRepository, Repository
from repom.types import UUIDType
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.support import (
    MYSQL_URL,
    enter,
    maybe_await,
    pg_available,
    require_mysql,
    require_postgres,
)

N = 40_000
ROWS = 60


class InBase(DeclarativeBase):
    pass


class Thing(InBase):
    __tablename__ = "hin_things"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))
    ref: Mapped[uuid.UUID] = mapped_column(UUIDType())


def _ref(i: int) -> uuid.UUID:
    return uuid.UUID(int=(i + 1) * 7919)


def _pg_args(schema: str, is_async: bool) -> dict[str, Any]:
    if is_async:
        return {"connect_args": {"server_settings": {"search_path": schema}}}
    return {"connect_args": {"options": f"-c search_path={schema}"}}


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str | None]:
    if not pg_available():
        yield None
        return
    schema = f"hin_{uuid.uuid4().hex[:10]}"
    engine = create_engine(convert_to_sync_uri(require_postgres()), **_pg_args(schema, False))
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="module")
def mysql_url() -> Iterator[str]:
    require_mysql()
    name = f"hin_{uuid.uuid4().hex[:10]}"
    admin = create_engine(MYSQL_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield MYSQL_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()


class Env:
    def __init__(self, name: str, db: Any, verify: Engine, is_async: bool) -> None:
        self.name = name
        self.db = db
        self.verify = verify
        self.is_async = is_async
        self.log: list[tuple[str, Any]] = []

    def repo(self, session: Any) -> Any:
        return (AsyncRepository if self.is_async else Repository)(session, Thing)

    def ids(self) -> list[int]:
        with self.verify.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT id FROM hin_things ORDER BY id"))]


_FLAVOURS = [
    "sqlite-sync",
    "sqlite-async",
    "postgresql-sync",
    "postgresql-async",
    "mariadb-sync",
    "mariadb-async",
]


@pytest.fixture(params=_FLAVOURS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    backend, mode = request.param.split("-")
    is_async = mode == "async"
    options: dict[str, Any] = {}
    if backend == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        url = convert_to_sync_uri(require_postgres())
        options = _pg_args(schema, is_async)
        verify = create_engine(url, **_pg_args(schema, False))
    elif backend == "mariadb":
        url = request.getfixturevalue("mysql_url")
        verify = create_engine(url)
    else:
        url = f"sqlite:///{tmp_path / 'in.sqlite3'}"
        verify = create_engine(url)
    InBase.metadata.drop_all(verify)
    InBase.metadata.create_all(verify)
    with verify.begin() as conn:
        conn.execute(
            Thing.__table__.insert(),
            [{"id": i, "name": f"n{i}", "ref": _ref(i)} for i in range(ROWS)],
        )
    db: Any
    if is_async:
        db = AsyncDatabase(convert_to_async_uri(url), **options)
        engine = db.engine.sync_engine
    else:
        db = Database(url, **options)
        engine = db.engine
    env = Env(request.param, db, verify, is_async)

    @event.listens_for(engine, "before_cursor_execute")
    def _log(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SELECT PG_")):
            env.log.append((" ".join(statement.split()), params))

    try:
        yield env
    finally:
        await maybe_await(db.dispose())
        verify.dispose()


def _param_count(params: Any) -> int:
    return len(params) if isinstance(params, (dict, list, tuple)) else 0


async def test_in_filter_of_40000_values_is_one_statement(env: Env) -> None:
    wanted_ids = [i * 3 for i in range(N)]  # hits 0, 3, ..., 57
    wanted_names = [f"n{i * 5}" for i in range(N)]  # hits n0, n5, ..., n55
    known = [_ref(i) for i in (1, 2, 40)]
    wanted_refs = known + [uuid.uuid4() for _ in range(N - len(known))]
    async with enter(env.db.session()) as session:
        repo = env.repo(session)

        env.log.clear()
        found = await maybe_await(repo.list(id__in=wanted_ids, order_by="id"))
        assert [t.id for t in found] == list(range(0, ROWS, 3))
        assert len(env.log) == 1, env.log  # one statement, whatever the list length
        if not env.name.startswith("mariadb"):
            # the list is one bound parameter (MySQL drivers inline values client-side)
            assert _param_count(env.log[0][1]) <= 3, env.name

        found = await maybe_await(repo.list(name__in=wanted_names, order_by="id"))
        assert [t.id for t in found] == list(range(0, ROWS, 5))

        # UUIDs: native uuid on PostgreSQL, 32 hex digits in CHAR(32) elsewhere
        found = await maybe_await(repo.list(ref__in=wanted_refs, order_by="id"))
        assert [t.id for t in found] == [1, 2, 40]
        assert [t.ref for t in found] == known
        # strings are coerced to the column's type, as for every filter
        found = await maybe_await(repo.list(ref__in=[str(r) for r in wanted_refs]))
        assert sorted(t.id for t in found) == [1, 2, 40]

        not_in = await maybe_await(repo.list(id__not_in=wanted_ids, order_by="id"))
        assert [t.id for t in not_in] == [i for i in range(ROWS) if i % 3]

        assert await maybe_await(repo.count(id__in=wanted_ids)) == 20
        assert await maybe_await(repo.count(ref__not_in=wanted_refs)) == ROWS - 3
        assert await maybe_await(repo.exists(name__in=wanted_names)) is True
        assert await maybe_await(repo.exists(id__in=[-i for i in range(1, N + 1)])) is False
        page = await maybe_await(repo.paginate(2, 5, id__in=wanted_ids, order_by="id"))
        assert page.total == 20
        assert [t.id for t in page.items] == [15, 18, 21, 24, 27]

        # the same statement shape with other values: cached SQL, fresh parameters
        again = await maybe_await(repo.list(id__in=[1, 2], order_by="id"))
        assert [t.id for t in again] == [1, 2]
        assert await maybe_await(repo.list(id__in=[])) == []
        assert len(await maybe_await(repo.list(id__not_in=[]))) == ROWS

        deleted = await maybe_await(repo.delete_where(id__in=wanted_ids))
        assert deleted == 20
        deleted = await maybe_await(repo.delete_where(ref__in=wanted_refs))
        assert deleted == 3  # ids 1, 2 and 40 are not multiples of 3: still there
        await maybe_await(session.commit())
    assert env.ids() == [i for i in range(ROWS) if i % 3 and i not in (1, 2, 40)]
