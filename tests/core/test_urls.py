"""URL conversion (seed 004) and masking."""

from __future__ import annotations

import pytest

from repom.async_session import convert_to_async_uri
from repom.urls import convert_to_sync_uri, mask_url


@pytest.mark.parametrize(
    ("sync", "expected"),
    [
        ("sqlite:///data/db.sqlite3", "sqlite+aiosqlite:///data/db.sqlite3"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://user:pass@localhost/db", "postgresql+asyncpg://user:pass@localhost/db"),
        (
            "postgresql+psycopg://u@h:5433/d?sslmode=require",
            "postgresql+asyncpg://u@h:5433/d?sslmode=require",
        ),
        ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("mysql://root@127.0.0.1/test", "mysql+aiomysql://root@127.0.0.1/test"),
        ("mysql+pymysql://root@127.0.0.1/test", "mysql+aiomysql://root@127.0.0.1/test"),
        # already async: unchanged
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+psycopg_async://u@h/d", "postgresql+psycopg_async://u@h/d"),
        ("mysql+aiomysql://u@h/d", "mysql+aiomysql://u@h/d"),
    ],
)
def test_convert_to_async_uri(sync: str, expected: str) -> None:
    assert convert_to_async_uri(sync) == expected


@pytest.mark.parametrize("bad", ["oracle://u@h/x", "mssql+pyodbc://u@h/x", "nonsense", ""])
def test_unknown_urls_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        convert_to_async_uri(bad)


def test_sync_conversion_and_masking() -> None:
    assert convert_to_sync_uri("postgresql+asyncpg://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    assert convert_to_sync_uri("sqlite+aiosqlite:///x.db") == "sqlite:///x.db"
    assert mask_url("postgresql://u:topsecret@h/d") == "postgresql://u:***@h/d"
    assert "topsecret" not in mask_url("weird://u:topsecret@h")
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
