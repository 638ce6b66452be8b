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


# ------------------------------------------------------------------ multi-host URLs (issue 16)

COMMA = "postgresql://app:s3cr,et@h1:5432,h2:5433/db?target_session_attrs=read-write"
QUERY = "postgresql://app:s3cr,et@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write"


def test_libpq_comma_form_becomes_sqlalchemy_query_form() -> None:
    from repom.urls import normalize_multihost

    assert normalize_multihost(COMMA) == QUERY
    assert normalize_multihost(QUERY) == QUERY  # already SQLAlchemy's form
    assert normalize_multihost("postgresql://h1,h2/db") == "postgresql:///db?host=h1&host=h2"
    assert normalize_multihost("postgresql://u@h1:1,h2:2") == "postgresql://u@/?host=h1:1&host=h2:2"
    # single hosts and other databases are untouched (a comma elsewhere is not a host list)
    for url in (
        "postgresql://u:p@h:5432/db?options=-c%20a=1,b",
        "sqlite:///dir,with,commas/x.db",
        "mysql+pymysql://root@127.0.0.1/test",
    ):
        assert normalize_multihost(url) == url


def test_multihost_conversions_for_both_drivers() -> None:
    assert convert_to_async_uri(COMMA) == QUERY.replace("postgresql://", "postgresql+asyncpg://")
    assert convert_to_sync_uri(COMMA) == QUERY.replace("postgresql://", "postgresql+psycopg://")
    sync = "postgresql+psycopg://u@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write"
    assert convert_to_async_uri(sync) == sync.replace("+psycopg", "+asyncpg")
    assert convert_to_sync_uri(sync.replace("+psycopg", "+asyncpg")) == sync


@pytest.mark.parametrize("url", [COMMA, QUERY])
def test_multihost_validation_and_connect_arguments(url: str) -> None:
    """Both forms parse, and both dialects get every host, port and target_session_attrs."""
    from repom.config import RepomConfig
    from repom.engine import _resolve
    from repom.urls import validate_url

    assert validate_url(url).query["host"] == ("h1:5432", "h2:5433")
    _, sync = _resolve(RepomConfig(), url, False)
    _, args = sync.get_dialect()().create_connect_args(sync)
    assert (args["host"], args["port"]) == ("h1,h2", "5432,5433")  # libpq conninfo lists
    assert args["target_session_attrs"] == "read-write" and args["password"] == "s3cr,et"
    _, asy = _resolve(RepomConfig(), convert_to_async_uri(url), True)
    _, args = asy.get_dialect()().create_connect_args(asy)
    assert (args["host"], args["port"]) == (["h1", "h2"], [5432, 5433])
    assert args["target_session_attrs"] == "read-write" and args["password"] == "s3cr,et"


def test_asyncpg_gets_a_port_for_every_host() -> None:
    """SQLAlchemy's asyncpg dialect needs a port per host; libpq defaults to 5432."""
    from repom.config import RepomConfig
    from repom.engine import _resolve

    _, parsed = _resolve(RepomConfig(), "postgresql+asyncpg://u@h1,h2:5433/db", True)
    _, args = parsed.get_dialect()().create_connect_args(parsed)
    assert (args["host"], args["port"]) == (["h1", "h2"], [5432, 5433])


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://u@h1,,h2/db",
        "postgresql://u@h1,h2/db?host=h3",
    ],
)
def test_malformed_multihost_urls_are_configuration_errors(bad: str) -> None:
    from repom.exceptions import ConfigurationError
    from repom.urls import validate_url

    with pytest.raises(ConfigurationError):
        validate_url(bad)
    with pytest.raises(ValueError):
        convert_to_async_uri(bad)


@pytest.mark.parametrize("url", [COMMA, QUERY])
def test_multihost_masking_hides_the_password(url: str) -> None:
    from repom.urls import url_secrets, validate_url

    masked = mask_url(url)
    assert "s3cr" not in masked and "app:***@" in masked
    assert "s3cr,et" in url_secrets(url)
    assert "s3cr" not in mask_url(validate_url(url))
    assert "s3cr" not in repr(validate_url(url))


# ------------------------------------------------------------------ postgres:// (issue 18)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql://u:p@h:5432/d"),
        ("POSTGRES://u@h/d", "postgresql://u@h/d"),
        ("postgres+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgres+psycopg://u@h/d?sslmode=require", "postgresql+psycopg://u@h/d?sslmode=require"),
        # not the postgres alias: unchanged
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresx://u@h/d", "postgresx://u@h/d"),
        ("sqlite:///postgres://x.db", "sqlite:///postgres://x.db"),
        ("mysql://postgres@h/postgres", "mysql://postgres@h/postgres"),
    ],
)
def test_normalize_scheme(url: str, expected: str) -> None:
    from repom.urls import normalize_scheme

    assert normalize_scheme(url) == expected


def test_heroku_style_postgres_urls_are_read_as_postgresql() -> None:
    """SQLAlchemy 2 reads ``postgres://`` as an unknown dialect; repom reads it as PostgreSQL."""
    from repom.urls import backend_name, is_async_url, validate_url

    heroku = "postgres://app:s3cr3t@db.example:5432/shop"
    assert validate_url(heroku).drivername == "postgresql"
    assert validate_url("postgres+asyncpg://u@h/d").drivername == "postgresql+asyncpg"
    assert backend_name(heroku) == "postgresql"
    assert convert_to_async_uri(heroku) == "postgresql+asyncpg://app:s3cr3t@db.example:5432/shop"
    assert convert_to_sync_uri(heroku) == "postgresql+psycopg://app:s3cr3t@db.example:5432/shop"
    assert convert_to_sync_uri("postgres+asyncpg://u@h/d") == "postgresql+psycopg://u@h/d"
    assert is_async_url("postgres+asyncpg://u@h/d") and not is_async_url(heroku)
    assert mask_url(heroku) == "postgres://app:***@db.example:5432/shop"
    # the comma form of several hosts works with the alias too
    assert convert_to_async_uri("postgres://u@h1:1,h2:2/d") == (
        "postgresql+asyncpg://u@/d?host=h1:1&host=h2:2"
    )
