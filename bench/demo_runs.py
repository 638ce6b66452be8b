"""The demo, run again and again: it must never fail, on SQLite or on PostgreSQL.

Each run is ``python -m examples.bank_blog.demo`` in a fresh process on a fresh database (a new
SQLite file; a new PostgreSQL database), exactly what ``./run demo`` does: migrations, seed, the
HTTP scenario with 400 concurrent transfers (32 in flight) and its checks.  The demo writes its
figures as JSON (``--json``); this script collects them.

Variants:

* ``sqlite`` / ``postgresql`` -- repom's defaults (``--runs`` each, default 20): every run must
  pass; server-side transaction retries and client retries after ``503 + Retry-After`` are
  counted;
* ``sqlite, write queue off`` -- ``REPOM_SQLITE_WRITE_QUEUE=false``: SQLite's own busy handler
  decides who writes next, as before the queue existed (``--baseline-runs``, default 5); its
  throughput and p95 are the "before" of the SQLite write queue.

Runs alternate between the variants (interleaved), so a slow spell of the machine hits all of them.

Run: ``python -m bench.demo_runs [--runs 20] [--baseline-runs 5] [--pg-url URL]``
(PostgreSQL: ``REPOM_BENCH_PG_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``; each run
creates and drops a database of its own).  Exit code 1 when a run with repom's defaults failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._meta import stamp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Variant:
    name: str
    backend: str
    env: dict[str, str]
    runs: int
    must_pass: bool
    results: list[dict[str, Any]] = field(default_factory=list)


def _pg_admin(url: str, sql: str) -> None:
    import psycopg

    from repom.urls import convert_to_sync_uri

    conninfo = convert_to_sync_uri(url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql)


def _database_url(variant: Variant, pg_url: str, workdir: Path, n: int) -> tuple[str, str | None]:
    if variant.backend == "sqlite":
        return f"sqlite:///{workdir / f'demo_{n}.sqlite3'}", None
    name = f"repom_demo_run_{os.getpid()}_{n}"
    _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}"')
    _pg_admin(pg_url, f'CREATE DATABASE "{name}"')
    base = pg_url.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def run_once(variant: Variant, pg_url: str, workdir: Path, n: int) -> dict[str, Any]:
    url, pg_database = _database_url(variant, pg_url, workdir, n)
    out = workdir / f"run_{n}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOM_")}
    env.pop("DATABASE_URL", None)
    env.update(variant.env)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "examples.bank_blog.demo", "--database-url", url,
             "--json", str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        if pg_database:
            _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{pg_database}" WITH (FORCE)')
    figures: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"ok": False}
    figures["exit_code"] = proc.returncode
    figures["seconds"] = time.perf_counter() - start
    if proc.returncode != 0 or not figures.get("ok"):
        figures["ok"] = False
        figures["tail"] = (proc.stdout + proc.stderr)[-1500:]
    return figures


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(variants: list[Variant]) -> str:
    lines = [
        "| variant | runs | passed | transfers req/s (median) | p95 ms (median / worst) "
        "| server retries per run (median / max) | client retries (total) "
        "| HTTP statuses (all runs) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in variants:
        rs = v.results
        passed = sum(1 for r in rs if r.get("ok"))
        rates = [r["throughput"] for r in rs if "throughput" in r]
        p95 = [r["p95_ms"] for r in rs if "p95_ms" in r]
        retries = [r["server_retries"] for r in rs if "server_retries" in r]
        client = sum(r.get("client_retries", 0) for r in rs)
        statuses: dict[str, int] = {}
        for r in rs:
            for code, count in r.get("statuses", {}).items():
                statuses[code] = statuses.get(code, 0) + count
        lines.append(
            f"| {v.name} | {len(rs)} | {passed} | {_median(rates):.0f} "
            f"| {_median(p95):.0f} / {max(p95, default=float('nan')):.0f} "
            f"| {_median(retries):.0f} / {max(retries, default=0)} | {client} "
            f"| {', '.join(f'{k}: {c}' for k, c in sorted(statuses.items()))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_runs", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="runs per backend, repom defaults")
    parser.add_argument("--baseline-runs", type=int, default=5, help="SQLite runs, queue off")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("REPOM_BENCH_PG_URL", PG_DEFAULT))
    parser.add_argument("--output", default=str(RESULTS / "demo_runs.md"))
    args = parser.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    variants = [Variant(b, b, {}, args.runs, True) for b in backends]
    if "sqlite" in backends and args.baseline_runs:
        variants.append(
            Variant(
                "sqlite, write queue off",
                "sqlite",
                {"REPOM_SQLITE_WRITE_QUEUE": "false"},
                args.baseline_runs,
                False,
            )
        )
    n = 0
    with tempfile.TemporaryDirectory(prefix="repom-demo-runs-") as tmp:
        workdir = Path(tmp)
        for round_ in range(max(v.runs for v in variants)):
            for v in variants:
                if round_ >= v.runs:
                    continue
                n += 1
                figures = run_once(v, args.pg_url, workdir, n)
                v.results.append(figures)
                mark = "ok" if figures.get("ok") else "FAILED"
                print(
                    f"[{v.name} #{round_ + 1}] {mark}: {figures.get('throughput', 0):.0f} req/s, "
                    f"p95 {figures.get('p95_ms', 0):.0f} ms, "
                    f"server retries {figures.get('server_retries')}, "
                    f"client retries {figures.get('client_retries')}",
                    flush=True,
                )
                if not figures.get("ok") and v.must_pass:
                    print(figures.get("tail", ""))

    failed = [v.name for v in variants if v.must_pass and not all(r["ok"] for r in v.results)]
    body = [
        "The demo (`python -m examples.bank_blog.demo`: migrations, seed, HTTP scenario with 400 "
        "concurrent transfers, 32 in flight, and its checks), each run in a fresh process on a "
        "fresh database; runs interleaved between the variants.  *server retries*: transactions "
        "run again by repom's retry policy (per run of 400 transfers); *client retries*: requests "
        "the demo's client sent again after `503` + `Retry-After`.",
        "",
        table(variants),
        "",
    ]
    queue_on = next((v for v in variants if v.name == "sqlite"), None)
    queue_off = next((v for v in variants if v.name == "sqlite, write queue off"), None)
    on = _median([r["throughput"] for r in queue_on.results if r.get("ok")]) if queue_on else 0
    off = (
        _median([r["throughput"] for r in queue_off.results if "throughput" in r])
        if queue_off
        else 0
    )
    if on and off:
        body.append(
            f"SQLite write queue: {on / off:.1f}x the transfers per second of SQLite's busy "
            "handler alone (medians)."
        )
        body.append("")
    body.append(
        "FAILED: " + ", ".join(failed) if failed else "OK: every run with repom's defaults passed."
    )
    body += ["", f"Command: `python -m bench.demo_runs --runs {args.runs} --baseline-runs "
             f"{args.baseline_runs} --backends {args.backends}`", "", stamp()]  # fmt: skip
    text = "\n".join(body) + "\n"
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
