"""Helpers for the FastAPI and demo tests.

Each PostgreSQL test runs in a schema of its own (``search_path`` set at connect time), so test
files can run in parallel (pytest-xdist) against one database without their tables colliding;
the schema is dropped afterwards.  SQLite tests get a file in ``tmp_path``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from repom.database import AsyncDatabase, Database
from repom.urls import convert_to_async_uri, convert_to_sync_uri


@dataclass
class Backend:
    """One database for one test: repom databases on it, and a separate engine to verify."""

    name: str  # "sqlite" | "postgresql"
    sync_url: str
    schema: str | None = None
    _made: list[Database | AsyncDatabase] = field(default_factory=list)

    @property
    def async_url(self) -> str:
        return convert_to_async_uri(self.sync_url)

    def database(self, **options: Any) -> Database:
        if self.schema is not None:
            options.setdefault("connect_args", {"options": f"-csearch_path={self.schema}"})
        db = Database(self.sync_url, **options)
        self._made.append(db)
        return db

    def async_database(self, **options: Any) -> AsyncDatabase:
        if self.schema is not None:
            options.setdefault("connect_args", {"server_settings": {"search_path": self.schema}})
        db = AsyncDatabase(self.async_url, **options)
        self._made.append(db)
        return db

    def flavour_database(self, flavour: str, **options: Any) -> Database | AsyncDatabase:
        if flavour == "async":
            return self.async_database(**options)
        return self.database(**options)

    def verify_engine(self) -> Engine:
        """A plain SQLAlchemy engine (no repom) that reads committed state."""
        connect_args: dict[str, Any] = {}
        if self.schema is not None:
            connect_args["options"] = f"-csearch_path={self.schema}"
        return create_engine(self.sync_url, poolclass=NullPool, connect_args=connect_args)

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = self.verify_engine()
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    async def dispose_all(self) -> None:
        for db in self._made:
            if isinstance(db, AsyncDatabase):
                await db.dispose()
            else:
                db.dispose()


@contextmanager
def make_backend(url: str, tmp_path: Path) -> Iterator[Backend]:
    """A :class:`Backend` on *url*: a fresh schema on PostgreSQL, the file itself on SQLite."""
    if url.startswith("sqlite"):
        yield Backend("sqlite", url)
        return
    sync_url = convert_to_sync_uri(url)
    schema = f"h6_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sync_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield Backend("postgresql", sync_url, schema=schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def sync_engine_of(db: Database | AsyncDatabase) -> Engine:
    return db.engine.sync_engine if isinstance(db, AsyncDatabase) else db.engine


@dataclass
class StatementLog:
    """SQL sent through an engine (``before_cursor_execute``) plus COMMIT/ROLLBACK markers."""

    statements: list[str] = field(default_factory=list)

    def attach(self, db: Database | AsyncDatabase) -> StatementLog:
        engine = sync_engine_of(db)

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            self.statements.append(" ".join(statement.split()))

        def marker(name: str) -> Callable[..., None]:
            def listener(*args: Any) -> None:
                self.statements.append(name)

            return listener

        event.listen(engine, "before_cursor_execute", record)
        event.listen(engine, "commit", marker("COMMIT"))
        event.listen(engine, "rollback", marker("ROLLBACK"))
        return self

    def count(self, prefix: str) -> int:
        return sum(1 for s in self.statements if s.upper().startswith(prefix))

    def clear(self) -> None:
        self.statements.clear()
