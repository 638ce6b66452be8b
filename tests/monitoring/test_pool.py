"""Pool status for every pool class, the seeds' names, health checks, and a PostgreSQL pool driven
to saturation with status and Prometheus metrics read at each step."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool, text

from repom.database import AsyncDatabase, Database
from repom.exceptions import PoolExhausted
from repom.monitoring import (
    ConnectionPoolMonitor,
    PoolMonitor,
    RepomCollector,
    UnsupportedMonitorTarget,
)
from tests.monitoring.conftest import Flavour
from tests.support import maybe_await

SEED_KEYS = {"pool_size", "size", "checked_out", "overflow", "utilization", "total"}

# (pool class, flavour it exists for, status with one connection out, status with none out)
POOLS: list[tuple[type[pool.Pool], str, dict[str, Any], dict[str, Any]]] = [
    (
        pool.QueuePool,
        "sync",
        {"checked_out": 1, "checked_in": 0, "total": 1, "capacity": 3, "utilization": 33.33},
        {"checked_out": 0, "checked_in": 1, "total": 1},
    ),
    (
        pool.AsyncAdaptedQueuePool,
        "async",
        {"checked_out": 1, "checked_in": 0, "total": 1, "capacity": 3, "utilization": 33.33},
        {"checked_out": 0, "checked_in": 1, "total": 1},
    ),
    (
        pool.NullPool,
        "both",
        {"checked_out": 1, "checked_in": 0, "total": 1, "capacity": None, "utilization": 0.0},
        {"checked_out": 0, "checked_in": 0, "total": 0},
    ),
    (
        pool.StaticPool,
        "both",
        {"checked_out": 1, "checked_in": 0, "total": 1, "capacity": None, "utilization": 100.0},
        {"checked_out": 0, "checked_in": 1, "total": 1},
    ),
    (
        pool.SingletonThreadPool,
        "sync",
        {"checked_out": 1, "checked_in": 0, "total": 1, "capacity": None, "utilization": 20.0},
        {"checked_out": 0, "checked_in": 1, "total": 1},
    ),
]


CASES = [
    (flav, poolclass, busy, idle)
    for poolclass, where, busy, idle in POOLS
    for flav in ("sync", "async")
    if where in ("both", flav)
]


@pytest.mark.parametrize(
    ("flavour", "poolclass", "busy", "idle"),
    CASES,
    ids=[f"{c[0]}-{c[1].__name__}" for c in CASES],
    indirect=["flavour"],
)
async def test_status_is_right_for_every_pool_class(
    flavour: Flavour,
    sqlite_url: str,
    poolclass: type[pool.Pool],
    busy: dict[str, Any],
    idle: dict[str, Any],
) -> None:
    sizing = {"pool_size": 2, "max_overflow": 1} if issubclass(poolclass, pool.QueuePool) else {}
    engine = flavour.engine(sqlite_url, poolclass=poolclass, **sizing)
    monitor = PoolMonitor(engine)

    before = monitor.status()
    assert before.keys() >= SEED_KEYS
    assert before["pool_class"] == poolclass.__name__
    assert before["checked_out"] == 0 and before["utilization"] == 0.0

    conn = await flavour.connect(engine)
    await flavour.execute(conn, text("SELECT 1"))
    assert {k: monitor.status()[k] for k in busy} == busy
    await flavour.close(conn)
    assert {k: monitor.status()[k] for k in idle} == idle

    # seed 002 (static, engine argument) and seed 000 (instance) read the same figures
    assert PoolMonitor.get_pool_status(engine)["checked_out"] == 0
    assert ConnectionPoolMonitor(engine).get_pool_status()["pool_class"] == poolclass.__name__


async def test_database_pool_status(flavour: Flavour, sqlite_url: str) -> None:
    db: Database | AsyncDatabase = (
        AsyncDatabase(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
        if flavour.is_async
        else Database(sqlite_url)
    )
    try:
        status = db.pool_status()
        assert status["pool_class"] == (
            "AsyncAdaptedQueuePool" if flavour.is_async else "QueuePool"
        )
        assert status["pool_size"] == db.config.pool_size
        assert status["capacity"] == db.config.pool_size + db.config.max_overflow
        assert PoolMonitor(db).status()["checked_out"] == 0
    finally:
        await maybe_await(db.dispose())


def test_monitor_rejects_what_is_not_an_engine() -> None:
    with pytest.raises(UnsupportedMonitorTarget, match="cannot monitor a str"):
        PoolMonitor("postgresql://localhost/db")  # type: ignore[arg-type]


async def test_monitor_health_warns_above_80_percent(
    flavour: Flavour, sqlite_url: str, records: Callable[[str], list[logging.LogRecord]]
) -> None:
    """Seed 000: ``await monitor_health()`` logs a warning when utilization is above 80 %."""
    engine = flavour.engine(sqlite_url, pool_size=4, max_overflow=0)
    monitor = ConnectionPoolMonitor(engine)
    conns = [await flavour.connect(engine) for _ in range(3)]
    health = await monitor.monitor_health()  # 75 %: fine
    assert health.healthy and not records("repom.monitoring.pool")
    conns.append(await flavour.connect(engine))
    health = await monitor.monitor_health()  # 100 %
    assert not health.healthy
    assert health.warnings == ("pool utilization high: 100.0% (4 of 4 connections checked out)",)
    [record] = records("repom.monitoring.pool")
    assert record.levelno == logging.WARNING and "pool utilization high" in record.getMessage()
    for conn in conns:
        await flavour.close(conn)
    assert monitor.check_health().healthy


# --------------------------------------------------------------------------- saturation (PG)


def _metric(registry: CollectorRegistry, name: str, pool_name: str) -> float | None:
    return registry.get_sample_value(name, {"pool": pool_name})


async def test_saturation_status_and_metrics_at_each_step(flavour: Flavour, pg_url: str) -> None:
    engine = flavour.engine(pg_url, pool_size=2, max_overflow=1, pool_timeout=0.3)
    monitor = PoolMonitor(engine).install(name=f"saturation-{flavour.name}")
    name = monitor.name  # unique in the process ("...#2" while an older one is alive)
    registry = CollectorRegistry()
    registry.register(RepomCollector([monitor]))

    expected = [  # checked out -> (checked_in, overflow, utilization %)
        (0, 0, 0.0),
        (1, 0, 33.33),
        (2, 0, 66.67),
        (3, 1, 100.0),
    ]
    conns: list[Any] = []
    for out, overflow, utilization in expected:
        if out:
            conn = await flavour.connect(engine)
            await flavour.execute(conn, text("SELECT 1"))
            conns.append(conn)
        status = monitor.status()
        assert (status["checked_out"], status["overflow"], status["utilization"]) == (
            out,
            overflow,
            utilization,
        )
        assert status["total"] == out and status["capacity"] == 3
        assert _metric(registry, "repom_pool_checked_out", name) == out
        assert _metric(registry, "repom_pool_overflow", name) == overflow
        assert _metric(registry, "repom_pool_utilization_ratio", name) == pytest.approx(
            utilization / 100
        )
        assert _metric(registry, "repom_pool_capacity", name) == 3
        assert _metric(registry, "repom_pool_checkout_wait_seconds_count", name) == out
        assert monitor.check_health().healthy is (utilization <= 80)

    # full: the next checkout gives up after pool_timeout with repom's typed error
    with pytest.raises(PoolExhausted, match="pool exhausted") as raised:
        await flavour.connect(engine)
    assert isinstance(raised.value, sa_exc.TimeoutError)  # existing except clauses still match
    status = monitor.status()
    assert status["timeouts"] == 1 and status["checked_out"] == 3
    assert status["wait_time_max"] >= 0.25  # the failed checkout waited out the pool timeout
    assert _metric(registry, "repom_pool_checkout_timeouts_total", name) == 1
    assert _metric(registry, "repom_pool_checkout_wait_seconds_count", name) == 4
    health = monitor.check_health()
    assert "1 checkout timeout(s) since the previous health check" in health.warnings
    assert not any("timeout" in w for w in monitor.check_health().warnings)  # reported once

    for conn in conns:
        await flavour.close(conn)
    status = monitor.status()
    assert (status["checked_out"], status["checked_in"], status["overflow"]) == (0, 2, 0)
    assert _metric(registry, "repom_pool_connections", name) == 2
    assert _metric(registry, "repom_pool_connects_total", name) == 3
    assert _metric(registry, "repom_pool_checked_in", name) == 2


async def test_callers_waiting_for_a_connection(flavour: Flavour, pg_url: str) -> None:
    engine = flavour.engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=10)
    monitor = PoolMonitor(engine).install()
    held = await flavour.connect(engine)
    done = threading.Event()

    async def wait_for_connection() -> None:
        conn = await flavour.connect(engine)
        await flavour.close(conn)

    if flavour.is_async:
        waiter: Any = asyncio.create_task(wait_for_connection())
    else:
        waiter = threading.Thread(
            target=lambda: (asyncio.run(wait_for_connection()), done.set()), daemon=True
        )
        waiter.start()
    deadline = time.monotonic() + 10
    while monitor.status()["waiting"] == 0:  # wait (bounded) until the waiter blocks
        assert time.monotonic() < deadline, "the waiter never started waiting"
        await asyncio.sleep(0.005)
    status = monitor.status()
    assert (status["waiting"], status["checked_out"], status["utilization"]) == (1, 1, 100.0)
    assert "1 caller(s) waiting for a connection" in monitor.check_health().warnings

    await flavour.close(held)  # hand the connection over
    if flavour.is_async:
        await asyncio.wait_for(waiter, 10)
    else:
        waiter.join(10)
        assert done.is_set()
    assert monitor.status()["waiting"] == 0
    assert monitor.status()["timeouts"] == 0


def test_raw_engine_without_monitor_raises_pool_exhausted(tmp_path: Path) -> None:
    """Even without a monitor, a raw ``engine.connect()`` on a full pool of an engine repom built
    raises ``PoolExhausted``, which is still SQLAlchemy's ``TimeoutError``."""
    db = Database(
        f"sqlite:///{tmp_path / 'raw.sqlite3'}", pool_size=1, max_overflow=0, pool_timeout=0.05
    )
    try:
        with db.engine.connect():
            with pytest.raises(PoolExhausted) as raised:
                db.engine.connect()
            assert isinstance(raised.value, sa_exc.TimeoutError)
            with pytest.raises(PoolExhausted):
                db.ping()
    finally:
        db.dispose()
