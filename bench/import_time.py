"""Import time of repom against plain SQLAlchemy, FastAPI and advanced-alchemy.

Every measurement is a fresh interpreter (``python -X importtime -c "import X"``), the targets
interleaved round after round; the figure is the median over the rounds.  Three columns:

* *wall*: the subprocess's wall time minus the bare interpreter's (``python -c pass``);
* *importtime*: the sum of the top-level cumulative times ``-X importtime`` reports, minus the
  bare interpreter's (the modules ``site`` imports at start-up);
* *cpu*: the subprocess's user + system CPU time minus the bare interpreter's (the figure least
  disturbed by other work on the machine).

Ratios are to ``import sqlalchemy.orm``.  The comparison the target is about comes second:
**what repom.fastapi adds to a FastAPI application**, i.e. ``from repom.fastapi import *`` minus
``import fastapi`` (which an application using repom.fastapi imports anyway), over
``import sqlalchemy.orm``; target <= 1.5x.  Beside it, repom's own share (beyond FastAPI and the
parts of SQLAlchemy the names are made of: the ORM and its asyncio extension) and the absolute
figure (which can never go below ``fastapi + sqlalchemy.orm``).

``python -m bench.import_time [--rounds N]`` (or ``python -m bench import_time``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._meta import stamp

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "import sqlalchemy.orm"
EVERY_NAME = "from repom.fastapi import *"
FASTAPI = "import fastapi"
FRAMEWORKS = "import fastapi, sqlalchemy.ext.asyncio"
TARGET = 1.5
TARGETS = (
    ("bare interpreter", "pass"),
    ("sqlalchemy.orm", BASELINE),
    ("repom", "import repom"),
    ("repom.config", "import repom.config"),
    ("repom.database", "import repom.database"),
    ("repom.fastapi", "import repom.fastapi"),
    ("repom.fastapi, every name", EVERY_NAME),
    (
        "repom.fastapi, an app's names",
        "from repom.fastapi import AsyncDbSession, DbSession, create_health_router, "
        "install_exception_handlers, lifespan",
    ),
    ("fastapi", FASTAPI),
    ("fastapi + sqlalchemy.orm", "import fastapi, sqlalchemy.orm"),
    ("fastapi + sqlalchemy.ext.asyncio", FRAMEWORKS),
    ("advanced_alchemy.extensions.fastapi", "import advanced_alchemy.extensions.fastapi"),
)
_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|( *)\S")

Sample = tuple[float, float, float]  # wall ms, importtime ms, cpu ms


def _cpu() -> float:
    usage = os.times()
    return (usage.children_user + usage.children_system) * 1000


def measure(code: str) -> Sample:
    """(wall ms, importtime ms, cpu ms) of one fresh interpreter running *code*."""
    cpu = _cpu()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = (time.perf_counter() - start) * 1000
    cpu = _cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {done.stderr.strip().splitlines()[-1:]}")
    total = 0
    for line in done.stderr.splitlines():
        match = _LINE.match(line)
        if match and len(match.group(2)) == 1:  # top level: one space after the bar
            total += int(match.group(1))
    return wall, total / 1000, cpu


def run(rounds: int) -> dict[str, Sample]:
    samples: dict[str, list[Sample]] = {code: [] for _, code in TARGETS}
    for _ in range(rounds):
        for _, code in TARGETS:
            samples[code].append(measure(code))
    return {
        code: (
            statistics.median(s[0] for s in values),
            statistics.median(s[1] for s in values),
            statistics.median(s[2] for s in values),
        )
        for code, values in samples.items()
    }


def _net(medians: dict[str, Sample], code: str) -> Sample:
    """*code*'s figures with the bare interpreter's subtracted."""
    bare = medians["pass"]
    own = medians[code]
    return own[0] - bare[0], own[1] - bare[1], own[2] - bare[2]


def _ratios(values: Sample, base: Sample) -> str:
    return " | ".join(f"{v:.0f} | {v / b:.2f}x" for v, b in zip(values, base, strict=True))


def report(medians: dict[str, Sample], rounds: int) -> str:
    bare_wall = medians["pass"][0]
    base = _net(medians, BASELINE)
    every = _net(medians, EVERY_NAME)
    fastapi = _net(medians, FASTAPI)
    frameworks = _net(medians, FRAMEWORKS)
    added = tuple(e - f for e, f in zip(every, fastapi, strict=True))
    own = tuple(e - f for e, f in zip(every, frameworks, strict=True))
    lines = [
        f"Import time, fresh interpreter per measurement, median of {rounds} interleaved rounds; "
        f"bare interpreter start ({bare_wall:.0f} ms wall) subtracted. Ratios are to "
        "`import sqlalchemy.orm`.",
        "",
        "Command: `python -m bench.import_time" + (f" --rounds {rounds}`" if rounds != 9 else "`"),
        "",
        "| import | wall ms | ratio | importtime ms | importtime ratio | cpu ms | cpu ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, code in TARGETS:
        if code == "pass":
            continue
        lines.append(f"| {label} | {_ratios(_net(medians, code), base)} |")
    ratio = added[1] / base[1]
    verdict = f"{ratio:.2f}x, {'met' if ratio <= TARGET else 'NOT met'}"
    lines += [
        "",
        f"What `{EVERY_NAME}` costs, over `import sqlalchemy.orm`. The target (<= {TARGET}x, "
        "judged on the importtime column as the issue measures it) is about the first row: what "
        "repom.fastapi adds to an application that imports FastAPI anyway (every name minus "
        f"`{FASTAPI}`): **{verdict}**. The second row is repom's own code (every name minus "
        "FastAPI, SQLAlchemy's ORM and its asyncio extension, which the names are made of); the "
        "third, the absolute figure, can never go below `fastapi + sqlalchemy.orm`.",
        "",
        "| comparison | wall ms | ratio | importtime ms | importtime ratio | cpu ms | cpu ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| repom.fastapi, every name, beyond fastapi | {_ratios(added, base)} |",
        f"| repom's own share, beyond fastapi + sqlalchemy.ext.asyncio | {_ratios(own, base)} |",
        f"| repom.fastapi, every name (absolute) | {_ratios(every, base)} |",
        "",
        stamp({"rounds": rounds}),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.import_time", description=__doc__)
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9, at least 7)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv if argv is not None else [])
    rounds = max(args.rounds, 7)
    table = report(run(rounds), rounds)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "import_time.md").write_text(table + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
