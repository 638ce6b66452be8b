"""Core test fixtures: one scenario body, four flavours (sqlite|postgresql x sync|async)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from repom.database import AsyncDatabase, Database
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.core.models import CoreBase
from tests.support import enter, maybe_await, require_postgres


@dataclass
class Flavor:
    """Everything a scenario needs, whatever the flavour."""

    backend: str
    is_async: bool
    url: str
    db: Database | AsyncDatabase
    verify: Engine
    statements: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.backend}-{'async' if self.is_async else 'sync'}"

    async def run(self, value: Any) -> Any:
        return await maybe_await(value)

    def enter(self, cm: Any) -> Any:
        """``async with flavor.enter(cm)``: ``async with`` when async, else ``with``."""
        if self.is_async:
            return cm
        return enter(_SyncOnly(cm))

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Read committed state through a separate connection."""
        with self.verify.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]


class _SyncOnly:
    """Hide ``__aenter__`` so :func:`tests.support.enter` uses ``with``."""

    def __init__(self, cm: Any) -> None:
        self._cm = cm

    def __enter__(self) -> Any:
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)


def _backend_url(backend: str, tmp_path: Path) -> str:
    if backend == "postgresql":
        return convert_to_sync_uri(require_postgres())
    return f"sqlite:///{tmp_path / 'core.sqlite3'}"


@pytest.fixture(params=["sqlite-sync", "sqlite-async", "postgresql-sync", "postgresql-async"])
async def flavor(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Flavor]:
    backend, mode = request.param.split("-")
    url = _backend_url(backend, tmp_path)
    verify = create_engine(url)
    CoreBase.metadata.drop_all(verify)
    CoreBase.metadata.create_all(verify)
    is_async = mode == "async"
    db: Database | AsyncDatabase
    if is_async:
        db = AsyncDatabase(convert_to_async_uri(url))
        sync_engine = db.engine.sync_engine
    else:
        db = Database(url)
        sync_engine = db.engine
    flavor = Flavor(backend=backend, is_async=is_async, url=url, db=db, verify=verify)

    log = flavor.statements

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN is logged by the begin event
            log.append(" ".join(statement.split()))

    def _marker(name: str) -> Any:
        def listener(*args: Any) -> None:
            log.append(name)

        return listener

    for name, marker in [
        ("begin", "BEGIN"),
        ("commit", "COMMIT"),
        ("rollback", "ROLLBACK"),
    ]:
        event.listen(sync_engine, name, _marker(marker))

    try:
        yield flavor
    finally:
        await maybe_await(db.dispose())
        CoreBase.metadata.drop_all(verify)
        verify.dispose()


_STATS: dict[str, Any] = {}


@pytest.fixture
def flavor_stats() -> dict[str, Any]:
    """Figures a test wants reported at the end of the run (see pytest_terminal_summary)."""
    return _STATS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _STATS:
        terminalreporter.write_line("repom concurrency figures: " + repr(_STATS))
