"""Fixtures for the repom.fastapi tests: a backend per test, sync and async flavours."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fastapi._support import Backend, make_backend


@pytest.fixture
async def backend(db_url: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """SQLite file or a private PostgreSQL schema (see tests.fastapi._support)."""
    with make_backend(db_url, tmp_path) as made:
        try:
            yield made
        finally:
            await made.dispose_all()


@pytest.fixture
async def sqlite_backend(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Backend]:
    with make_backend(sqlite_url, tmp_path) as made:
        try:
            yield made
        finally:
            await made.dispose_all()


@pytest.fixture
async def pg_backend(pg_url: str, tmp_path: Path) -> AsyncIterator[Backend]:
    with make_backend(pg_url, tmp_path) as made:
        try:
            yield made
        finally:
            await made.dispose_all()


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)
