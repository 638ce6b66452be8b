"""What a project's ``env.py`` needs, in one place (the templates call these functions).

Decisions made here, once, for the sync and the async env.py alike:

* **URL**: ``--url`` / ``-x url=...``, else repom's configuration (``DATABASE_URL`` /
  ``REPOM_DATABASE_URL``, ``.env``, ``CONFIG_HOOK``), converted to the sync or async driver of the
  env.py in use.  ``alembic.ini`` never holds it (a ``sqlalchemy.url`` there is an error).
* **Engine**: :func:`repom.engine.build_engine` (repom's connect-time settings and error
  translation) with ``NullPool`` and without the application's ``statement_timeout``.
* **One transaction**: every migration of a run happens in one transaction where the database has
  transactional DDL (PostgreSQL; SQLite too, thanks to repom's BEGIN handling), so a failed run
  leaves the schema and ``alembic_version`` as they were.
* **One runner at a time**: a PostgreSQL advisory lock (SQLite: ``BEGIN IMMEDIATE``) serialises
  concurrent ``upgrade`` runs, e.g. several replicas starting at once; the second run then finds
  the database already at head.
* **SQLite**: ``render_as_batch=True`` (ALTER through table copies); foreign-key enforcement is
  switched off for the run, as SQLite's documentation prescribes for table rebuilds (dropping the
  old table must not cascade), and ``PRAGMA foreign_key_check`` must pass before the commit.
* **Rendering**: ``compare_type=True``; ``repom.types.render_item`` renders repom's column types;
  any other custom type gets its module imported in the migration file.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Coroutine
from logging.config import fileConfig
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, MetaData, pool, text
from sqlalchemy.types import TypeEngine

from repom.exceptions import ConfigurationError
from repom.migrations.errors import MigrationError
from repom.migrations.project import settings_from_alembic

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from alembic.config import Config
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from repom.config import RepomConfig
    from repom.migrations.models import LoadedModels

__all__ = [
    "LOCK_KEY",
    "configure_logging",
    "create_async_engine",
    "create_engine",
    "database_url",
    "given_connection",
    "load_target_metadata",
    "migration_options",
    "render_item",
    "run_async",
    "run_migrations",
    "run_migrations_offline",
]

TargetMetadata = MetaData | tuple[MetaData, ...] | None

LOCK_KEY = zlib.crc32(b"repom.migrations") - 2**31
"""The PostgreSQL advisory lock key held while migrations run (a 32-bit value, as bigint)."""

LOADED_MODELS_ATTRIBUTE = "repom.loaded_models"
ON_VERSION_APPLY_ATTRIBUTE = "repom.on_version_apply"


def configure_logging(config: Config) -> None:
    """Apply the ``[loggers]`` sections of ``alembic.ini`` (skipped when repom's CLI runs)."""
    if not config.attributes.get("configure_logger", True):
        return
    name = config.config_file_name
    if name and config.file_config.has_section("loggers"):
        fileConfig(name, disable_existing_loggers=False)


def load_target_metadata(config: Config) -> TargetMetadata:
    """Import the configured models (every submodule), configure mappers, return the MetaData.

    ``None`` when no models module is configured (only autogenerate and ``check`` need it).
    """
    from repom.migrations.models import load_models

    cached: LoadedModels | None = config.attributes.get(LOADED_MODELS_ATTRIBUTE)
    if cached is None:
        cached = load_models(settings_from_alembic(config), required=False)
        if cached is None:
            return None
        config.attributes[LOADED_MODELS_ATTRIBUTE] = cached
    return cached.target_metadata


def _repom_config() -> RepomConfig:
    from repom.config import get_config

    config = get_config()
    if config.statement_timeout is not None:
        # DDL on a big table may legitimately run longer than the application's statements.
        config = config.model_copy(update={"statement_timeout": None})
    return config


def database_url(config: Config, *, use_async: bool = False) -> str:
    """The URL migrations run against, with the sync or the async driver."""
    from repom.urls import convert_to_async_uri, convert_to_sync_uri, mask_url, validate_url

    if config.get_main_option("sqlalchemy.url"):
        raise ConfigurationError(
            f"{config.config_file_name or 'the Alembic configuration'} sets sqlalchemy.url, but "
            "repom reads the URL from its configuration (DATABASE_URL / REPOM_DATABASE_URL, "
            ".env, CONFIG_HOOK) or --url: remove sqlalchemy.url",
            variable="sqlalchemy.url",
        )
    settings = settings_from_alembic(config)
    repom_config = _repom_config()
    url = settings.url or (repom_config.async_url if use_async else repom_config.url)
    validate_url(url)
    try:
        converted = convert_to_async_uri(url) if use_async else convert_to_sync_uri(url)
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot run the async env.py on {mask_url(url)}: {exc}", variable="DATABASE_URL"
        ) from exc
    validate_url(converted)
    return converted


def create_engine(config: Config) -> Engine:
    """A sync engine for one migration run (``NullPool``: the connection closes afterwards)."""
    from repom.engine import build_engine

    return build_engine(database_url(config), config=_repom_config(), poolclass=pool.NullPool)


def create_async_engine(config: Config) -> AsyncEngine:
    """The async engine for the async env.py (``NullPool``)."""
    from repom.engine import build_async_engine

    return build_async_engine(
        database_url(config, use_async=True), config=_repom_config(), poolclass=pool.NullPool
    )


