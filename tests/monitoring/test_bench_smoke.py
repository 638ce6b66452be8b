"""bench/monitoring_overhead.py runs end to end (tiny sizes) and reports every variant."""

from __future__ import annotations

import pytest

from bench import monitoring_overhead


def test_monitoring_overhead_benchmark_runs(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monitoring_overhead.main(["--rounds", "1", "--batch", "2", "--url", pg_url, "--no-write"])
    table = capsys.readouterr().out
    for driver in ("psycopg (sync)", "asyncpg (async)"):
        assert f"| {driver} | SQLAlchemy (no listeners) |" in table
        assert f"| {driver} | repom monitor |" in table
        assert f"| {driver} | advanced-alchemy session |" in table
