"""Alembic environment (sync engine), written by ``repom db init``.

repom supplies the pieces: the database URL from its configuration (DATABASE_URL /
REPOM_DATABASE_URL, .env, CONFIG_HOOK; ``--url`` or ``-x url=...`` override it), the MetaData of
the models module named in alembic.ini (``[repom] models``), and the run settings (one
transaction and an advisory lock on PostgreSQL, batch mode on SQLite, rendering of repom's types).
Edit freely: extra ``context.configure()`` options go to ``run_migrations()`` as keywords, e.g.
``repom_env.run_migrations(connection, target_metadata, compare_server_default=True)``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from repom.migrations import env as repom_env

config = context.config
repom_env.configure_logging(config)

# The MetaData autogenerate compares with; every module of the models package is imported first.
target_metadata = repom_env.load_target_metadata(config)


def run_migrations_offline() -> None:
    """``--sql`` mode: print the SQL instead of running it."""
    repom_env.run_migrations_offline(target_metadata)


def do_run_migrations(connection: Connection) -> None:
    repom_env.run_migrations(connection, target_metadata)


def run_migrations_online() -> None:
    engine = repom_env.create_engine(config)
    try:
        with engine.connect() as connection:
            do_run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
elif (given := repom_env.given_connection(config)) is not None:
    do_run_migrations(given)
else:
    run_migrations_online()
