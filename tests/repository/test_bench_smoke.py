"""The repository benchmark runs end to end (tiny sizes; the figures are not checked)."""

from __future__ import annotations

import argparse

from bench import repository as bench
from tests.support import require_postgres


async def test_benchmark_runs_with_tiny_sizes() -> None:
    url = require_postgres()
    args = argparse.Namespace(rows=300, rounds=1, uow=5, depth=120, url=url)
    report = await bench.main_async(args)
    assert "| repom bulk_create keys |" in report
    assert "SELECT EXISTS (SELECT 1 FROM bench_repo_rows" in report
    assert "SELECT count(*) AS count_1 FROM bench_repo_rows" in report