def given_connection(config: Config) -> Connection | None:
    """A connection passed in ``config.attributes["connection"]`` (programmatic use, tests)."""
    connection = config.attributes.get("connection")
    if connection is None:
        return None
    if not isinstance(connection, Connection):
        raise ConfigurationError(
            'config.attributes["connection"] must be a sync sqlalchemy Connection; for an '
            "AsyncConnection call the command inside `await conn.run_sync(...)`"
        )
    return connection


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())``, with a clear error when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return
    raise MigrationError(
        "the async env.py cannot start its own event loop inside a running one: run the "
        "migration command in a worker thread, or pass a connection in "
        "config.attributes['connection'] from `await async_conn.run_sync(...)`"
    )


# --------------------------------------------------------------------------- rendering


def _types_render_item() -> Callable[[str, Any, AutogenContext], str | Literal[False]] | None:
    try:
        import repom.types as repom_types
    except ImportError:
        return None
    hook = getattr(repom_types, "render_item", None)
    return hook if callable(hook) else None


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Alembic ``render_item`` hook: repom's types render as ``repom.types.X(...)`` (with the
    import), other custom types get ``import their.module`` added to the migration file."""
    hook = _types_render_item()
    if hook is not None:
        rendered = hook(type_, obj, autogen_context)
        if rendered is not False:
            return rendered
    if type_ == "type" and isinstance(obj, TypeEngine):
        module = type(obj).__module__
        if module and not module.startswith(("sqlalchemy.", "builtins")) and module != "__main__":
            autogen_context.imports.add(f"import {module}")
    return False


def migration_options(dialect_name: str, config: Config) -> dict[str, Any]:
    """The ``context.configure()`` options repom uses for *dialect_name*."""
    options: dict[str, Any] = {
        "compare_type": True,
        "render_item": render_item,
        "render_as_batch": dialect_name == "sqlite",
    }
    if dialect_name == "sqlite":
        options["transactional_ddl"] = True
    callback = config.attributes.get(ON_VERSION_APPLY_ATTRIBUTE)
    if callback is not None:
        options["on_version_apply"] = callback
    return options


# --------------------------------------------------------------------------- running


def run_migrations_offline(target_metadata: TargetMetadata, **options: Any) -> None:
    """``--sql`` mode: render the SQL of the migrations instead of running them."""
    from alembic import context

    from repom.urls import backend_name

    config = context.config
    url = database_url(config)
    configured = migration_options(backend_name(url), config)
    configured.update(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    configured.update(options)
    context.configure(**configured)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(connection: Connection, target_metadata: TargetMetadata, **options: Any) -> None:
    """Run the migrations (or the autogenerate comparison) on *connection*.

    The one implementation behind the sync env.py and, through ``AsyncConnection.run_sync``, the
    async one.  *options* are passed on to ``context.configure()`` and win over repom's.
    """
    from alembic import context

    config = context.config
    dialect = connection.dialect.name
    configured = migration_options(dialect, config)
    configured.update(options)
    external = connection.in_transaction()
    release: Callable[[], None] | None = None
    restore_fks = False
    pooled: Any = None
    if dialect == "postgresql" and not external and _repom_config().pooler is not None:
        # behind a transaction-mode pooler a session-level lock would stay on whichever server
        # connection ran it: the whole run is one transaction holding a transaction-level lock
        pooled = connection.begin()
        external = True
    if dialect == "postgresql":
        release = _pg_lock(connection, external)
    elif dialect == "sqlite" and not external:
        release = _sqlite_begin_immediate(connection)
        restore_fks = _sqlite_foreign_keys(connection, enable=False)
    try:
        context.configure(connection=connection, target_metadata=target_metadata, **configured)
        with context.begin_transaction():
            context.run_migrations()
            if restore_fks:
                _sqlite_foreign_key_check(connection)
        if pooled is not None:
            pooled.commit()
    except BaseException:
        if pooled is not None and pooled.is_active:
            pooled.rollback()
        raise
    finally:
        if restore_fks:
            _sqlite_foreign_keys(connection, enable=True)
        if release is not None:
            release()


def _pg_lock(connection: Connection, external: bool) -> Callable[[], None] | None:
    if external:
        # the caller's transaction: hold the lock until it ends
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        return None
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
    connection.commit()  # a session-level lock outlives this transaction

    def release() -> None:
        try:
            if connection.in_transaction():
                connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            connection.commit()
        except Exception:  # pragma: no cover - a broken connection releases it by closing
            pass

    return release


def _sqlite_begin_immediate(connection: Connection) -> Callable[[], None]:
    """Start the run's transaction with ``BEGIN IMMEDIATE`` (repom's engines honour the option):
    a second migration run waits for the first instead of failing halfway."""
    previous = connection.get_execution_options().get("sqlite_begin")
    connection.execution_options(sqlite_begin="immediate")

    def restore() -> None:
        connection.execution_options(sqlite_begin=previous)

    return restore


def _sqlite_foreign_keys(connection: Connection, *, enable: bool) -> bool:
    """Switch enforcement on/off outside a transaction (DB-API level: no autobegin).

    Switching off returns whether enforcement was on (so it must be restored).
    """
    cursor = connection.connection.cursor()
    try:
        if enable:
            cursor.execute("PRAGMA foreign_keys=ON")
            return True
        cursor.execute("PRAGMA foreign_keys")
        row = cursor.fetchone()
        if not row or not row[0]:
            return False
        cursor.execute("PRAGMA foreign_keys=OFF")
        return True
    finally:
        cursor.close()


def _sqlite_foreign_key_check(connection: Connection) -> None:
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if rows:
        first = rows[0]
        raise MigrationError(
            f"the migration leaves {len(rows)} row(s) violating foreign keys (first: table "
            f"{first[0]!r} rowid {first[1]} references {first[2]!r}); rolled back"
        )
