"""The bulk_create benchmark runs end to end (tiny sizes; the figures are not checked)."""

from __future__ import annotations

import argparse

from bench import bulk_instances as bench
from tests.support import require_postgres


async def test_bulk_instances_benchmark_runs_with_tiny_sizes() -> None:
    url = require_postgres()
    args = argparse.Namespace(
        rows=200, rounds=1, gen_rows=300, gen_rounds=2, slow_rounds=1, url=url
    )
    report = await bench.main_async(args)
    assert "| repom bulk_create(instances) | 1 |" in report
    assert "| repom bulk_create(generator, returning=None) | 2 |" in report
    assert "| advanced-alchemy add_many per 10,000 | 1 |" in report  # slow: first round only
    assert "_Configuration:" in report
