"""A harness for model/type tests: one scenario body, sync or async, SQLite or PostgreSQL.

PostgreSQL tests run in a schema of their own (``schema_translate_map``), dropped afterwards, so
parallel workers and other test files never see each other's tables.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, Table, event, text
from sqlalchemy.orm import DeclarativeBase, MappedAsDataclass, registry, sessionmaker

from repom.config import RepomConfig
from repom.engine import build_async_engine, build_engine
from repom.models import TYPE_ANNOTATION_MAP, ModelMixin, RepomSession, new_metadata
from repom.urls import convert_to_async_uri

CONFIG = RepomConfig(environment="test")


def _tables(items: Iterable[Any]) -> list[Table]:
    return [item if isinstance(item, Table) else item.__table__ for item in items]


@dataclass
class Harness:
    flavour: str  # "sync" | "async"
    backend: str  # "sqlite" | "postgresql"
    url: str
    schema: str | None
    raw_engine: Engine  # separate engine: DDL and reading what the sessions committed
    session_engine: Any  # Engine or AsyncEngine used by sessions
    statements: list[str] = field(default_factory=list)

    @property
    def is_async(self) -> bool:
        return self.flavour == "async"

    def session(self, **kwargs: Any) -> Any:
        kwargs.setdefault("expire_on_commit", False)
        if self.is_async:
            from sqlalchemy.ext.asyncio import AsyncSession

            return AsyncSession(self.session_engine, sync_session_class=RepomSession, **kwargs)
        return RepomSession(self.session_engine, **kwargs)

    def create(self, *items: Any) -> None:
        tables = _tables(items)
        with self.raw_engine.begin() as conn:
            tables[0].metadata.create_all(conn, tables=tables)

    def raw(self, sql: str, **params: Any) -> list[Any]:
        """Rows read with the separate engine (what is really stored)."""
        with self.raw_engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def raw_exec(self, sql: str, **params: Any) -> None:
        with self.raw_engine.begin() as conn:
            conn.execute(text(sql), params)

    def table(self, name: str) -> str:
        """The name to use in raw SQL for table *name* (schema-qualified on PostgreSQL)."""
        return f"{self.schema}.{name}" if self.schema else name

    def capture(self) -> list[str]:
        self.statements.clear()
        return self.statements

    @property
    def work(self) -> list[str]:
        """Captured statements without transaction control (SQLite's explicit BEGIN)."""
        return [s for s in self.statements if s.strip().upper() not in ("BEGIN", "BEGIN IMMEDIATE")]

    def sql(self, prefix: str) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(prefix)]


def make_engines(url: str, flavour: str) -> tuple[Engine, Any, str | None]:
    schema = None
    options: dict[str, Any] = {}
    raw = build_engine(url, config=CONFIG)
    if raw.dialect.name in ("postgresql", "mysql", "mariadb"):
        schema = f"rm_{uuid.uuid4().hex[:12]}"
        kind = "SCHEMA" if raw.dialect.name == "postgresql" else "DATABASE"  # MySQL: a database
        with raw.begin() as conn:
            conn.execute(text(f"CREATE {kind} {schema}"))
        options["schema_translate_map"] = {None: schema}
        raw = raw.execution_options(**options)
    if flavour == "async":
        session_engine: Any = build_async_engine(convert_to_async_uri(url), config=CONFIG)
    else:
        session_engine = build_engine(url, config=CONFIG)
    if options:
        session_engine = session_engine.execution_options(**options)
    return raw, session_engine, schema


async def dispose(harness_raw: Engine, session_engine: Any, schema: str | None) -> None:
    if hasattr(session_engine, "sync_engine"):
        await session_engine.dispose()
    else:
        session_engine.dispose()
    if schema:
        with harness_raw.begin() as conn:
            if harness_raw.dialect.name == "postgresql":
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            else:
                conn.execute(text(f"DROP DATABASE {schema}"))
    harness_raw.dispose()


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def harness(db_url: str, flavour: str) -> AsyncIterator[Harness]:
    """SQLite or PostgreSQL x sync or async."""
    raw, session_engine, schema = make_engines(db_url, flavour)
    backend = raw.dialect.name
    h = Harness(flavour, backend, db_url, schema, raw, session_engine)
    sync_engine = getattr(session_engine, "sync_engine", session_engine)

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        h.statements.append(statement)

    try:
        yield h
    finally:
        event.remove(sync_engine, "before_cursor_execute", _record)
        await dispose(raw, session_engine, schema)


@pytest.fixture
async def sync_harness(db_url: str) -> AsyncIterator[Harness]:
    """SQLite or PostgreSQL, sync only (for checks that involve no session I/O differences)."""
    raw, session_engine, schema = make_engines(db_url, "sync")
    h = Harness("sync", raw.dialect.name, db_url, schema, raw, session_engine)

    @event.listens_for(session_engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        h.statements.append(statement)

    try:
        yield h
    finally:
        await dispose(raw, session_engine, schema)


def sessionmaker_for(h: Harness) -> Any:
    if h.is_async:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        return async_sessionmaker(
            h.session_engine, sync_session_class=RepomSession, expire_on_commit=False
        )
    return sessionmaker(h.session_engine, class_=RepomSession, expire_on_commit=False)


def make_bases() -> tuple[type[DeclarativeBase], type[DeclarativeBase]]:
    """Fresh bases configured like ``repom.models.Base`` / ``DataclassBase`` (own registry and
    metadata, so test models never leak into the application's ``Base.metadata``)."""
    metadata = new_metadata()

    class PlainBase(ModelMixin, DeclarativeBase):
        registry = registry(metadata=metadata, type_annotation_map=TYPE_ANNOTATION_MAP)

    class DCBase(ModelMixin, MappedAsDataclass, DeclarativeBase):
        registry = registry(metadata=metadata, type_annotation_map=TYPE_ANNOTATION_MAP)

    return PlainBase, DCBase
