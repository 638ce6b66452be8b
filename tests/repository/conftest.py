"""Repository test fixtures: one scenario body, four runs (sqlite|postgresql x sync|async).

PostgreSQL tables live in a schema of their own per test process (``search_path`` set on every
connection), created once and truncated before each test, so parallel workers never meet.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from repom.database import AsyncDatabase, Database
from repom.repository import AsyncRepository, Repository
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.repository.models import TABLES, RepoBase
from tests.support import PG_URL, enter, maybe_await, pg_available, require_postgres

_IGNORED = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA|SET |SHOW |select pg_)", re.I
)


@dataclass
class Env:
    """What a scenario needs, whatever the flavour."""

    backend: str
    is_async: bool
    url: str
    db: Database | AsyncDatabase
    verify: Engine
    log: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.backend}-{'async' if self.is_async else 'sync'}"

    def session(self) -> Any:
        """``async with env.session() as s`` (a Session or an AsyncSession)."""
        return enter(self.db.session())

    def repo(self, session: Any, model: type[Any], cls: type[Any] | None = None) -> Any:
        if cls is not None:
            return cls(session)
        base = AsyncRepository if self.is_async else Repository
        return base(session, model)

    async def run(self, value: Any) -> Any:
        return await maybe_await(value)

    def reset(self) -> None:
        self.log.clear()

    @property
    def statements(self) -> list[str]:
        """Statements sent since the last reset (transaction control left out)."""
        return [s for s, _ in self.log]

    @property
    def executemany(self) -> list[bool]:
        return [many for _, many in self.log]

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Committed state, read through a separate engine."""
        with self.verify.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    def execute(self, sql: str, **params: Any) -> None:
        with self.verify.begin() as conn:
            conn.execute(text(sql), params)


def _pg_args(schema: str, is_async: bool) -> dict[str, Any]:
    if is_async:
        return {"connect_args": {"server_settings": {"search_path": schema}}}
    return {"connect_args": {"options": f"-c search_path={schema}"}}


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str | None]:
    """A schema of this test process holding the tables (dropped at the end)."""
    if not pg_available():
        yield None
        return
    schema = f"rp_{uuid.uuid4().hex[:10]}"
    url = convert_to_sync_uri(PG_URL)
    engine = create_engine(url, **_pg_args(schema, False))
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    with engine.begin() as conn:
        RepoBase.metadata.create_all(conn)
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def _record(env: Env, sync_engine: Engine) -> None:
    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        text_ = " ".join(statement.split())
        if not _IGNORED.match(text_):
            env.log.append((text_, many))


@pytest.fixture(params=["sqlite-sync", "sqlite-async", "postgresql-sync", "postgresql-async"])
async def env(
    request: pytest.FixtureRequest, tmp_path: Path, pg_schema: str | None
) -> AsyncIterator[Env]:
    backend, mode = request.param.split("-")
    is_async = mode == "async"
    options: dict[str, Any] = {}
    if backend == "postgresql":
        url = convert_to_sync_uri(require_postgres())
        assert pg_schema is not None
        verify = create_engine(url, **_pg_args(pg_schema, False))
        with verify.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        options = _pg_args(pg_schema, is_async)
    else:
        url = f"sqlite:///{tmp_path / 'repo.sqlite3'}"
        verify = create_engine(url)
        RepoBase.metadata.create_all(verify)
    db: Database | AsyncDatabase
    if is_async:
        db = AsyncDatabase(convert_to_async_uri(url), **options)
        sync_engine = db.engine.sync_engine
    else:
        db = Database(url, **options)
        sync_engine = db.engine
    env = Env(backend=backend, is_async=is_async, url=url, db=db, verify=verify)
    _record(env, sync_engine)
    try:
        yield env
    finally:
        await maybe_await(db.dispose())
        verify.dispose()
