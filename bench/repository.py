"""Repositories on PostgreSQL with asyncpg: repom beside hand-written SQLAlchemy, raw asyncpg
COPY and advanced-alchemy, in one run, on one engine and the same rows.

Cases (the issue's targets in brackets):

* **bulk insert** of ``--rows`` rows (default 50,000) given as dicts, each variant in its own
  transaction on an emptied table: asyncpg ``copy_records_to_table`` (the baseline);
  ``bulk_create(returning="keys")`` [<= 1.5x]; ``bulk_create(method="copy", returning=None)``
  [<= 1.15x]; ``bulk_create(returning="keys", method="insert")`` (unnest); SQLAlchemy Core
  ``insert().returning(id)`` (insertmanyvalues); ORM ``add_all`` + flush; advanced-alchemy
  ``add_many``.
* **unit of work**: session, ``get_by_id``, change a field, ``update``, commit, close; beside the
  same with ``session.get`` + commit [<= 1.10x], and advanced-alchemy ``get`` + ``update``.
* **keyset depth**: ``keyset`` page of 50 at depth 100,000 vs the first page [<= 1.5x], with
  ``paginate`` (OFFSET) at the same depth beside it.
* the SQL that ``exists`` and ``count`` send.

Rounds are interleaved (each round runs every variant once, rotating the order) and the ratio is
the median over rounds of the variant's time divided by the baseline's time in the same round, so
slow drifts of a shared machine cancel out.  Commits use ``synchronous_commit=off`` so that WAL
flushes on a shared server do not drown the signal.

Run: ``python -m bench.repository [--rows N] [--rounds N] [--uow N] [--depth N] [--url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Float, Index, String, event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.engine import build_async_engine
from repom.repository import AsyncRepository
from repom.urls import convert_to_async_uri

RESULTS = Path(__file__).resolve().parent / "results"
ASYNC_ARGS = {"server_settings": {"synchronous_commit": "off"}}


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_repo_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[float] = mapped_column(Float)
    qty: Mapped[int]
    active: Mapped[bool]
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Deep(Base):
    __tablename__ = "bench_repo_deep"
    id: Mapped[int] = mapped_column(primary_key=True)
    score: Mapped[int]
    name: Mapped[str] = mapped_column(String(40))
    __table_args__ = (Index("ix_bench_repo_deep_score_id", "score", "id"),)


COLUMNS = ["name", "price", "qty", "active", "created"]


def make_rows(n: int) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    return [
        {"name": f"row {i}", "price": i * 0.25, "qty": i, "active": i % 2 == 0, "created": now}
        for i in range(n)
    ]


# --------------------------------------------------------------------------- helpers


def median_ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    return {
        name: statistics.median(t / b for t, b in zip(values, times[base], strict=True))
        for name, values in times.items()
    }


def table(title: str, times: dict[str, list[float]], base: str, unit: str, scale: float) -> str:
    ratios = median_ratios(times, base)
    lines = [
        f"### {title}",
        "",
        f"| variant | median {unit} | ratio to {base} |",
        "|---|---:|---:|",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values) * scale:.2f} | {ratios[name]:.2f}x |")
    return "\n".join(lines)


async def interleave(
    variants: dict[str, Callable[[], Awaitable[float]]], rounds: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(await variants[name]())
    return times


# --------------------------------------------------------------------------- bulk insert


async def bench_bulk(engine: AsyncEngine, rows: list[dict[str, Any]], rounds: int) -> str:
    maker = async_sessionmaker(engine, expire_on_commit=False)

    async def truncate() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE bench_repo_rows RESTART IDENTITY"))

    async def timed(body: Callable[[AsyncSession], Awaitable[Any]], expect: int) -> float:
        await truncate()
        async with maker() as session:
            start = time.perf_counter()
            result = await body(session)
            await session.commit()
            elapsed = time.perf_counter() - start
        if isinstance(result, list):
            assert len(result) == expect, (len(result), expect)
        return elapsed

    n = len(rows)

    async def asyncpg_copy(session: AsyncSession) -> int:
        conn = await session.connection()
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        records = list(map(itemgetter(*COLUMNS), rows))  # as tight as a hand-written COPY gets
        await raw.copy_records_to_table("bench_repo_rows", records=records, columns=COLUMNS)
        return n

    async def repom_keys(session: AsyncSession) -> list[Any]:
        return await AsyncRepository(session, Row).bulk_create(rows, returning="keys")

    async def repom_copy(session: AsyncSession) -> int:
        return await AsyncRepository(session, Row).bulk_create(rows, method="copy", returning=None)

    async def repom_insert(session: AsyncSession) -> list[Any]:
        return await AsyncRepository(session, Row).bulk_create(
            rows, returning="keys", method="insert"
        )

    async def core_returning(session: AsyncSession) -> list[Any]:
        result = await session.execute(
            insert(Row).returning(Row.id, sort_by_parameter_order=True), rows
        )
        return list(result.scalars())

    async def orm_add_all(session: AsyncSession) -> list[Any]:
        objs = [Row(**r) for r in rows]
        session.add_all(objs)
        await session.flush()
        return [o.id for o in objs]

    async def aa_add_many(session: AsyncSession) -> list[Any]:
        from advanced_alchemy.repository import SQLAlchemyAsyncRepository

        class RowRepo(SQLAlchemyAsyncRepository[Row]):
            model_type = Row

        objs = await RowRepo(session=session).add_many([Row(**r) for r in rows])
        return [o.id for o in objs]

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "asyncpg COPY": lambda: timed(asyncpg_copy, n),
        "repom bulk_create keys": lambda: timed(repom_keys, n),
        "repom bulk_create copy": lambda: timed(repom_copy, n),
        "repom bulk_create keys, method=insert": lambda: timed(repom_insert, n),
        "SQLAlchemy Core insert().returning": lambda: timed(core_returning, n),
        "SQLAlchemy ORM add_all": lambda: timed(orm_add_all, n),
        "advanced-alchemy add_many": lambda: timed(aa_add_many, n),
    }
    times = await interleave(variants, rounds)
    await truncate()
    title = f"bulk insert of {n:,} rows (each variant in its own transaction, commit included)"
    return table(title, times, "asyncpg COPY", "ms", 1000)


# --------------------------------------------------------------------------- unit of work


async def bench_uow(engine: AsyncEngine, count: int, rounds: int) -> str:
    maker = async_sessionmaker(engine, expire_on_commit=False)
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE bench_repo_rows RESTART IDENTITY"))
    async with maker() as session:
        await AsyncRepository(session, Row).bulk_create(make_rows(count), returning=None)
        await session.commit()
    ids = list(range(1, count + 1))

    from advanced_alchemy.repository import SQLAlchemyAsyncRepository

    class RowRepo(SQLAlchemyAsyncRepository[Row]):
        model_type = Row

    async def handwritten() -> float:
        start = time.perf_counter()
        for i in ids:
            async with maker() as session:
                row = await session.get(Row, i)
                assert row is not None
                row.qty += 1
                await session.commit()
        return time.perf_counter() - start

    async def repom() -> float:
        start = time.perf_counter()
        for i in ids:
            async with maker() as session:
                repo = AsyncRepository(session, Row)
                row = await repo.get_by_id(i)
                assert row is not None
                row.qty += 1
                await repo.update(row)
                await session.commit()
        return time.perf_counter() - start

    async def advanced_alchemy() -> float:
        start = time.perf_counter()
        for i in ids:
            async with maker() as session:
                repo = RowRepo(session=session)
                row = await repo.get(i)
                row.qty += 1
                await repo.update(row)
                await session.commit()
        return time.perf_counter() - start

    times = await interleave(
        {
            "SQLAlchemy session.get + commit": handwritten,
            "repom get_by_id + update + commit": repom,
            "advanced-alchemy get + update + commit": advanced_alchemy,
        },
        rounds,
    )
    per_op = {k: [t / count for t in v] for k, v in times.items()}
    return table(
        f"unit of work ({count} per batch: session, get by id, change, update, commit)",
        per_op,
        "SQLAlchemy session.get + commit",
        "µs per unit",
        1e6,
    )


# --------------------------------------------------------------------------- keyset depth


async def bench_keyset(engine: AsyncEngine, depth: int, rounds: int) -> str:
    maker = async_sessionmaker(engine, expire_on_commit=False)
    per_page = 50
    depth = max(per_page, depth - depth % per_page)  # a page boundary, for paginate beside it
    total = depth * 2
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE bench_repo_deep RESTART IDENTITY"))
    async with maker() as session:
        await AsyncRepository(session, Deep).bulk_create(
            ({"score": i % 1000, "name": f"n{i}"} for i in range(total)), returning=None
        )
        await session.commit()
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE bench_repo_deep"))
    order = ["score"]  # + the primary key as tie-breaker
    async with maker() as session:
        repo = AsyncRepository(session, Deep)
        anchor = (await repo.list(order_by=["score", "id"], offset=depth - 1, limit=1))[0]
        cursor = repo.cursor_for(anchor, order_by=order)
        first = await repo.keyset(limit=per_page, order_by=order)
        deep = await repo.keyset(after=cursor, limit=per_page, order_by=order)
        offset_page = await repo.paginate(depth // per_page + 1, per_page, order_by=["score", "id"])
        assert [d.id for d in deep.items] == [d.id for d in offset_page.items]
        assert len(first.items) == per_page

    async def run(fn: Callable[[AsyncRepository[Deep]], Awaitable[Any]]) -> float:
        async with maker() as session:
            repo = AsyncRepository(session, Deep)
            start = time.perf_counter()
            for _ in range(20):
                await fn(repo)
            return (time.perf_counter() - start) / 20

    times = await interleave(
        {
            "keyset, first page": lambda: run(lambda r: r.keyset(limit=per_page, order_by=order)),
            f"keyset at depth {depth:,}": lambda: run(
                lambda r: r.keyset(after=cursor, limit=per_page, order_by=order)
            ),
            "paginate, first page": lambda: run(
                lambda r: r.paginate(1, per_page, order_by=["score", "id"])
            ),
            f"paginate at depth {depth:,}": lambda: run(
                lambda r: r.paginate(depth // per_page + 1, per_page, order_by=["score", "id"])
            ),
        },
        rounds,
    )
    return table(
        f"pages of {per_page} ordered by (score, id) over {total:,} rows",
        times,
        "keyset, first page",
        "ms per page",
        1000,
    )


# --------------------------------------------------------------------------- SQL shown


async def show_sql(engine: AsyncEngine) -> str:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with async_sessionmaker(engine)() as session:
            repo = AsyncRepository(session, Row)
            await repo.exists(name="row 1")
            await repo.count(active=True, qty__gte=10)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    lines = ["### SQL sent by exists() and count()", ""]
    lines += [f"- `{s}`" for s in seen if not s.startswith(("BEGIN", "select pg_", "SELECT pg_"))]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> str:
    url = convert_to_async_uri(args.url)
    engine = build_async_engine(
        url, connect_args=ASYNC_ARGS, pool_size=5, max_overflow=5, pool_pre_ping=False
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        parts = [
            f"## repository benchmark (PostgreSQL, asyncpg; median of {args.rounds} interleaved "
            "rounds)",
            "",
            await bench_bulk(engine, make_rows(args.rows), args.rounds),
            "",
            await bench_uow(engine, args.uow, args.rounds),
            "",
            await bench_keyset(engine, args.depth, args.rounds),
            "",
            await show_sql(engine),
        ]
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        return "\n".join(parts) + "\n"
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--uow", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print(report)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "repository.md").write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
