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


def test_plugin_suite_benchmark_runs(tmp_path: Path) -> None:
    """bench/plugin_suite.py generates pytest projects and runs them (tiny sizes, SQLite, the
    plugin against the baseline and deleting all rows); every generated test passed, or it
    raises."""
    from bench import plugin_suite

    output = tmp_path / "plugin_suite.md"
    args = ["--tests", "50", "--rounds", "1", "--backends", "sqlite", "--flavours", "sync"]
    args += ["--strategies", "plugin,delete", "--interleaved", "30"]
    plugin_suite.main([*args, "--output", str(output)])
    table = output.read_text()
    assert "| sqlite | sync | repom plugin (db_test) |" in table
    assert "| sqlite | sync | delete all rows |" in table
    assert "deleting all rows costs" in table
    assert (
        "pytest's own cost per test" in table and "Command: `python -m bench.plugin_suite" in table
    )
    assert "sqlite, sync, interleaved: deleting all rows costs" in table
