"""bench/fixture_overhead.py runs (tiny sizes, SQLite): every strategy isolates its tests (the
simulated test asserts it starts from empty tables) and the report has a row per strategy."""

from __future__ import annotations

from pathlib import Path

from bench import fixture_overhead


def test_fixture_overhead_benchmark_runs(tmp_path: Path) -> None:
    output = tmp_path / "fixture_overhead.md"
    args = ["--tests", "3", "--rounds", "1", "--backends", "sqlite", "--output", str(output)]
    fixture_overhead.main(args)
    table = output.read_text()
    for strategy in fixture_overhead.STRATEGIES:
        assert f"| sqlite | {strategy.label} |" in table
    assert "drop_all + create_all per test is" in table
