"""Counting that scales: page 1 of ``paginate`` over a large table with each ``count=`` mode, on
PostgreSQL with asyncpg, beside a keyset first page, raw SQLAlchemy and advanced-alchemy.

Variants (pages of ``--per-page`` rows ordered by the primary key, over ``--rows`` rows,
default 1,000,000, after ``ANALYZE``):

* ``keyset, first page`` -- the baseline: ``SELECT ... ORDER BY id LIMIT n+1``;
* ``SQLAlchemy select().limit()`` -- the hand-written LIMIT query, no total;
* ``paginate count="exact"`` -- the page and ``SELECT count(*)`` (the default);
* ``paginate count="estimated"`` -- the page (n+1 rows) and ``EXPLAIN (FORMAT JSON)``;
* ``paginate count="none"`` -- the page (n+1 rows) only;
* ``advanced-alchemy list_and_count`` -- its default (``count(*) OVER ()`` window).

Targets (issue 17 item 5): ``estimated`` and ``none`` <= 3x the keyset first page.

Each sample opens a session and times ``--calls`` calls (default 20); rounds are interleaved
(each round runs every variant once, rotating the order) and the ratio is the median over rounds
of the variant's time divided by the baseline's time in the same round.

Run: ``python -m bench.pagination [--rows N] [--rounds N] [--calls N] [--per-page N] [--url URL]``.
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
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, String, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.engine import build_async_engine
from repom.repository import AsyncRepository
from repom.urls import convert_to_async_uri

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "keyset, first page"


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_page_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    score: Mapped[int]
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


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


def table(title: str, times: dict[str, list[float]], notes: dict[str, str]) -> str:
    lines = [
        f"### {title}",
        "",
        f"| variant | median ms per page | ratio to {BASELINE} | total returned |",
        "|---|---:|---:|---|",
    ]
    for name, values in times.items():
        ratio = statistics.median(t / b for t, b in zip(values, times[BASELINE], strict=True))
        lines.append(
            f"| {name} | {statistics.median(values) * 1000:.3f} | {ratio:.2f}x | "
            f"{notes.get(name, '')} |"
        )
    return "\n".join(lines)


async def fill(engine: AsyncEngine, rows: int) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            text(
                "INSERT INTO bench_page_items (name, score, created) "
                "SELECT 'item ' || i, i % 1000, now() FROM generate_series(1, :n) AS i"
            ),
            {"n": rows},
        )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE bench_page_items"))


async def bench(engine: AsyncEngine, rows: int, rounds: int, calls: int, per_page: int) -> str:
    from advanced_alchemy.filters import LimitOffset, OrderBy
    from advanced_alchemy.repository import SQLAlchemyAsyncRepository

    class ItemRepo(SQLAlchemyAsyncRepository[Item]):
        model_type = Item

    maker = async_sessionmaker(engine, expire_on_commit=False)

    async def keyset(s: AsyncSession) -> Any:
        return await AsyncRepository(s, Item).keyset(limit=per_page)

    async def raw_limit(s: AsyncSession) -> Any:
        return list(await s.scalars(select(Item).order_by(Item.id).limit(per_page)))

    def paginate(mode: str) -> Callable[[AsyncSession], Awaitable[Any]]:
        async def call(s: AsyncSession) -> Any:
            return await AsyncRepository(s, Item).paginate(1, per_page, count=mode)  # type: ignore[arg-type]

        return call

    async def aa_list_and_count(s: AsyncSession) -> Any:
        return await ItemRepo(session=s).list_and_count(
            LimitOffset(limit=per_page, offset=0), OrderBy("id", "asc")
        )

    bodies: dict[str, Callable[[AsyncSession], Awaitable[Any]]] = {
        BASELINE: keyset,
        "SQLAlchemy select().limit() (no total)": raw_limit,
        'repom paginate count="exact"': paginate("exact"),
        'repom paginate count="estimated"': paginate("estimated"),
        'repom paginate count="none"': paginate("none"),
        "advanced-alchemy list_and_count": aa_list_and_count,
    }

    # what each variant returns (and a check that every variant reads the same page)
    notes: dict[str, str] = {}
    async with maker() as s:
        first = [i.id for i in (await keyset(s)).items]
        for name, body in bodies.items():
            result = await body(s)
            if isinstance(result, tuple):  # advanced-alchemy: (items, total)
                ids, notes[name] = [i.id for i in result[0]], f"{result[1]:,} (exact)"
            elif isinstance(result, list):
                ids, notes[name] = [i.id for i in result], "none"
            else:
                ids = [i.id for i in result.items]
                if getattr(result, "next_cursor", None) is not None:
                    notes[name] = "none (next cursor)"
                elif result.total is None:
                    notes[name] = f"none (has_next={result.has_next})"
                else:
                    kind = "estimate" if result.total_is_estimate else "exact"
                    notes[name] = f"{result.total:,} ({kind})"
            assert ids == first, name

    def timed(body: Callable[[AsyncSession], Awaitable[Any]]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            async with maker() as s:
                await s.connection()  # BEGIN outside the timing
                start = time.perf_counter()
                for _ in range(calls):
                    await body(s)
                return (time.perf_counter() - start) / calls

        return run

    times = await interleave({name: timed(body) for name, body in bodies.items()}, rounds)
    return table(
        f"page 1 ({per_page} rows, ordered by id) over {rows:,} rows",
        times,
        notes,
    )


async def main_async(args: argparse.Namespace) -> str:
    engine = build_async_engine(
        convert_to_async_uri(args.url), pool_size=2, max_overflow=0, pool_pre_ping=False
    )
    try:
        await fill(engine, args.rows)
        body = await bench(engine, args.rows, args.rounds, args.calls, args.per_page)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    finally:
        await engine.dispose()
    how = (
        f"`python -m bench.pagination --rows {args.rows} --rounds {args.rounds} "
        f"--calls {args.calls} --per-page {args.per_page}` (PostgreSQL, asyncpg; median of "
        f"{args.rounds} interleaved rounds, each sample {args.calls} calls in one session; "
        "ratio = median over rounds of variant / baseline in the same round)"
    )
    return f"## paginate counting (issue 17 item 5)\n\nRun: {how}\n\n{body}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--per-page", type=int, default=20)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv if argv is not None else [])
    report = asyncio.run(main_async(args))
    print(report)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "pagination.md").write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
