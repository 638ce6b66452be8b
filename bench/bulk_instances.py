"""``bulk_create`` of model instances on PostgreSQL (asyncpg) beside raw COPY and the dict path.

Variants, each in its own transaction on an emptied table, commit included: asyncpg
``copy_records_to_table`` of the same rows (the baseline); ``bulk_create(dicts,
returning="keys")``; ``bulk_create(instances)`` (the row path for plain instances, objects come
back persistent) [<= 2x]; ORM ``add_all`` + flush (what instances went through before).
Instances are built inside the timed body for the repom and ORM variants, as a caller would.

Run: ``python -m bench.bulk_instances [--rows N] [--rounds N] [--url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bench.repository import ASYNC_ARGS, COLUMNS, Base, Row, interleave, make_rows, table
from repom.engine import build_async_engine
from repom.repository import AsyncRepository
from repom.urls import convert_to_async_uri


async def bench(engine: AsyncEngine, rows: list[dict[str, Any]], rounds: int) -> str:
    maker = async_sessionmaker(engine, expire_on_commit=False)
    n = len(rows)

    async def timed(body: Callable[[AsyncSession], Awaitable[Any]]) -> float:
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE bench_repo_rows RESTART IDENTITY"))
        async with maker() as session:
            start = time.perf_counter()
            result = await body(session)
            await session.commit()
            elapsed = time.perf_counter() - start
        if isinstance(result, list):
            assert len(result) == n, (len(result), n)
        return elapsed

    async def asyncpg_copy(session: AsyncSession) -> int:
        conn = await session.connection()
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        records = [tuple(r[c] for c in COLUMNS) for r in rows]
        await raw.copy_records_to_table("bench_repo_rows", records=records, columns=COLUMNS)
        return n

    async def repom_dicts(session: AsyncSession) -> list[Any]:
        return await AsyncRepository(session, Row).bulk_create(rows, returning="keys")

    async def repom_instances(session: AsyncSession) -> list[Any]:
        objs = [Row(**r) for r in rows]
        made = await AsyncRepository(session, Row).bulk_create(objs)
        assert made[-1].id == n and not session.dirty
        return made

    async def orm_add_all(session: AsyncSession) -> list[Any]:
        objs = [Row(**r) for r in rows]
        session.add_all(objs)
        await session.flush()
        return objs

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "asyncpg COPY": lambda: timed(asyncpg_copy),
        "repom bulk_create dicts, keys": lambda: timed(repom_dicts),
        "repom bulk_create instances": lambda: timed(repom_instances),
        "SQLAlchemy ORM add_all": lambda: timed(orm_add_all),
    }
    times = await interleave(variants, rounds)
    title = f"bulk insert of {n:,} model instances (PostgreSQL, asyncpg; commit included)"
    return table(title, times, "asyncpg COPY", "ms", 1000)


async def main_async(args: argparse.Namespace) -> str:
    engine = build_async_engine(
        convert_to_async_uri(args.url), connect_args=ASYNC_ARGS, pool_pre_ping=False
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        report = await bench(engine, make_rows(args.rows), args.rounds)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        return report
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
    )
    args = parser.parse_args(argv)
    print(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
