"""Import time of repom against plain SQLAlchemy, FastAPI and advanced-alchemy.

Every measurement is a fresh interpreter (``python -X importtime -c "import X"``), the targets
interleaved round after round; the figure is the median over the rounds.  Two columns:

* *wall*: the subprocess's wall time minus the bare interpreter's (``python -c pass``);
* *importtime*: the sum of the top-level cumulative times ``-X importtime`` reports, minus the
  bare interpreter's (the modules ``site`` imports at start-up).

Ratios are to ``import sqlalchemy.orm``.  ``python -m bench.import_time [--rounds N]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._meta import stamp

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "import sqlalchemy.orm"
TARGETS = (
    ("bare interpreter", "pass"),
    ("sqlalchemy.orm", BASELINE),
    ("repom", "import repom"),
    ("repom.database", "import repom.database"),
    ("repom.fastapi", "import repom.fastapi"),
    ("repom.fastapi, every name", "from repom.fastapi import *"),
    ("fastapi", "import fastapi"),
    ("fastapi + sqlalchemy.orm", "import fastapi, sqlalchemy.orm"),
    ("advanced_alchemy.extensions.fastapi", "import advanced_alchemy.extensions.fastapi"),
)
_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|( *)\S")


def measure(code: str) -> tuple[float, float]:
    """(wall ms, importtime ms) of one fresh interpreter running *code*."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {done.stderr.strip().splitlines()[-1:]}")
    total = 0
    for line in done.stderr.splitlines():
        match = _LINE.match(line)
        if match and len(match.group(2)) == 1:  # top level: one space after the bar
            total += int(match.group(1))
    return wall, total / 1000


def run(rounds: int) -> dict[str, tuple[float, float]]:
    samples: dict[str, list[tuple[float, float]]] = {code: [] for _, code in TARGETS}
    for _ in range(rounds):
        for _, code in TARGETS:
            samples[code].append(measure(code))
    return {
        code: (
            statistics.median(w for w, _ in values),
            statistics.median(i for _, i in values),
        )
        for code, values in samples.items()
    }


def report(medians: dict[str, tuple[float, float]], rounds: int) -> str:
    bare_wall, bare_it = medians["pass"]
    base_wall = medians[BASELINE][0] - bare_wall
    base_it = medians[BASELINE][1] - bare_it
    lines = [
        f"Import time, fresh interpreter per measurement, median of {rounds} interleaved rounds; "
        f"bare interpreter start ({bare_wall:.0f} ms wall) subtracted. Ratios are to "
        "`import sqlalchemy.orm`.",
        "",
        "| import | wall ms | ratio | importtime ms | importtime ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, code in TARGETS:
        if code == "pass":
            continue
        wall = medians[code][0] - bare_wall
        it = medians[code][1] - bare_it
        lines.append(
            f"| {label} | {wall:.0f} | {wall / base_wall:.2f}x | {it:.0f} | {it / base_it:.2f}x |"
        )
    lines += ["", stamp({"rounds": rounds})]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.import_time", description=__doc__)
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9, at least 7)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv if argv is not None else [])
    table = report(run(max(args.rounds, 7)), max(args.rounds, 7))
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "import_time.md").write_text(table + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
