"""Database URL helpers: sync/async driver conversion, validation and masking for logs."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from repom.exceptions import ConfigurationError

__all__ = [
    "backend_name",
    "convert_to_async_uri",
    "convert_to_sync_uri",
    "is_async_url",
    "is_memory_sqlite",
    "mask_url",
    "validate_url",
]

# scheme (``backend+driver``) -> async scheme
_TO_ASYNC = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+pg8000": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mysql+mysqldb": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
    "mariadb+pymysql": "mariadb+aiomysql",
}
_ASYNC = {
    "sqlite+aiosqlite",
    "postgresql+asyncpg",
    "postgresql+psycopg_async",
    "mysql+aiomysql",
    "mysql+asyncmy",
    "mariadb+aiomysql",
    "mariadb+asyncmy",
}
# async scheme -> the sync scheme repom uses
_TO_SYNC = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
    "mysql": "mysql+pymysql",
    "mariadb+aiomysql": "mariadb+pymysql",
    "mariadb+asyncmy": "mariadb+pymysql",
}


def _split(url: str) -> tuple[str, str]:
    if not isinstance(url, str):
        raise ValueError(f"database URL must be a string, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"not a database URL (expected 'scheme://...'): {mask_url(url)!r}")
    return scheme.lower(), rest


def convert_to_async_uri(url: str) -> str:
    """Return *url* with the async driver of its database (seed 004).

    ``sqlite`` -> ``sqlite+aiosqlite``; ``postgresql``/``postgresql+psycopg*`` ->
    ``postgresql+asyncpg``; ``mysql``/``mysql+pymysql`` -> ``mysql+aiomysql``.  URLs that already
    name an async driver pass through unchanged; anything else raises ``ValueError``.
    Only the scheme changes: user, password, host, database and query stay as written.
    """
    scheme, rest = _split(str(url))
    if scheme in _ASYNC:
        return f"{scheme}://{rest}"
    target = _TO_ASYNC.get(scheme)
    if target is None:
        raise ValueError(
            f"no async driver known for URL scheme {scheme!r} "
            f"(supported: {', '.join(sorted(_TO_ASYNC))})"
        )
    return f"{target}://{rest}"


def convert_to_sync_uri(url: str) -> str:
    """The inverse of :func:`convert_to_async_uri` (used for Alembic and sync engines).

    Plain ``postgresql://`` becomes ``postgresql+psycopg://`` (psycopg 3, repom's sync driver).
    """
    scheme, rest = _split(str(url))
    target = _TO_SYNC.get(scheme, scheme)
    return f"{target}://{rest}"


def is_async_url(url: str) -> bool:
    scheme, _ = _split(str(url))
    return scheme in _ASYNC


def validate_url(url: str) -> URL:
    """Parse *url*; raise :class:`ConfigurationError` (a ``ValueError``) naming the problem."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"malformed database URL {mask_url(url)!r}", variable="DATABASE_URL"
        ) from exc
    try:
        parsed.get_dialect()
    except Exception as exc:
        raise ConfigurationError(
            f"unknown database dialect/driver {parsed.drivername!r} in URL {mask_url(url)!r}",
            variable="DATABASE_URL",
        ) from exc
    return parsed


def backend_name(url: str | URL) -> str:
    """``sqlite``, ``postgresql``, ``mysql`` (MariaDB included), ..."""
    backend = make_url(url).get_backend_name()
    return "mysql" if backend == "mariadb" else backend


def is_memory_sqlite(url: str | URL) -> bool:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return database in ("", ":memory:") or (
        database.startswith("file:") and "mode=memory" in str(parsed.query.get("uri", database))
    )


def mask_url(url: str | URL) -> str:
    """*url* with its password replaced by ``***`` (safe for logs and error messages)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception:
        text = str(url)
        scheme, sep, rest = text.partition("://")
        if sep and "@" in rest:
            creds, _, host = rest.rpartition("@")
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}"
        return text
    return parsed.render_as_string(hide_password=True)
