"""bench/http_overhead.py runs end to end (tiny sizes, PostgreSQL): three uvicorn servers, both
endpoints, every request answered 200, a report with a row per app and endpoint and the
configuration it ran with."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from bench import http_overhead


@pytest.mark.parametrize("generator", ["processes", "wrk"])
def test_http_overhead_benchmark_runs(pg_url: str, tmp_path: Path, generator: str) -> None:
    if generator == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (./run bench installs it)")
    output = tmp_path / "http_overhead.md"
    args = ["--url", pg_url, "--rounds", "1", "--duration", "1", "--warmup", "0.5"]
    args += ["--rows", "50", "--generator", generator, "--instructions", "0"]
    args += ["--schema", f"bench_http_{uuid.uuid4().hex[:8]}", "--output", str(output)]
    assert http_overhead.main(args) == 0  # 0: no request failed
    report = output.read_text()
    for endpoint in http_overhead.ENDPOINTS:
        for app in http_overhead.APPS:
            row = next(
                line for line in report.splitlines() if line.startswith(f"| {endpoint} | {app} |")
            )
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            assert float(cells[2].replace(",", "")) > 0  # req/s
            assert cells[7] == "0"  # errors
    assert "Command: `python -m bench.http_overhead --rounds 1" in report
    assert "_Configuration: python" in report and "load generator=" in report
