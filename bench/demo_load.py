"""Load check of the demo service: N concurrent HTTP clients, a connection pool smaller than N.

The same three endpoints, with the same models, database and SQL, written three ways:

* ``repom`` -- the demo itself (``examples.bank_blog.app.create_app``): ``AsyncDbSession``
  (commit before the response), repositories, ``@transactional(SERIALIZABLE, retries=...)``;
* ``SQLAlchemy`` -- plain FastAPI + SQLAlchemy: a ``yield`` session dependency, explicit
  commits, a hand-written retry loop for serialization failures;
* ``advanced-alchemy`` -- its FastAPI extension (``commit_mode="autocommit"``) and repository,
  the same hand-written retry loop for the transfer.

Endpoints: ``GET /articles`` (first page of published articles), ``GET /accounts/{id}`` and
``POST /transfers`` (SERIALIZABLE read-check-write).  Each app runs in its own uvicorn process
(one worker); the clients run in this process over real HTTP.  Two runs per app:

1. *queueing* -- pool of ``--pool`` connections (no overflow) and a generous pool timeout: the
   clients queue for connections; no request may fail;
2. *tight* -- the same pool with a pool timeout of ``--tight-timeout`` seconds: requests that
   wait longer must fail *cleanly*.  For repom the only failure allowed is ``503`` with
   ``Retry-After`` (``pool_exhausted``); the others answer what their stack gives.

Run: ``python -m bench.demo_load [--url URL] [--clients 64] [--pool 8] [--requests 2400]``
(PostgreSQL: ``REPOM_BENCH_PG_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``; the tables
live in a schema of their own, dropped at the end).  Exit code 1 when repom broke the rule.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._meta import stamp
from examples.bank_blog.models import Account, Article, Transfer
from examples.bank_blog.schemas import AccountOut, ArticleOut, TransferIn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
APPS = ("repom", "SQLAlchemy", "advanced-alchemy")
SCHEMA = "bench_demo_load"
UVICORN = [sys.executable, "-m", "uvicorn", "bench.demo_load:app_factory", "--factory"]
RETRYABLE = {"40001", "40P01"}


# =========================================================================== the three apps
# Built in the server process by ``app_factory`` from DEMO_LOAD_* environment variables.


def _settings() -> dict[str, Any]:
    return {
        "url": os.environ["DEMO_LOAD_URL"],
        "schema": os.environ.get("DEMO_LOAD_SCHEMA") or None,
        "pool": int(os.environ["DEMO_LOAD_POOL"]),
        "timeout": float(os.environ["DEMO_LOAD_TIMEOUT"]),
    }


def _async_url(url: str) -> str:
    from repom.urls import convert_to_async_uri

    return convert_to_async_uri(url)


def _connect_args(schema: str | None) -> dict[str, Any]:
    return {"server_settings": {"search_path": schema}} if schema else {}


def _pool_args(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "pool_size": settings["pool"],
        "max_overflow": 0,
        "pool_timeout": settings["timeout"],
        "pool_pre_ping": True,  # repom's default, and what the seeds recommend for production
        "connect_args": _connect_args(settings["schema"]),
    }


def repom_app() -> Any:
    from examples.bank_blog.app import configure, create_app
    from repom.database import AsyncDatabase, set_async_database

    settings = _settings()
    configure(settings["url"], pool_size=settings["pool"], max_overflow=0)
    set_async_database(AsyncDatabase(_async_url(settings["url"]), **_pool_args(settings)))
    return create_app()


def _is_retryable(error: BaseException) -> bool:
    orig = getattr(error, "orig", None)
    return (
        getattr(orig, "sqlstate", None) in RETRYABLE
        or getattr(getattr(orig, "__cause__", None), "sqlstate", None) in RETRYABLE
    )


async def _transfer_with_retries(maker: Any, data: Any) -> Any:
    """The hand-written version of ``@transactional(SERIALIZABLE, retries=12)``."""
    from sqlalchemy import select
    from sqlalchemy.exc import DBAPIError

    for attempt in range(13):
        try:
            async with maker() as session:
                await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                wanted = (data.from_account_id, data.to_account_id)
                rows = await session.scalars(select(Account).where(Account.id.in_(wanted)))
                found = {a.id: a for a in rows}
                if len(found) != 2:
                    return 404, {"detail": "account not found"}
                source, target = found[data.from_account_id], found[data.to_account_id]
                if source.balance_cents < data.amount_cents:
                    return 409, {"detail": "insufficient funds"}
                source.balance_cents -= data.amount_cents
                target.balance_cents += data.amount_cents
                ledger = Transfer(
                    from_account_id=source.id,
                    to_account_id=target.id,
                    amount_cents=data.amount_cents,
                    memo=data.memo,
                )
                session.add(ledger)
                await session.flush()
                body = {"id": ledger.id, "amount_cents": ledger.amount_cents}
                await session.commit()
                return 201, body
        except DBAPIError as error:
            if not _is_retryable(error) or attempt == 12:
                raise
            await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
    raise AssertionError("unreachable")


def sqlalchemy_app() -> Any:
    from collections.abc import AsyncIterator

    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import JSONResponse
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    settings = _settings()
    engine = create_async_engine(_async_url(settings["url"]), **_pool_args(settings))
    maker = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    async def get_db() -> AsyncIterator[AsyncSession]:
        async with maker() as session:
            yield session

    @app.get("/articles")
    async def articles(session: AsyncSession = Depends(get_db)) -> dict[str, Any]:
        rows = await session.scalars(
            select(Article)
            .where(Article.published.is_(True))
            .order_by(Article.created_at.desc(), Article.id.desc())
            .limit(20)
        )
        return {"items": [ArticleOut.model_validate(a) for a in rows], "next_cursor": None}

    @app.get("/accounts/{account_id}")
    async def account(account_id: int, session: AsyncSession = Depends(get_db)) -> AccountOut:
        found = await session.get(Account, account_id)
        if found is None:
            raise HTTPException(404, "account not found")
        return AccountOut.model_validate(found)

    @app.post("/transfers", status_code=201)
    async def transfer(data: TransferIn) -> Any:
        status, body = await _transfer_with_retries(maker, data)
        return JSONResponse(body, status_code=status)

    return app


def advanced_alchemy_app() -> Any:
    from advanced_alchemy.config import EngineConfig
    from advanced_alchemy.extensions.fastapi import AdvancedAlchemy, SQLAlchemyAsyncConfig
    from advanced_alchemy.filters import LimitOffset
    from advanced_alchemy.repository import SQLAlchemyAsyncRepository
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import JSONResponse
    from sqlalchemy.ext.asyncio import AsyncSession

    class ArticleRepo(SQLAlchemyAsyncRepository[Article]):
        model_type = Article

    class AccountRepo(SQLAlchemyAsyncRepository[Account]):
        model_type = Account

    settings = _settings()
    pool = _pool_args(settings)
    config = SQLAlchemyAsyncConfig(
        connection_string=_async_url(settings["url"]),
        commit_mode="autocommit",
        engine_config=EngineConfig(
            pool_size=pool["pool_size"],
            max_overflow=0,
            pool_timeout=pool["pool_timeout"],
            pool_pre_ping=True,
            connect_args=pool["connect_args"],
        ),
    )
    app = FastAPI()
    alchemy = AdvancedAlchemy(config=config, app=app)
    Session = Depends(alchemy.provide_session())

    @app.get("/articles")
    async def articles(session: AsyncSession = Session) -> dict[str, Any]:
        rows = await ArticleRepo(session=session).get_many(
            Article.published.is_(True),
            LimitOffset(limit=20, offset=0),
            order_by=[(Article.created_at, True), (Article.id, True)],
        )
        return {"items": [ArticleOut.model_validate(a) for a in rows], "next_cursor": None}

    @app.get("/accounts/{account_id}")
    async def account(account_id: int, session: AsyncSession = Session) -> AccountOut:
        found = await AccountRepo(session=session).get_one_or_none(id=account_id)
        if found is None:
            raise HTTPException(404, "account not found")
        return AccountOut.model_validate(found)

    @app.post("/transfers", status_code=201)
    async def transfer(data: TransferIn) -> Any:
        status, body = await _transfer_with_retries(config.create_session_maker(), data)
        return JSONResponse(body, status_code=status)

    return app


def app_factory() -> Any:
    """uvicorn ``--factory`` entry point: the app named by ``DEMO_LOAD_APP``."""
    return {
        "repom": repom_app,
        "SQLAlchemy": sqlalchemy_app,
        "advanced-alchemy": advanced_alchemy_app,
    }[os.environ["DEMO_LOAD_APP"]]()


# =========================================================================== the load


@dataclass
class Run:
    app: str
    label: str
    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    def failures(self) -> Counter[str]:
        return Counter({k: v for k, v in self.statuses.items() if not k.startswith("2")})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, app: str, url: str, schema: str | None, pool: int, timeout: float):
        self.port = _free_port()
        env = dict(os.environ)
        env.update(
            DEMO_LOAD_APP=app,
            DEMO_LOAD_URL=url,
            DEMO_LOAD_SCHEMA=schema or "",
            DEMO_LOAD_POOL=str(pool),
            DEMO_LOAD_TIMEOUT=str(timeout),
            PYTHONPATH=str(ROOT),
        )
        for name in ("DATABASE_URL", "REPOM_DATABASE_URL"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [*UVICORN, "--port", str(self.port), "--log-level", "error", "--no-access-log"],
            cwd=ROOT,
            env=env,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    await client.get(f"{self.base}/openapi.json")
                    return  # it answers
                except httpx.TransportError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server for {self.base} did not start")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.process.kill()


async def drive(base: str, run: Run, *, clients: int, total: int, accounts: int, seed: int) -> None:
    rng = random.Random(seed)
    plan: list[tuple[str, str, Any]] = []
    for _ in range(total):
        roll = rng.random()
        if roll < 0.4:
            plan.append(("GET", "/articles", None))
        elif roll < 0.8:
            plan.append(("GET", f"/accounts/{rng.randint(1, accounts)}", None))
        else:
            source, target = rng.sample(range(1, accounts + 1), 2)
            body = {"from_account_id": source, "to_account_id": target, "amount_cents": 1}
            plan.append(("POST", "/transfers", body))
    queue = iter(plan)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for method, path, body in queue:
            start = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
                status = str(response.status_code)
                if response.status_code == 503 and "retry-after" in response.headers:
                    status += "+Retry-After"
            except httpx.HTTPError as error:
                status = type(error).__name__
            run.latencies.append(time.perf_counter() - start)
            run.statuses[status] += 1

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        run.seconds = time.perf_counter() - start
    run.requests = total


# =========================================================================== setup


def prepare(url: str, users: int) -> tuple[str | None, int]:
    """A fresh schema (PostgreSQL) or file (SQLite), migrated and seeded; returns the schema
    and the number of accounts."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from examples.bank_blog.bootstrap import migrate, seed
    from repom.database import AsyncDatabase

    schema = SCHEMA if url.startswith("postgresql") else None
    if schema:
        admin = create_engine(url, poolclass=NullPool)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
    options = {"options": f"-csearch_path={schema}"} if schema else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=options)
    with engine.connect() as connection:
        migrate(connection=connection)
    engine.dispose()

    async def fill() -> None:
        db = AsyncDatabase(_async_url(url), connect_args=_connect_args(schema))
        try:
            await seed(db, users=users)
        finally:
            await db.dispose()

    asyncio.run(fill())
    return schema, users


