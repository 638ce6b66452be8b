"""bench.write_loading runs end to end (tiny sizes, SQLite; the figures are not checked, the
variants' results and statement counts are)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import write_loading


def test_benchmark_runs_with_tiny_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'bench.sqlite3'}"
    assert write_loading.main(["--rounds", "1", "--calls", "3", "--no-write", "--url", url]) == 0
    report = capsys.readouterr().out
    [row] = [line for line in report.splitlines() if 'repom create(options=["author"])' in line]
    assert row.endswith("| INSERT + SELECT |")  # the row with its author joined
    assert "| repom create() (author not loaded) |" in report
    assert "_Configuration: " in report
