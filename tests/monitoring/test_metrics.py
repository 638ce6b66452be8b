"""Prometheus exposition, the retry counter, lazy import of prometheus-client, route labels."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from repom.exceptions import SerializationFailure
from repom.monitoring import (
    PoolMonitor,
    RouteContextMiddleware,
    current_route,
    metrics_available,
    metrics_text,
    register_metrics,
    route_context,
)
from repom.retry import retry_on_database_error


def test_importing_monitoring_does_not_import_prometheus() -> None:
    code = (
        "import sys, repom.monitoring as m; "
        "assert 'prometheus_client' not in sys.modules, 'imported'; "
        "m.PoolMonitor; m.QueryCounter; m.ConnectionPoolMonitor; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
    assert metrics_available()


def test_metrics_text_exposes_installed_engines(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    name = PoolMonitor(engine).install(name="exposed-db").name
    registry = CollectorRegistry()
    assert register_metrics(registry) is register_metrics(registry)  # registered once
    with engine.begin() as conn:
        conn.execute(text("SELECT 1"))
    body, content_type = metrics_text(registry)
    assert content_type.startswith("text/plain")
    lines = body.decode().splitlines()
    for line in (
        f'repom_pool_checked_out{{pool="{name}"}} 0.0',
        f'repom_pool_size{{pool="{name}"}} 5.0',
        f'repom_commits_total{{pool="{name}"}} 1.0',
        f'repom_statement_duration_seconds_count{{pool="{name}"}} 1.0',
        f'repom_pool_checkout_wait_seconds_count{{pool="{name}"}} 1.0',
    ):
        assert line in lines
    assert "# TYPE repom_pool_checkout_wait_seconds histogram" in lines
    PoolMonitor(engine).uninstall()  # an uninstalled engine is no longer exported
    assert f'pool="{name}"' not in metrics_text(registry)[0].decode()
    engine.dispose()


def test_transaction_retries_are_counted() -> None:
    registry = CollectorRegistry()
    register_metrics(registry)
    name = "repom_transaction_retries_total"
    labels = {"error": "SerializationFailure"}
    before = registry.get_sample_value(name, labels) or 0.0
    calls = []

    @retry_on_database_error(max_retries=2, delay=0)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise SerializationFailure("could not serialize access", sqlstate="40001")
        return "done"

    assert flaky() == "done"
    assert registry.get_sample_value(name, labels) == before + 2


async def test_route_context_and_asgi_middleware() -> None:
    import httpx
    from fastapi import FastAPI

    assert current_route() is None
    with route_context("nightly-report"):
        assert current_route() == "nightly-report"
    assert current_route() is None

    app = FastAPI()
    app.add_middleware(RouteContextMiddleware)

    @app.get("/items/{item_id}")
    def read_item(item_id: int) -> dict[str, Any]:  # sync: runs in the threadpool
        return {"route": current_route()}

    @app.get("/async/{name}")
    async def read_async(name: str) -> dict[str, Any]:
        return {"route": current_route()}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/items/3")).json() == {"route": "GET /items/{item_id}"}
        assert (await client.get("/async/x")).json() == {"route": "GET /async/{name}"}
    assert current_route() is None


@pytest.mark.parametrize("threshold", [80.0, 50.0])
def test_health_as_dict_for_a_health_endpoint(sqlite_url: str, threshold: float) -> None:
    engine = create_engine(sqlite_url, pool_size=3, max_overflow=0)
    with engine.connect(), engine.connect():
        health = PoolMonitor(engine).check_health(utilization_threshold=threshold)
    document = health.as_dict()
    assert document["healthy"] is (threshold == 80.0)
    assert document["status"]["utilization"] == 66.67
    engine.dispose()
