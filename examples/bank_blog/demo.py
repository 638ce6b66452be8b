"""``python -m examples.bank_blog.demo``: the whole demo in one command.

1. configure repom (``DATABASE_URL`` if set, else a fresh SQLite file in ``./.demo/``);
2. run the Alembic migrations and seed the database (users, accounts, articles);
3. start the API with uvicorn on a free 127.0.0.1 port, in this process;
4. drive it over real HTTP (:mod:`examples.bank_blog.scenario`), concurrent transfers included;
5. print a summary (checks, invariants, transfer figures, pool status, timings) and exit 0, or 1
   when a check failed.

``--serve`` stops after step 3 and keeps the server running (open ``/docs``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from examples.bank_blog.app import DEFAULT_URL, configure, create_app, database_url
from examples.bank_blog.bootstrap import migrate, seed
from examples.bank_blog.scenario import ScenarioResult, run_scenario
from repom import retry
from repom.urls import mask_url


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bank_blog.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--serve", action="store_true", help="keep the server running (/docs)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=None, help="default: 8000 with --serve, else free"
    )
    parser.add_argument("--database-url", default=None, help="default: DATABASE_URL or ./.demo/")
    parser.add_argument("--transfers", type=int, default=400, help="concurrent transfers to run")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    parser.add_argument(
        "--users", type=int, default=12, help="users to seed into an empty database"
    )
    parser.add_argument("--keep", action="store_true", help="reuse the SQLite file of the last run")
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also write the figures as JSON to PATH"
    )
    return parser.parse_args(argv)


@contextlib.asynccontextmanager
async def serving(app: Any, host: str, port: int) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    """Run *app* with uvicorn in this event loop; yield its base URL (and the task serving it)
    once it accepts requests; stop it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during startup (see the log above)")
            await asyncio.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}", task
    finally:
        server.should_exit = True
        await task
        sock.close()


def fresh_sqlite(url: str) -> None:
    """Delete the demo's SQLite file (and its WAL files) so every run starts the same way."""
    path = Path(url.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def prepare(args: argparse.Namespace, out: Any) -> dict[str, Any]:
    url = database_url(args.database_url)
    if url == DEFAULT_URL and not args.keep and not args.serve:
        fresh_sqlite(url)
    config = configure(url)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    applied = await asyncio.to_thread(migrate)
    timings["migrate"] = time.perf_counter() - start
    start = time.perf_counter()
    seeded = await seed(users=args.users)
    timings["seed"] = time.perf_counter() - start
    out.print(f"[bold]database[/] {mask_url(config.url)}")
    out.print(
        "[bold]migrations[/] "
        + (", ".join(applied) if applied else "already at head")
        + f" ({timings['migrate'] * 1000:.0f} ms)"
    )
    if seeded is None:
        out.print("[bold]seed[/] skipped: the database already has users")
    else:
        out.print(
            f"[bold]seed[/] {seeded.users} users, {seeded.accounts} accounts, "
            f"{seeded.articles} articles, {seeded.total_balance_cents / 100:,.2f} EUR "
            f"({timings['seed'] * 1000:.0f} ms)"
        )
    return timings


def summary(result: ScenarioResult, retries: int, timings: dict[str, float], out: Any) -> None:
    from rich.table import Table

    table = Table(title="Scenario over HTTP", show_lines=False)
    table.add_column("", width=2)
    table.add_column("step")
    table.add_column("result")
    table.add_column("ms", justify="right")
    for check in result.checks:
        mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
        table.add_row(mark, check.name, check.detail, f"{check.ms:,.0f}")
    out.print(table)

    run = result.transfers
    figures = Table(title="Concurrent transfers (accounts locked in key order)")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    figures.add_row("requests", f"{run.attempted}")
    for status, count in sorted(run.statuses.items()):
        figures.add_row(f"  HTTP {status}", f"{count}")
    figures.add_row("transaction retries (server side)", f"{retries}")
    figures.add_row("retries after 503 + Retry-After (client)", f"{run.client_retries}")
    figures.add_row("money moved", f"{run.moved_cents / 100:,.2f} EUR")
    figures.add_row("throughput", f"{run.throughput:,.0f} req/s")
    figures.add_row(
        "latency p50 / p95 / max",
        f"{run.percentile(0.5):.1f} / "
        f"{run.percentile(0.95):.1f} / {max(run.latencies_ms, default=0):.1f} ms",
    )
    out.print(figures)

    health = result.health_after.get("databases", [{}])[0] if result.health_after else {}
    pool = health.get("pool", {})
    if pool:
        keys = ("pool_class", "pool_size", "max_overflow", "checked_out", "checked_in", "timeouts")
        out.print("[bold]pool[/] " + ", ".join(f"{k}={pool[k]}" for k in keys if k in pool))
    total = sum(timings.values())
    out.print(
        "[bold]timings[/] "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items())
        + f", total {total:.2f}s"
    )
    if result.ok:
        out.print("[bold green]All checks passed: money was neither created nor destroyed.[/]")
    else:
        failed = [check.name for check in result.checks if not check.ok]
        out.print(f"[bold red]{len(failed)} check(s) failed:[/] " + "; ".join(failed))


def write_figures(
    path: Path, result: ScenarioResult, retries: int, timings: dict[str, float]
) -> None:
    """The run's figures as JSON (read by ``bench.demo_runs``)."""
    import json

    run = result.transfers
    figures = {
        "ok": result.ok,
        "failed_checks": [check.name for check in result.checks if not check.ok],
        "transfers": run.attempted,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "server_retries": retries,
        "client_retries": run.client_retries,
        "throughput": run.throughput,
        "p50_ms": run.percentile(0.5),
        "p95_ms": run.percentile(0.95),
        "timings": timings,
    }
    path.write_text(json.dumps(figures, indent=2))


async def main_async(args: argparse.Namespace) -> int:
    from rich.console import Console

    out = Console()
    timings = await prepare(args, out)
    retries = 0

    def count_retry(attempt: int, error: BaseException) -> None:
        nonlocal retries
        retries += 1

    retry.retry_listeners.append(count_retry)
    port = args.port if args.port is not None else (8000 if args.serve else 0)
    try:
        start = time.perf_counter()
        async with serving(create_app(), args.host, port) as (base_url, server_task):
            timings["startup"] = time.perf_counter() - start
            if args.serve:
                out.print(f"[bold]serving[/] {base_url}  (API docs: {base_url}/docs, Ctrl+C stops)")
                await server_task  # until Ctrl+C (uvicorn handles the signal)
                return 0
            out.print(f"[bold]server[/] {base_url} (uvicorn, in this process)")
            start = time.perf_counter()
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
                result = await run_scenario(
                    client, transfers=args.transfers, concurrency=args.concurrency
                )
            timings["scenario"] = time.perf_counter() - start
    finally:
        retry.retry_listeners.remove(count_retry)
    summary(result, retries, timings, out)
    if args.json:
        write_figures(Path(args.json), result, retries, timings)
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down cleanly
        print("stopped")
        return 0 if args.serve else 130


if __name__ == "__main__":
    sys.exit(main())