def cleanup(url: str, schema: str | None) -> None:
    if not schema:
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


# =========================================================================== report


def table(runs: list[Run], label: str) -> str:
    chosen = [r for r in runs if r.label == label]
    base = statistics.median(r.throughput for r in chosen if r.app == "SQLAlchemy") or 1.0
    lines = [
        "| app | requests | req/s (median) | vs SQLAlchemy | p50 ms | p95 ms | statuses |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for app in APPS:
        mine = [r for r in chosen if r.app == app]
        if not mine:
            continue
        rps = statistics.median(r.throughput for r in mine)
        statuses: Counter[str] = Counter()
        for r in mine:
            statuses.update(r.statuses)
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        lines.append(
            f"| {app} | {sum(r.requests for r in mine)} | {rps:,.0f} | {rps / base:.2f}x | "
            f"{statistics.median(r.pct(0.5) for r in mine):.1f} | "
            f"{statistics.median(r.pct(0.95) for r in mine):.1f} | {shown} |"
        )
    return "\n".join(lines)


def repom_rule_holds(runs: list[Run]) -> tuple[bool, str]:
    """repom: nothing fails while queueing; under the tight timeout only 503 + Retry-After."""
    for run in runs:
        if run.app != "repom":
            continue
        bad = {k: v for k, v in run.failures().items() if k != "503+Retry-After"}
        if run.label == "queueing" and run.failures():
            return False, f"queueing run failed requests: {dict(run.failures())}"
        if bad:
            return False, f"{run.label} run: failures other than 503+Retry-After: {bad}"
    return True, "repom: no failure while queueing; only 503 + Retry-After past the pool timeout"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_load", description=__doc__)
    default_url = os.environ.get("REPOM_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--url", default=default_url)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2400, help="per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", type=int, default=200, help="users/accounts to seed")
    parser.add_argument("--timeout", type=float, default=30.0, help="pool timeout, queueing run")
    parser.add_argument("--tight-timeout", type=float, default=0.05)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv if argv is not None else [])  # `python -m bench` passes none
    if args.pool >= args.clients:
        parser.error("--pool must be smaller than --clients")

    from repom.urls import convert_to_sync_uri

    url = convert_to_sync_uri(args.url)
    schema, accounts = prepare(url, args.users)
    runs: list[Run] = []
    try:
        plans = [("queueing", args.timeout, args.requests, round_) for round_ in range(args.rounds)]
        plans.append(("tight", args.tight_timeout, max(1, args.requests // 2), 0))
        for label, timeout, total, round_ in plans:
            order = APPS[round_ % 3 :] + APPS[: round_ % 3]  # rotate who goes first
            for app in order:
                server = Server(app, url, schema, args.pool, timeout)
                try:
                    asyncio.run(server.wait_ready())
                    run = Run(app, label)
                    asyncio.run(
                        drive(
                            server.base,
                            run,
                            clients=args.clients,
                            total=total,
                            accounts=accounts,
                            seed=round_,
                        )
                    )
                    runs.append(run)
                    print(
                        f"{label:9} {app:17} {run.throughput:8,.0f} req/s  {dict(run.statuses)}",
                        flush=True,
                    )
                finally:
                    server.stop()
    finally:
        cleanup(url, schema)

    ok, verdict = repom_rule_holds(runs)
    from repom.urls import mask_url

    report = "\n".join(
        [
            f"Demo service under load: {args.clients} concurrent clients, pool of {args.pool} "
            f"connections (no overflow), {mask_url(url).split('://')[0]}, one uvicorn worker; "
            "40% GET /articles, 40% GET /accounts/{id}, 20% POST /transfers (SERIALIZABLE).",
            "",
            f"Queueing (pool timeout {args.timeout:g} s), {args.rounds} round(s) of "
            f"{args.requests} requests:",
            "",
            table(runs, "queueing"),
            "",
            f"Tight pool timeout ({args.tight_timeout:g} s), {max(1, args.requests // 2)} "
            "requests:",
            "",
            table(runs, "tight"),
            "",
            ("OK: " if ok else "FAILED: ") + verdict,
            "",
            f"Command: `python -m bench.demo_load --clients {args.clients} --pool {args.pool} "
            f"--requests {args.requests} --rounds {args.rounds}`",
            "",
            stamp({"driver": url.split("://")[0], "app pool": args.pool, "clients": args.clients}),
        ]
    )
    print()
    print(report)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "demo_load.md").write_text(report + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
