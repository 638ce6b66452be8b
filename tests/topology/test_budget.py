"""The connection budget: pool size x workers against the server's and the role's limits, shown by
`repom info` and logged (as a warning when it cannot fit) at application startup."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from repom.config import RepomConfig
from repom.database import Database
from repom.fastapi import Lifespan
from repom.monitoring import connection_budget
from tests.cli._support import cli_env, run
from tests.topology.conftest import Topology


@pytest.fixture(scope="module")
def limited_role(topology: Topology) -> str:
    engine = create_engine(topology.server.url(), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP ROLE IF EXISTS budget_role"))
        conn.execute(text("CREATE ROLE budget_role LOGIN CONNECTION LIMIT 50"))
    engine.dispose()
    return f"postgresql+psycopg://budget_role@127.0.0.1:{topology.server.port}/postgres"


def test_budget_against_the_role_limit(limited_role: str) -> None:
    db = Database(limited_role, config=RepomConfig(pool_size=10, max_overflow=20))
    budget = connection_budget(db.engine, workers=4)
    db.dispose()
    assert (budget.per_process, budget.workers, budget.needed) == (30, 4, 120)
    assert budget.role_limit == 50 and budget.available == 50 and budget.fits is False
    assert budget.max_connections == 200
    small = Database(limited_role, config=RepomConfig(pool_size=5, max_overflow=5))
    assert connection_budget(small.engine, workers=4).fits is True  # 40 <= 50
    small.dispose()


def test_repom_info_shows_the_budget(limited_role: str, tmp_path: Path) -> None:
    result = run(
        ["info", "--url", limited_role],
        tmp_path,
        cli_env(WEB_CONCURRENCY="4", REPOM_POOL_SIZE="10"),
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("connections"))
    assert "30 x 4 worker(s) = 120" in line and "role limit 50" in line
    assert "DOES NOT FIT" in line


def test_startup_warns_when_the_pools_cannot_fit(
    limited_role: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    db = Database(limited_role, config=RepomConfig(pool_size=10, max_overflow=20))
    with caplog.at_level(logging.INFO, logger="repom.fastapi"):
        with TestClient(FastAPI(lifespan=Lifespan(database=db))):
            pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("120 connection(s)" in r.getMessage() for r in warnings), caplog.text
