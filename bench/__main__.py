"""Run every benchmark in bench/ (``./run bench`` or ``python -m bench [name ...]``).

Each benchmark module runs repom, raw SQLAlchemy and advanced-alchemy on the same data in one
process, prints a markdown table with times and ratios and writes it to ``bench/results/``.
This runner only sequences them, collects the tables into ``bench/results/README.md`` and draws
their ratio columns into ``bench/results/ratios.svg`` (:mod:`bench.plot`).  Each benchmark's
``main(argv)`` gets an empty argument list (its defaults): run ``python -m bench.NAME --help`` for
its own options.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HELPERS = {"common", "plot"}  # modules of bench/ that are not benchmarks


def discover() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(HERE)])
        if not m.name.startswith("_") and m.name not in HELPERS
    )


def main(argv: list[str]) -> int:
    names = argv or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(discover())}")
        return 2
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        try:
            module.main([])  # its own defaults: the runner's argv names benchmarks
        except SystemExit as exc:
            if exc.code not in (0, None):
                failed.append(name)
        except Exception as exc:  # keep going: one broken benchmark must not hide the others
            print(f"bench.{name} failed: {exc!r}")
            failed.append(name)
        print(f"(bench.{name}: {time.perf_counter() - start:.1f}s)")
    tables = [
        f"## {p.stem}\n\n{p.read_text().strip()}\n"
        for p in sorted(RESULTS.glob("*.md"))
        if p.name != "README.md"
    ]
    (RESULTS / "README.md").write_text(
        "# Benchmark results\n\nWritten by `./run bench`; each table comes from one run.\n\n"
        + "\n".join(tables)
    )
    try:
        from bench import plot

        plot.main([str(RESULTS)])
    except Exception as exc:  # the tables are written: a broken chart must not hide them
        print(f"bench.plot failed: {exc!r}")
        failed.append("plot")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
