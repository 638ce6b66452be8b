"""What a unit of work costs with each library's *defaults*, the pool checkout included
(PostgreSQL, sync psycopg and async asyncpg; issue 17, item 3).

The unit of work: open a session, ``get`` a row by primary key, change it, commit, close (SELECT,
UPDATE, COMMIT).  Unlike :mod:`bench.monitoring_overhead`, each variant has its *own* engine,
built the way a user of that library gets it:

* ``SQLAlchemy (defaults)`` -- ``create_engine(url)`` / ``create_async_engine(url)`` and a
  plain ``sessionmaker`` (``pool_pre_ping=False``): the baseline;
* ``repom (defaults)`` -- ``Database(url)`` / ``AsyncDatabase(url)`` with ``RepomConfig()``'s
  defaults (``pool_pre_ping=True``, ``pool_ping_idle=10``: only connections idle for more than
  10 s are pinged) and its session factory;
* ``repom, pool_ping_idle=0`` -- repom pinging on every checkout, the behaviour before issue 17;
* ``SQLAlchemy, pool_pre_ping=True`` -- for reference: SQLAlchemy's own ping on every checkout;
* ``advanced-alchemy (defaults)`` -- ``SQLAlchemySyncConfig(connection_string=url)`` /
  ``SQLAlchemyAsyncConfig(...)`` and its session maker.

Every engine gets one extra connect argument, ``synchronous_commit=off``, so that WAL flushes on
a shared server do not drown the signal.  Rounds are interleaved (each round runs a batch of every
variant, in a rotating order), and a variant's ratio is the median over rounds of its time divided
by the baseline's time in the same round.

Run: ``python -m bench.checkout [--rounds N] [--batch N] [--url URL] [--no-write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from repom.config import RepomConfig
from repom.database import AsyncDatabase, Database
from repom.urls import convert_to_async_uri, convert_to_sync_uri

RESULTS = Path(__file__).resolve().parent / "results"
SYNC_ARGS = {"options": "-c synchronous_commit=off"}
ASYNC_ARGS = {"server_settings": {"synchronous_commit": "off"}}
BASELINE = "SQLAlchemy (defaults)"


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_checkout_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    counter: Mapped[int]
    name: Mapped[str]


def sync_batch(maker: Any, ids: list[int]) -> None:
    for pk in ids:
        with maker() as session:
            item = session.get(Item, pk)
            item.counter += 1
            session.commit()


async def async_batch(maker: Any, ids: list[int]) -> None:
    for pk in ids:
        async with maker() as session:
            item = await session.get(Item, pk)
            item.counter += 1
            await session.commit()


def _summarise(times: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    base = times[BASELINE]
    return {
        name: (
            statistics.median(values),
            statistics.median(t / b for t, b in zip(values, base, strict=True)),
        )
        for name, values in times.items()
    }


def measure_sync(makers: dict[str, Any], ids: list[int], rounds: int) -> dict[str, Any]:
    names = list(makers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm up: pools, statement caches
        sync_batch(makers[name], ids)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            sync_batch(makers[name], ids)
            times[name].append((time.perf_counter() - start) / len(ids))
    return _summarise(times)


async def measure_async(makers: dict[str, Any], ids: list[int], rounds: int) -> dict[str, Any]:
    names = list(makers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        await async_batch(makers[name], ids)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            await async_batch(makers[name], ids)
            times[name].append((time.perf_counter() - start) / len(ids))
    return _summarise(times)


def _seed(url: str, n: int) -> list[int]:
    engine = create_engine(url)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(Item),
                [{"id": i, "counter": 0, "name": f"item {i}"} for i in range(1, n + 1)],
            )
    finally:
        engine.dispose()
    return list(range(1, n + 1))


def _drop(url: str) -> None:
    engine = create_engine(url)
    try:
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


def _rows(driver: str, results: dict[str, tuple[float, float]]) -> list[str]:
    lines = []
    for name, (median, ratio) in results.items():
        lines.append(f"| {driver} | {name} | {median * 1e6:.0f} | {ratio:.3f}x |")
    return lines


def run_sync(url: str, ids: list[int], rounds: int) -> list[str]:
    from advanced_alchemy.config import EngineConfig, SQLAlchemySyncConfig

    plain = create_engine(url, connect_args=SYNC_ARGS)
    pinging = create_engine(url, connect_args=SYNC_ARGS, pool_pre_ping=True)
    repom = Database(url, config=RepomConfig(), connect_args=SYNC_ARGS)
    repom_every = Database(url, config=RepomConfig(pool_ping_idle=0), connect_args=SYNC_ARGS)
    aa = SQLAlchemySyncConfig(
        connection_string=url, engine_config=EngineConfig(connect_args=SYNC_ARGS)
    )
    makers = {
        BASELINE: sessionmaker(plain),
        "repom (defaults)": repom.session_factory,
        "repom, pool_ping_idle=0": repom_every.session_factory,
        "SQLAlchemy, pool_pre_ping=True": sessionmaker(pinging),
        "advanced-alchemy (defaults)": aa.create_session_maker(),
    }
    try:
        return _rows("psycopg (sync)", measure_sync(makers, ids, rounds))
    finally:
        for engine in (plain, pinging, repom.engine, repom_every.engine, aa.get_engine()):
            engine.dispose()


async def run_async(url: str, ids: list[int], rounds: int) -> list[str]:
    from advanced_alchemy.config import EngineConfig, SQLAlchemyAsyncConfig

    plain = create_async_engine(url, connect_args=ASYNC_ARGS)
    pinging = create_async_engine(url, connect_args=ASYNC_ARGS, pool_pre_ping=True)
    repom = AsyncDatabase(url, config=RepomConfig(), connect_args=ASYNC_ARGS)
    repom_every = AsyncDatabase(url, config=RepomConfig(pool_ping_idle=0), connect_args=ASYNC_ARGS)
    aa = SQLAlchemyAsyncConfig(
        connection_string=url, engine_config=EngineConfig(connect_args=ASYNC_ARGS)
    )
    makers: dict[str, Callable[[], Any]] = {
        BASELINE: async_sessionmaker(plain),
        "repom (defaults)": repom.session_factory,
        "repom, pool_ping_idle=0": repom_every.session_factory,
        "SQLAlchemy, pool_pre_ping=True": async_sessionmaker(pinging),
        "advanced-alchemy (defaults)": aa.create_session_maker(),
    }
    try:
        return _rows("asyncpg (async)", await measure_async(makers, ids, rounds))
    finally:
        disposals: list[Awaitable[None]] = [
            e.dispose() for e in (plain, pinging, repom.engine, repom_every.engine, aa.get_engine())
        ]
        for disposal in disposals:
            await disposal


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.checkout")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--batch", type=int, default=20, help="units of work per batch")
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv if argv is not None else [])
    sync_url = convert_to_sync_uri(args.url)
    if sync_url.startswith("postgresql://"):
        sync_url = "postgresql+psycopg://" + sync_url.removeprefix("postgresql://")
    async_url = convert_to_async_uri(args.url)

    ids = _seed(sync_url, args.batch)
    try:
        rows = run_sync(sync_url, ids, args.rounds)
        rows += asyncio.run(run_async(async_url, ids, args.rounds))
    finally:
        _drop(sync_url)
    lines = [
        "Unit of work = session, get by primary key, change, commit, close (PostgreSQL 15, "
        "`synchronous_commit=off` on every engine).  Each variant has its own engine with its "
        "library's defaults: SQLAlchemy 2.0 `create_engine(url)` (QueuePool 5+10, "
        "`pool_pre_ping=False`); repom `Database(url)` with `RepomConfig()` (QueuePool 10+20, "
        "`pool_pre_ping=True`, `pool_ping_idle=10` s: connections idle in the pool for more than "
        "10 s are pinged at checkout, none on a busy pool); advanced-alchemy "
        "`SQLAlchemy(A)syncConfig(connection_string=url)`.  "
        f"{args.rounds} interleaved rounds of {args.batch} units per variant; `ratio` is the "
        "median over rounds of the variant's time / the baseline's (SQLAlchemy defaults) time "
        "in the same round.  Target: repom (defaults) <= 1.05x.",
        "",
        f"Command: `python -m bench.checkout --rounds {args.rounds} --batch {args.batch}`",
        "",
        "| driver | variant | µs per unit (median) | ratio |",
        "|---|---|---:|---:|",
        *rows,
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "checkout.md").write_text(table + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
