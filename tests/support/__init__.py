"""Helpers shared by the test suite."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

# plain postgresql:// URLs mean psycopg 3 here, whatever SQLAlchemy's default driver is
PG_URL = os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test").replace(
    "postgresql://", "postgresql+psycopg://", 1
)
MYSQL_URL = os.environ.get("REPOM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@functools.cache
def pg_available() -> bool:
    import psycopg

    try:
        conninfo = PG_URL.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, connect_timeout=3):
            return True
    except Exception:
        return False


@functools.cache
def mysql_available() -> bool:
    import pymysql

    try:
        pymysql.connect(
            host="127.0.0.1",
            port=3306,
            user="root",
            password="",
            database="test",
            connect_timeout=3,
        ).close()
        return True
    except Exception:
        return False


def require_postgres() -> str:
    """Return the PostgreSQL URL; fail in CI, skip elsewhere, when the server is not reachable."""
    if not pg_available():
        message = f"PostgreSQL not reachable at {PG_URL}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    return PG_URL


def require_mysql() -> str:
    if not mysql_available():
        pytest.skip("MariaDB/MySQL not reachable at 127.0.0.1:3306")
    return MYSQL_URL


async def maybe_await(value: Any) -> Any:
    """Await *value* if it is awaitable (async API), else return it (sync API)."""
    if inspect.isawaitable(value):
        return await value
    return value


@asynccontextmanager
async def enter(cm: Any) -> AsyncIterator[Any]:
    """Enter *cm* with ``async with`` when it supports it, else with ``with``."""
    if hasattr(cm, "__aenter__"):
        async with cm as value:
            yield value
    else:
        with cm as value:
            yield value
