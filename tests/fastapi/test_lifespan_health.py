"""Lifespan (verify at startup, dispose at shutdown, wraps the app's own lifespan) and /health."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from repom.async_session import get_async_db_session
from repom.config import RepomConfig, set_config
from repom.database import Database, get_async_database, get_database
from repom.exceptions import ConnectionLost
from repom.fastapi import (
    AsyncDbSession,
    DbSession,
    Lifespan,
    create_health_router,
    databases_in_use,
    health_router,
    lifespan,
    use_databases,
)
from tests.fastapi._support import Backend, StatementLog, sync_engine_of


def test_lifespan_verifies_wraps_and_disposes(backend: Backend) -> None:
    db = backend.async_database()
    log = StatementLog().attach(db)
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append(f"app startup after {log.count('SELECT 1')} ping(s)")
        yield {"greeting": "hello"}
        events.append(f"app shutdown, {sync_engine_of(db).pool.checkedin()} idle connection(s)")

    app = FastAPI(lifespan=Lifespan(app_lifespan, async_database=db))

    @app.get("/greeting")
    async def greeting(request: Request, session: AsyncDbSession) -> str:
        return str(request.state.greeting)

    with TestClient(app) as client:
        assert client.get("/greeting").json() == "hello"
    assert events == ["app startup after 1 ping(s)", "app shutdown, 1 idle connection(s)"]
    assert sync_engine_of(db).pool.checkedin() == 0  # disposed after the app's own shutdown


def test_lifespan_finds_the_databases_the_routes_use(tmp_path: Path) -> None:
    set_config(RepomConfig(database_url=f"sqlite:///{tmp_path / 'default.sqlite3'}"))
    sync_log = StatementLog().attach(get_database())
    async_log = StatementLog().attach(get_async_database())  # before the first disposal
    app = FastAPI(lifespan=lifespan)

    @app.get("/sync")
    def sync_route(session: DbSession) -> None:
        return None

    with TestClient(app):
        assert sync_log.count("SELECT 1") == 1
        assert async_log.count("SELECT 1") == 0  # no async route: not verified

    seed_004 = FastAPI(lifespan=lifespan)

    @seed_004.get("/seed")
    async def seed_route(session: AsyncSession = Depends(get_async_db_session)) -> None:
        return None

    assert databases_in_use(seed_004) == [get_async_database()]
    async_log = StatementLog().attach(get_async_database())  # the disposed engine was dropped
    with TestClient(seed_004):
        assert async_log.count("SELECT 1") == 1


def test_startup_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    missing = Database(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite3'}")
    app = FastAPI(lifespan=Lifespan(database=missing))
    with pytest.raises(ConnectionLost), TestClient(app):
        pass


def test_health_reports_ping_and_labels(backend: Backend) -> None:
    db = backend.async_database()
    sync_db = backend.database()
    app = FastAPI(lifespan=Lifespan(async_database=db, database=sync_db))
    app.include_router(health_router)
    with TestClient(app) as client:
        response = client.get("/health/ready")
        compat = client.get("/health")
        live = client.get("/health/live")
    assert response.status_code == 200 and compat.status_code == 200

    def labels(body: dict[str, Any]) -> list[tuple[str, bool]]:
        return [(d["name"], d["ok"]) for d in body["databases"]]

    assert labels(compat.json()) == labels(response.json())
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    report = response.json()
    assert report["status"] == "ok"
    assert [(d["flavour"], d["dialect"], d["ok"], d["role"]) for d in report["databases"]] == [
        ("async", backend.name, True, "primary"),
        ("sync", backend.name, True, "primary"),
    ]
    # the same database twice: two distinct labels
    names = [d["name"] for d in report["databases"]]
    assert len(set(names)) == 2 and names[1] == names[0] + "#2"
    for entry in report["databases"]:
        assert entry["latency_ms"] >= 0 and entry["error"] is None
        assert entry["pool"] is None  # pool figures are opt-in
        assert entry["host"] == ("local" if backend.name == "sqlite" else "127.0.0.1")
    assert {"/health", "/health/ready", "/health/live"} <= set(app.openapi()["paths"])


def test_health_details_are_opt_in(backend: Backend) -> None:
    db = backend.async_database(name="orders")
    app = FastAPI(lifespan=Lifespan(async_database=db))
    app.include_router(create_health_router(details=True))
    with TestClient(app) as client:
        [entry] = client.get("/health/ready").json()["databases"]
    assert entry["name"] == "orders"
    assert entry["pool"]["checked_out"] == 0 and "pool_size" in entry["pool"]


def test_liveness_never_touches_the_database(tmp_path: Path) -> None:
    app = FastAPI()
    use_databases(app, database=Database(f"sqlite:///{tmp_path / 'missing' / 'x.sqlite3'}"))
    app.include_router(health_router)
    with TestClient(app) as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 503


def test_readiness_does_not_wait_behind_a_full_pool(pg_backend: Backend) -> None:
    """Every pooled connection is held by a request: the readiness probe still answers 200 at
    once (its ping uses a connection of its own), where a pool checkout would time out."""
    db = pg_backend.database(pool_size=1, max_overflow=0, pool_timeout=5)
    app = FastAPI()
    use_databases(app, database=db)
    app.include_router(create_health_router(timeout=1))
    with db.engine.connect() as held:  # the pool's only connection
        held.execute(text("SELECT 1"))
        with TestClient(app) as client:
            started = time.perf_counter()
            response = client.get("/health/ready")
            took = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert took < 1.0
    assert db.pool_status()["checked_out"] == 0


def test_health_is_503_when_a_database_is_down(tmp_path: Path) -> None:
    app = FastAPI()
    use_databases(app, database=Database(f"sqlite:///{tmp_path / 'missing' / 'x.sqlite3'}"))
    app.include_router(create_health_router(path="/ready", timeout=2))
    with TestClient(app) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    [entry] = body["databases"]
    assert entry["ok"] is False and entry["error"] and "missing" not in response.text
    with pytest.raises(ValueError, match="timeout"):
        create_health_router(timeout=0)


def test_use_databases_checks_types(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="AsyncDatabase"):
        use_databases(FastAPI(), async_database=Database("sqlite://"))  # type: ignore[arg-type]


def test_health_router_serves_prometheus_metrics(backend: Backend) -> None:
    from repom.monitoring import PoolMonitor

    db = backend.async_database()
    app = FastAPI(lifespan=Lifespan(async_database=db))
    app.include_router(create_health_router())

    @app.get("/ping")
    async def ping(session: AsyncDbSession) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    try:
        with TestClient(app) as client:
            first = client.get("/metrics")
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/plain")
            assert client.get("/ping").json() == 1
            body = client.get("/metrics").text
    finally:
        PoolMonitor(db).uninstall()
    import re

    assert "repom_pool_checked_out" in body and "repom_pool_size" in body
    assert "repom_statement_duration_seconds_count" in body
    commits = re.findall(r"^repom_commits_total\{[^}]*\} (\S+)$", body, re.M)
    assert sum(float(c) for c in commits) >= 1  # the /ping request committed
