"""repom through a real PgBouncer in transaction mode (default configuration).

The servers are the session's own (see conftest.py).  ``pooler="pgbouncer"`` must make both
drivers work under concurrent load with every promised setting holding in every transaction, and
without the setting a pooler's refusal must be a ConfigurationError naming it.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from repom.config import RepomConfig
from repom.database import AsyncDatabase, Database
from repom.exceptions import ConfigurationError
from repom.transactions import transaction
from tests.cli._support import cli_env, run, write_migration
from tests.topology.conftest import Topology

TASKS = 50
PER_TASK = 100

CHECK = text(
    "SELECT current_setting('TimeZone'), current_setting('statement_timeout'), "
    "current_setting('application_name'), current_setting('transaction_isolation'), "
    "current_setting('transaction_read_only'), CAST(:n AS integer) + 1"
)


def pooled_config(**overrides: Any) -> RepomConfig:
    options: dict[str, Any] = {
        "pooler": "pgbouncer",
        "statement_timeout": 1.234,
        "application_name": "repom-bouncer-test",
        "pool_size": TASKS,
        "max_overflow": 0,
    }
    options.update(overrides)
    return RepomConfig(**options)


def expected(kind: str) -> tuple[str, str, str, str]:
    """(statement_timeout, application_name, isolation, read_only) a transaction must see."""
    timeout = "250ms" if kind == "timeout" else "1234ms"
    isolation = "serializable" if kind == "serializable" else "read committed"
    return timeout, "repom-bouncer-test", isolation, "on" if kind == "read_only" else "off"


KINDS = ("plain", "timeout", "serializable", "read_only")


def options_for(kind: str) -> dict[str, Any]:
    return {
        "plain": {},
        "timeout": {"timeout": 0.25},
        "serializable": {"isolation": "SERIALIZABLE"},
        "read_only": {"read_only": True},
    }[kind]


def verify(row: Any, kind: str, n: int) -> None:
    timezone, timeout, app, isolation, read_only, echoed = row
    assert (timezone, echoed) == ("UTC", n + 1), row
    assert (timeout, app, isolation, read_only) == expected(kind), (kind, row)


def test_load_through_pgbouncer_sync(topology: Topology) -> None:
    db = Database(topology.bouncer.url(driver="psycopg"), config=pooled_config())
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def worker(index: int) -> None:
        for n in range(PER_TASK):
            kind = KINDS[(index + n) % len(KINDS)]
            try:
                with transaction(database=db, **options_for(kind)) as session:
                    verify(session.execute(CHECK, {"n": n}).one(), kind, n)
                with lock:
                    done[0] += 1
            except BaseException as exc:  # collected and reported below
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(TASKS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.dispose()
    assert errors == [] and done[0] == TASKS * PER_TASK, errors[:3]


async def test_load_through_pgbouncer_async(topology: Topology) -> None:
    db = AsyncDatabase(topology.bouncer.url(driver="asyncpg"), config=pooled_config())
    errors: list[BaseException] = []
    done = 0

    async def worker(index: int) -> None:
        nonlocal done
        for n in range(PER_TASK):
            kind = KINDS[(index + n) % len(KINDS)]
            try:
                async with transaction(database=db, **options_for(kind)) as session:
                    verify((await session.execute(CHECK, {"n": n})).one(), kind, n)
                done += 1
            except BaseException as exc:
                errors.append(exc)

    await asyncio.gather(*(worker(i) for i in range(TASKS)))
    await db.dispose()
    assert errors == [] and done == TASKS * PER_TASK, errors[:3]


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_without_the_setting_a_pooler_refusal_names_it(
    topology: Topology, driver: str
) -> None:
    config = RepomConfig(statement_timeout=1.0)
    if driver == "asyncpg":
        adb = AsyncDatabase(topology.bouncer.url(driver=driver), config=config)
        with pytest.raises(ConfigurationError, match="REPOM_POOLER"):
            await adb.ping()
        await adb.dispose()
    else:
        db = Database(topology.bouncer.url(driver=driver), config=config)
        with pytest.raises(ConfigurationError, match="REPOM_POOLER"):
            db.ping()
        db.dispose()


def advisory_locks(topology: Topology) -> int:
    engine = create_engine(topology.server.url(), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_concurrent_migrations_through_pgbouncer_leave_no_lock(
    topology: Topology, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = cli_env(topology.bouncer.url(driver="psycopg"), REPOM_POOLER="pgbouncer")
    run(["db", "init", "migrations"], project, env)
    write_migration(
        project,
        "0001",
        None,
        "op.create_table('bouncer_t', sa.Column('id', sa.Integer, primary_key=True))\n"
        "op.execute('SELECT pg_sleep(0.5)')",
        "op.drop_table('bouncer_t')",
    )
    stop = threading.Event()
    load_errors: list[BaseException] = []
    db = Database(topology.bouncer.url(driver="psycopg"), config=pooled_config(pool_size=5))

    def load() -> None:  # other clients keep PgBouncer's server connections busy meanwhile
        while not stop.is_set():
            try:
                with transaction(database=db) as session:
                    session.execute(text("SELECT 1"))
            except BaseException as exc:
                load_errors.append(exc)

    loaders = [threading.Thread(target=load) for _ in range(5)]
    for thread in loaders:
        thread.start()
    try:
        upgrades = [
            subprocess.Popen(
                [*_repom(), "db", "upgrade"],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outcomes = [proc.communicate(timeout=120) for proc in upgrades]
        assert [proc.returncode for proc in upgrades] == [0, 0], outcomes
    finally:
        stop.set()
        for thread in loaders:
            thread.join()
        db.dispose()
    assert load_errors == []
    assert advisory_locks(topology) == 0
    # and the next upgrade is not blocked by a lock left on a pooled server connection
    run(["db", "upgrade"], project, env)


def _repom() -> list[str]:
    from tests.cli._support import REPOM

    return list(REPOM)
