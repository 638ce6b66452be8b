"""Development helpers: create and drop the database itself, and describe the setup (``info``).

Supported backends: SQLite (a file) and PostgreSQL (``CREATE/DROP DATABASE`` through the
``postgres`` maintenance database, in autocommit mode).  Database names are quoted by the
dialect's identifier preparer, never pasted into SQL as given.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import pool, text
from sqlalchemy.engine import URL

from repom.exceptions import ConfigurationError
from repom.migrations.errors import MigrationError

if TYPE_CHECKING:
    from repom.config import RepomConfig
    from repom.migrations.project import ProjectSettings

__all__ = [
    "SetupInfo",
    "create_database",
    "database_info",
    "drop_database",
    "ensure_drop_allowed",
]

_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _config(config: RepomConfig | None) -> RepomConfig:
    if config is not None:
        return config
    from repom.config import get_config

    return get_config()


def _target(url: str | URL | None, config: RepomConfig) -> URL:
    from repom.urls import convert_to_sync_uri, validate_url

    raw = str(url) if url is not None else config.url
    if isinstance(url, URL):
        raw = url.render_as_string(hide_password=False)
    return validate_url(convert_to_sync_uri(raw))


def _sqlite_path(url: URL) -> Path:
    from repom.urls import is_memory_sqlite, mask_url

    if is_memory_sqlite(url) or not url.database:
        raise ConfigurationError(
            f"{mask_url(url)} is an in-memory SQLite database: there is nothing to create or drop"
        )
    return Path(url.database)


def _maintenance_engine(url: URL, config: RepomConfig) -> Any:
    from repom.engine import build_engine

    admin_url = url.set(database="postgres")
    return build_engine(
        admin_url, config=config, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT"
    )


def _unsupported(url: URL) -> MigrationError:
    return MigrationError(
        f"creating and dropping databases is supported for sqlite and postgresql, not "
        f"{url.get_backend_name()!r}"
    )


def create_database(url: str | URL | None = None, *, config: RepomConfig | None = None) -> bool:
    """Create the database of *url* (default: the configured one).  ``False`` if it existed."""
    config = _config(config)
    target = _target(url, config)
    backend = target.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(target)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(path).close()
        return True
    if backend != "postgresql":
        raise _unsupported(target)
    name = target.database
    if not name:
        raise ConfigurationError("the database URL names no database")
    engine = _maintenance_engine(target, config)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists:
                return False
            quoted = engine.dialect.identifier_preparer.quote_identifier(name)
            try:
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
            except Exception as exc:
                if _sqlstate(exc) == "42P04":  # created concurrently
                    return False
                raise
    finally:
        engine.dispose()
    return True


def ensure_drop_allowed(
    url: str | URL | None = None, *, force: bool = False, config: RepomConfig | None = None
) -> None:
    """Raise :class:`MigrationError` when dropping is refused (``environment=production``)."""
    from repom.urls import mask_url

    config = _config(config)
    if config.environment == "production" and not force:
        target = _target(url, config)
        raise MigrationError(
            f"refusing to drop {mask_url(target)} in environment=production (use --force / "
            "force=True if you really mean it)"
        )


def drop_database(
    url: str | URL | None = None, *, force: bool = False, config: RepomConfig | None = None
) -> bool:
    """Drop the database of *url*; ``False`` if it did not exist.

    Refused when the configuration says ``environment=production``, unless *force*.
    """
    config = _config(config)
    target = _target(url, config)
    ensure_drop_allowed(target, force=force, config=config)
    backend = target.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(target)
        if not path.exists():
            return False
        path.unlink()
        for suffix in _SQLITE_SIDE_FILES:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return True
    if backend != "postgresql":
        raise _unsupported(target)
    name = target.database
    if not name:
        raise ConfigurationError("the database URL names no database")
    engine = _maintenance_engine(target, config)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if not exists:
                return False
            quoted = engine.dialect.identifier_preparer.quote_identifier(name)
            try:
                conn.exec_driver_sql(f"DROP DATABASE {quoted}")
            except Exception as exc:
                if _sqlstate(exc) == "55006":
                    raise MigrationError(
                        f"database {name!r} is being used by other sessions; close them "
                        "(stop the application) and retry"
                    ) from exc
                raise
    finally:
        engine.dispose()
    return True


# --------------------------------------------------------------------------- info


@dataclass
class SetupInfo:
    """What ``repom info`` shows."""

    url: str
    backend: str
    driver: str
    async_url: str | None
    environment: str
    pool: dict[str, Any]
    server_version: str | None = None
    replicas: list[str] = field(default_factory=list)
    connections: dict[str, Any] | None = None
    connections_text: str | None = None
    connect_error: str | None = None
    #: a SQLite file that does not exist yet (``repom info`` never creates it)
    missing_file: str | None = None
    models: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    models_error: str | None = None
    migrations: str | None = None
    heads: list[str] = field(default_factory=list)
    current: list[str] | None = None
    migrations_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _capacity(pool_class: Any, arguments: dict[str, Any]) -> int | None:
    """Connections one process may open with these engine arguments (None: unbounded)."""
    name = getattr(pool_class, "__name__", "")
    if name == "StaticPool":
        return 1
    if "QueuePool" not in name:
        return None
    overflow = int(arguments.get("max_overflow", 10))
    return None if overflow < 0 else int(arguments.get("pool_size", 5)) + overflow


def database_info(settings: ProjectSettings, *, config: RepomConfig | None = None) -> SetupInfo:
    """Collect configuration, server, models and migration state; problems are recorded, not
    raised (except a malformed URL)."""
    from sqlalchemy import inspect

    from repom.engine import build_engine, engine_arguments, pool_class_name
    from repom.monitoring.budget import budget_for
    from repom.urls import convert_to_async_uri, mask_url

    config = _config(config)
    target = _target(settings.url, config)
    try:
        async_url: str | None = mask_url(
            convert_to_async_uri(target.render_as_string(hide_password=False))
            if settings.url
            else config.async_url
        )
    except ValueError:
        async_url = None
    arguments = engine_arguments(config, target, is_async=False)
    pool_class = arguments.pop("poolclass")
    pool_info: dict[str, Any] = {"class": pool_class_name(pool_class)}
    for key in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping"):
        if key in arguments:
            pool_info[key] = arguments[key]
    info = SetupInfo(
        url=mask_url(target),
        backend=target.get_backend_name(),
        driver=target.get_driver_name(),
        async_url=async_url,
        environment=config.environment,
        pool=pool_info,
        replicas=[mask_url(url) for url in config.replica_urls],
    )
    db_tables: set[str] | None = None
    info.missing_file = _absent_sqlite_file(target)
    if info.missing_file is not None:
        db_tables = set()  # connecting would create the file: it has no tables yet
    else:
        engine = build_engine(target, config=config, poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                version = conn.dialect.server_version_info
                info.server_version = ".".join(str(p) for p in version) if version else None
                db_tables = set(inspect(conn).get_table_names())
                if target.get_backend_name() == "postgresql":
                    budget = budget_for(_capacity(pool_class, arguments), connection=conn)
                    info.connections = budget.as_dict()
                    info.connections_text = budget.describe()
        except Exception as exc:
            info.connect_error = _one_line(exc)
        finally:
            engine.dispose()

    from repom.migrations.models import load_models

    try:
        loaded = load_models(settings, required=False)
    except Exception as exc:
        info.models_error = _one_line(exc)
        loaded = None
    if loaded is not None:
        info.models = list(loaded.modules)
        info.metadata = list(loaded.labels)
        for table in loaded.tables:
            info.tables.append(
                {
                    "table": table.fullname,
                    "model": loaded.classes.get(table.key),
                    "in_database": None if db_tables is None else table.name in db_tables,
                }
            )

    if settings.has_alembic_config:
        from repom.migrations.commands import Migrations

        migrations = Migrations(settings)
        try:
            info.migrations = str(Path(migrations.script.dir))
            info.heads = [rev.revision for rev in migrations.heads()]
            if info.missing_file is not None:
                info.current = []  # no database yet: nothing applied
            elif info.connect_error is None:
                info.current = list(migrations.current())
        except Exception as exc:
            info.migrations_error = _one_line(exc)
    return info


def _absent_sqlite_file(url: URL) -> str | None:
    """The path of *url*'s SQLite file when it does not exist (opening it would create it)."""
    from repom.urls import is_memory_sqlite

    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url) or not url.database:
        return None
    path = url.database
    if path.startswith("file:"):  # URI filename (?uri=true): the path ends at its own "?"
        path = path[len("file:") :].split("?", 1)[0]
    file = Path(path)
    # a missing directory: connecting creates nothing and reports the error (unreachable)
    return path if file.parent.is_dir() and not file.exists() else None


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state if isinstance(state, str) else None


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    message = str(orig) if orig is not None else str(exc)
    message = " ".join(message.split()) or type(exc).__name__
    return message.split(" (Background on this error at:")[0]
