"""The README's first command: ``python -m examples.bank_blog.demo`` (real uvicorn, real HTTP),
its ``--serve`` variant, the scripted scenario on both databases, and the migrations."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.bank_blog import demo as demo_command
from examples.bank_blog import services
from examples.bank_blog.bootstrap import ALEMBIC_INI
from examples.bank_blog.scenario import run_scenario
from repom.migrations import Migrations
from tests.demo.conftest import Demo
from tests.fastapi._support import Backend

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "examples.bank_blog.demo"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPOM_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_demo_command_over_real_http(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    done = subprocess.run(
        [*DEMO, "--database-url", url, "--transfers", "60", "--concurrency", "8", "--users", "6"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "migrations bank and blog" in out
    assert "seed 6 users, 6 accounts, 12 articles" in out
    assert "server http://127.0.0.1:" in out
    assert "All checks passed: money was neither created nor destroyed." in out
    assert "✗" not in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_keeps_running_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'serve.sqlite3'}"
    process = subprocess.Popen(
        [*DEMO, "--serve", "--port", str(port), "--database-url", url, "--users", "3"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        assert health.status_code == 200
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        users = httpx.get(f"http://127.0.0.1:{port}/accounts", timeout=5).json()["items"]
        assert len(users) == 3
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"serving http://127.0.0.1:{port}" in output and "stopped" in output
    assert "Traceback" not in output


async def test_scenario_passes(demo: Demo) -> None:
    result = await run_scenario(demo.client, transfers=60, concurrency=6, seed=3)
    failed = [(c.name, c.detail) for c in result.checks if not c.ok]
    assert result.ok, failed
    assert result.transfers.attempted == 61 and result.transfers.statuses[404] == 1
    assert result.report_after["total_balance_cents"] == (
        demo.seeded.total_balance_cents + 250_000  # the scenario registers one client
    )
    assert demo.checked_out == 0


def test_a_broken_invariant_fails_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer service that creates money must make the demo exit non-zero."""
    real = services.transfer

    async def leaky(data: Any) -> Any:
        made = await real(data)
        await real(
            data.model_copy(
                update={
                    "from_account_id": data.to_account_id,
                    "to_account_id": data.from_account_id,
                    "amount_cents": max(1, data.amount_cents // 2),
                }
            )
        )
        return made

    monkeypatch.setattr(services, "transfer", leaky)
    monkeypatch.chdir(ROOT)
    url = f"sqlite:///{tmp_path / 'broken.sqlite3'}"
    code = demo_command.main(
        ["--database-url", url, "--transfers", "20", "--concurrency", "4", "--users", "4"]
    )
    assert code == 1


def test_migrations_match_the_models(backend: Backend) -> None:
    database = backend.database()
    with database.engine.connect() as connection:
        migrations = Migrations(config_file=ALEMBIC_INI)
        migrations.config.attributes["connection"] = connection
        assert [step.message for step in migrations.upgrade()] == ["bank and blog"]
        assert migrations.check() == []  # autogenerate finds nothing to do
        migrations.downgrade("base")
        assert migrations.current() == ()
        migrations.upgrade()
        assert migrations.current() == ("0001",)


def test_load_benchmark_smoke(tmp_path: Path) -> None:
    """bench.demo_load with tiny sizes: three apps come up, repom keeps its failure rule."""
    url = f"sqlite:///{tmp_path / 'b.sqlite3'}"
    sizes = ["--clients", "4", "--pool", "2", "--requests", "40", "--rounds", "1", "--users", "10"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.demo_load", "--url", url, *sizes, "--no-write"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| repom | 40 |" in done.stdout and "| advanced-alchemy | 40 |" in done.stdout
    assert "OK: repom" in done.stdout


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql"])
def test_demo_default_run_needs_no_retries(backend_name: str, tmp_path: Path) -> None:
    """The demo as ``./run demo`` runs it (400 transfers, 32 in flight): contention is handled
    by locking, not by luck -- no request fails, and the server retries (almost) nothing."""
    from bench.demo_runs import _pg_admin
    from tests.support import require_postgres

    database = None
    if backend_name == "sqlite":
        url = f"sqlite:///{tmp_path / 'default.sqlite3'}"
    else:
        base = require_postgres()
        database = f"repom_demo_default_{os.getpid()}"
        _pg_admin(base, f'DROP DATABASE IF EXISTS "{database}"')
        _pg_admin(base, f'CREATE DATABASE "{database}"')
        url = f"{base.rsplit('/', 1)[0]}/{database}"
    figures_path = tmp_path / "figures.json"
    try:
        done = subprocess.run(
            [*DEMO, "--database-url", url, "--json", str(figures_path)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        if database:
            _pg_admin(base, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert figures["ok"] and figures["transfers"] == 401
    assert set(figures["statuses"]) <= {"201", "404", "409"}
    assert figures["statuses"]["404"] == 1
    assert figures["server_retries"] < 50  # one in eight transfers: a bound, not luck
    assert figures["client_retries"] == 0
