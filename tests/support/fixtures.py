"""Fixtures available to every test (registered from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import require_postgres


@pytest.fixture
def pg_url() -> str:
    """PostgreSQL URL (plain ``postgresql://``); fails in CI when the server is down."""
    return require_postgres()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path / 'test.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database URL, once per backend."""
    if request.param == "postgresql":
        return require_postgres()
    return f"sqlite:///{tmp_path / 'test.sqlite3'}"


@pytest.fixture(autouse=True)
def _isolated_repom_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees another test's process-wide config or default databases."""
    for name in ("DATABASE_URL", "REPOM_DATABASE_URL", "CONFIG_HOOK", "REPOM_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    from repom import config

    config.reset_config()
    yield
    config.reset_config()
