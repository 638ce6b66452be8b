"""The listeners: slow statements, long checkouts, connection age, invalidations and disconnects,
commit/rollback counters; installed by option, reconfigurable, removable."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
from packaging.version import Version
from sqlalchemy import event, text

from repom.exceptions import ConfigurationError, ConnectionLost, StatementTimeout
from repom.monitoring import PoolMonitor, QueryCounter, route_context
from tests.monitoring.conftest import Flavour
from tests.support import maybe_await

Records = Callable[[str], list[logging.LogRecord]]


async def test_slow_query_and_long_checkout_log_one_record_each(
    flavour: Flavour, pg_url: str, records: Records
) -> None:
    engine = flavour.engine(pg_url)
    monitor = PoolMonitor(engine).install(slow_query_threshold=0.05, long_checkout_threshold=0.05)
    name = monitor.name
    with route_context("GET /reports/{report_id}"):
        conn = await flavour.connect(engine)
        await flavour.execute(conn, text("SELECT pg_sleep(:secs)"), {"secs": 0.1234})
        await flavour.close(conn)

    slow = [r for r in records("repom.monitoring.sql") if "pg_sleep" in r.statement]  # type: ignore[attr-defined]
    assert len(slow) == 1
    record: Any = slow[0]
    assert record.levelno == logging.WARNING
    assert record.pool == name and record.route == "GET /reports/{report_id}"
    assert record.duration >= 0.1 and record.threshold == 0.05
    assert record.error is None
    # the SQL is shown, the values are not
    assert "pg_sleep(" in record.getMessage() and "0.1234" not in record.getMessage()
    assert record.parameters in ({"secs": "***"}, ("***",))  # psycopg: named, asyncpg: positional

    held = [r for r in records("repom.monitoring.pool") if "held for" in r.getMessage()]
    assert len(held) == 1
    record = held[0]
    assert record.levelno == logging.WARNING
    assert record.pool == name and record.route == "GET /reports/{report_id}"
    assert record.duration >= 0.1 and record.threshold == 0.05
    # no stack captured at checkout by default: the stack is where the connection came back
    assert record.stack_at == "checkin" and __file__ in record.stack
    assert "GET /reports/{report_id}" in record.getMessage()

    status = monitor.status()
    assert status["slow_statements"] == 1 and status["long_checkouts"] == 1


async def test_parameters_shown_on_request_and_failed_statements_logged(
    flavour: Flavour, pg_url: str, records: Records
) -> None:
    engine = flavour.engine(pg_url)
    PoolMonitor(engine).install(slow_query_threshold=0.05, log_parameters=True)
    conn = await flavour.connect(engine)
    await flavour.execute(conn, text("SELECT pg_sleep(:secs)"), {"secs": 0.06})
    await flavour.execute(conn, text("SET statement_timeout = 60"))
    with pytest.raises(StatementTimeout):
        await flavour.execute(conn, text("SELECT pg_sleep(1), 'failing'"))
    await flavour.close(conn)

    shown, failed = records("repom.monitoring.sql")
    assert shown.parameters in ({"secs": 0.06}, (0.06,))  # type: ignore[attr-defined]
    assert "failed" in failed.getMessage() and "'failing'" in failed.statement  # type: ignore[attr-defined]
    assert "canceling statement due to statement timeout" in failed.error  # type: ignore[attr-defined]


async def test_long_checkouts_are_listed_while_held(flavour: Flavour, pg_url: str) -> None:
    engine = flavour.engine(pg_url)
    monitor = PoolMonitor(engine).install(long_checkout_threshold=0.05)
    conn = await flavour.connect(engine)
    await asyncio.sleep(0.08)
    [held] = monitor.long_checkouts()
    assert held["duration"] >= 0.08 and held["route"] is None
    # where the holder is now: this coroutine (async: its task; sync: this thread's stack)
    assert __file__ in held["stack"]
    assert held["holder"].startswith("test_long_checkouts_are_listed_while_held")
    health = monitor.check_health()
    assert not health.healthy
    assert health.warnings[0].startswith("connection held for ")
    assert "test_long_checkouts_are_listed_while_held" in health.warnings[0]
    await flavour.close(conn)
    assert monitor.long_checkouts() == [] and monitor.check_health().healthy


async def test_capture_stack_records_where_the_connection_was_checked_out(
    flavour: Flavour, sqlite_url: str, records: Records
) -> None:
    engine = flavour.engine(sqlite_url)
    PoolMonitor(engine).install(long_checkout_threshold=0.01, capture_stack=True)

    async def check_out_here() -> Any:
        return await flavour.connect(engine)

    conn = await check_out_here()
    await asyncio.sleep(0.02)
    await flavour.close(conn)
    [record] = records("repom.monitoring.pool")
    assert record.stack_at == "checkout"  # type: ignore[attr-defined]
    assert "in check_out_here" in record.stack  # type: ignore[attr-defined]


async def test_connection_age_invalidation_disconnect_and_recycle(
    flavour: Flavour, pg_url: str, records: Records
) -> None:
    engine = flavour.engine(pg_url, pool_size=1, max_overflow=0, pool_pre_ping=False)
    monitor = PoolMonitor(engine).install(max_connection_age=0.05)
    conn = await flavour.connect(engine)
    pid = (await flavour.execute(conn, text("SELECT pg_backend_pid()"))).scalar()
    await flavour.close(conn)
    await asyncio.sleep(0.08)

    # an old connection is reported once, not at every checkout
    for _ in range(2):
        conn = await flavour.connect(engine)
        await flavour.close(conn)
    [old] = [r for r in records("repom.monitoring.pool") if "long-lived" in r.getMessage()]
    assert old.age >= 0.05 and monitor.status()["old_connections"] == 1  # type: ignore[attr-defined]

    # the server drops the connection: repom's typed error, counted as a disconnect
    admin = flavour.engine(pg_url)
    killer = await flavour.connect(admin)
    await flavour.execute(killer, text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    await flavour.close(killer)
    conn = await flavour.connect(engine)
    with pytest.raises(ConnectionLost):
        await flavour.execute(conn, text("SELECT 1"))
    await flavour.close(conn)
    status = monitor.status()
    assert (status["invalidations"], status["disconnects"]) == (1, 1)
    [invalidated] = [r for r in records("repom.monitoring.pool") if "invalidated" in r.getMessage()]
    assert invalidated.levelno == logging.WARNING and invalidated.reason  # type: ignore[attr-defined]

    # the pool opens a new connection: counted as a connect, not as a recycle
    conn = await flavour.connect(engine)
    await flavour.execute(conn, text("SELECT 1"))
    await flavour.close(conn)
    assert (monitor.status()["connects"], monitor.status()["recycles"]) == (2, 0)


async def test_recycled_connections_are_counted(flavour: Flavour, sqlite_url: str) -> None:
    engine = flavour.engine(sqlite_url, pool_recycle=0)  # older than 0 s: replaced every time
    monitor = PoolMonitor(engine).install()
    for _ in range(3):
        conn = await flavour.connect(engine)
        await flavour.close(conn)
        await asyncio.sleep(0.002)  # let time.time() move on: SQLAlchemy compares whole timestamps
    status = monitor.status()
    # every checkout replaced the connection (even the brand-new first one is "older than 0 s")
    assert status["recycles"] >= 2
    assert status["connects"] == status["recycles"] + 1 and status["closes"] == status["recycles"]
    assert status["invalidations"] == 0


async def test_commit_and_rollback_counters(flavour: Flavour, sqlite_url: str) -> None:
    engine = flavour.engine(sqlite_url)
    monitor = PoolMonitor(engine).install()
    for outcome in ("commit", "commit", "rollback"):
        conn = await flavour.connect(engine)
        await flavour.execute(conn, text("SELECT 1"))
        await getattr(conn, outcome)() if flavour.is_async else getattr(conn, outcome)()
        await flavour.close(conn)
    conn = await flavour.connect(engine)  # returned without COMMIT: the pool's reset is no
    await flavour.execute(conn, text("SELECT 1"))  # transaction outcome, yet the Connection's
    await flavour.close(conn)  # own rollback on close is
    status = monitor.status()
    assert (status["commits"], status["rollbacks"]) == (2, 2)
    assert status["statements"] == 4 + 4  # 4 SELECTs; SQLite's BEGIN is a statement too


async def test_install_twice_reconfigures_and_uninstall_removes_everything(
    flavour: Flavour, sqlite_url: str, records: Records
) -> None:
    engine = flavour.engine(sqlite_url)
    sync_engine = engine.sync_engine if flavour.is_async else engine

    @event.listens_for(sync_engine, "connect")
    def _sleep_function(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.create_function("sleep_ms", 1, lambda ms: time.sleep(ms / 1000) or ms)

    wrapped = ("do_execute", "do_commit", "do_rollback")
    # repom's engine sets its own do_commit wrapper (marking COMMIT errors) before any monitor
    before = {name: vars(sync_engine.dialect).get(name) for name in wrapped}
    assert before["do_commit"] is not None
    monitor = PoolMonitor(engine).install(slow_query_threshold=10.0)
    PoolMonitor(engine).install(slow_query_threshold=0.02)  # same engine: reconfigured
    assert monitor.options is not None and monitor.options.slow_query_threshold == 0.02

    async def run(sql: str) -> None:
        conn = await flavour.connect(engine)
        await flavour.execute(conn, text(sql))
        await flavour.close(conn)

    await run("SELECT sleep_ms(30)")
    assert len(records("repom.monitoring.sql")) == 1  # one listener, not two

    monitor.uninstall()
    # the wrapped methods are what they were before the monitor was installed
    assert "connect" not in vars(sync_engine.pool)
    assert {name: vars(sync_engine.dialect).get(name) for name in wrapped} == before
    await run("SELECT sleep_ms(30)")
    assert len(records("repom.monitoring.sql")) == 1
    assert not monitor.installed and monitor.status()["monitored"] is False


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("slow_query_threshold", -1),
        ("slow_query_threshold", "fast"),
        ("long_checkout_threshold", 0),
        ("max_connection_age", True),
        ("capture_stack", "yes"),
    ],
)
def test_invalid_options_are_refused(sqlite_url: str, option: str, value: Any) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(sqlite_url)
    with pytest.raises(ConfigurationError, match=option) as raised:
        PoolMonitor(engine).install(**{option: value})
    assert raised.value.variable == option
    assert not PoolMonitor(engine).installed  # nothing was installed
    engine.dispose()


def test_setup_listeners_seed_002(sqlite_url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(sqlite_url)
    monitor = PoolMonitor.setup_listeners(engine)
    assert monitor.installed and monitor.options is not None
    assert monitor.options.max_connection_age == 300.0
    with QueryCounter(engine) as queries, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert queries.count == 1 and monitor.status()["statements"] == 1
    monitor.uninstall()
    engine.dispose()


async def test_figures_are_exact_under_concurrency(flavour: Flavour, pg_url: str) -> None:
    """8 workers share a 3-connection pool: every checkout, statement and commit is counted once,
    and the checked-out records all close (lock-free recording loses nothing)."""
    engine = flavour.engine(pg_url, pool_size=2, max_overflow=1, pool_timeout=30)
    monitor = PoolMonitor(engine).install(long_checkout_threshold=60)
    workers, units = 8, 25
    warm = await flavour.connect(engine)  # the dialect's first-connect queries happen here
    await flavour.close(warm)
    before = monitor.status()

    async def work() -> None:
        for _ in range(units):
            conn = await flavour.connect(engine)
            await flavour.execute(conn, text("SELECT 1"))
            await conn.commit() if flavour.is_async else conn.commit()
            await flavour.close(conn)

    if flavour.is_async:
        await asyncio.gather(*(work() for _ in range(workers)))
    else:
        threads = [threading.Thread(target=asyncio.run, args=(work(),)) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    status = monitor.status()
    total = workers * units
    assert [status[k] - before[k] for k in ("checkouts", "statements", "commits")] == [total] * 3
    assert (status["checked_out"], status["waiting"], status["timeouts"]) == (0, 0, 0)
    assert monitor.tracker is not None and monitor.tracker.active == {}
    assert status["connects"] - status["closes"] <= 3  # never more open than the pool holds
    # before 2.0.55, SQLAlchemy returns a closed async connection to the pool from another task,
    # so a worker may find the pool empty and open (then close) an overflow connection again
    if not flavour.is_async or Version(sqlalchemy.__version__) >= Version("2.0.55"):
        assert status["connects"] <= 3


async def test_dispose_keeps_the_monitor_working(flavour: Flavour, sqlite_url: str) -> None:
    engine = flavour.engine(sqlite_url)
    monitor = PoolMonitor(engine).install()
    for _ in range(2):
        conn = await flavour.connect(engine)
        await flavour.execute(conn, text("SELECT 1"))
        await flavour.close(conn)
        await maybe_await(engine.dispose())
    status = monitor.status()
    assert status["statements"] >= 2 and status["connects"] == 2
    # a new pool is wrapped when it opens its first connection: later checkouts are timed
    for _ in range(2):
        conn = await flavour.connect(engine)
        await flavour.close(conn)
    assert monitor.status()["checkouts"] == status["checkouts"] + 1
