"""``bulk_create`` at bulk speed on PostgreSQL (asyncpg): model instances and generators, beside
raw asyncpg COPY, SQLAlchemy and advanced-alchemy, in one run on the same rows.

Case 1, **model instances** (``--rows``, default 50,000) [target: ``bulk_create`` <= 2x COPY]:

* ``asyncpg COPY`` -- the baseline: ``copy_records_to_table`` of the same rows (the record
  tuples are built inside the timing, with ``operator.itemgetter``);
* ``build the instances`` -- ``Row(**row)`` for every row and nothing else: what a caller pays
  before any of the writes below (shown so that the writes can be compared without it);
* ``repom bulk_create(instances)`` -- instances built before the timing; they come back
  persistent, with their keys, in the identity map;
* ``repom build + bulk_create`` -- the same with the instances built inside the timing;
* ``SQLAlchemy ORM add_all`` + flush, ``advanced-alchemy add_many`` -- instances built before the
  timing;
* ``SQLAlchemy Core insert().returning(id)`` -- the rows as dicts (insertmanyvalues).

Case 2, **a generator** of ``--gen-rows`` dicts (default 1,000,000) [target: <= 1.15x COPY]:
each variant reads a fresh generator (the same function) once, so the cost of producing the rows
is in every time.

* ``asyncpg COPY`` -- the baseline: ``copy_records_to_table`` fed from the generator
  (``map(itemgetter(*columns), rows)``);
* ``repom bulk_create(generator, returning=None)`` and ``returning="keys"``;
* ``SQLAlchemy Core insert`` -- executemany of chunks of 10,000 rows;
* ``advanced-alchemy add_many`` -- chunks of 10,000 instances.

The last two take minutes at a million rows: they run in the first ``--slow-rounds`` rounds only
(default 1) and their ratio is taken over those rounds.

Every variant runs in its own transaction on an emptied table, commit included, and starts
after a full garbage collection (so that none pays for the garbage of another, or of building
its input: the garbage collector runs during a timing only because of that variant's own
allocations).  Rounds are
interleaved (each round runs every variant once, rotating the order) and a ratio is the median
over rounds of the variant's time divided by the baseline's time in the same round.  The table
also gives the CPU time of the benchmark process (the client: Python, the driver's encoding) and
its ratio, which a busy machine disturbs less than the wall time.

Run: ``python -m bench.bulk_instances [--rows N] [--rounds N] [--gen-rows N] [--gen-rounds N]
[--slow-rounds N] [--url URL] [--no-write]`` (or ``python -m bench bulk_instances``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bench._meta import stamp
from bench.repository import ASYNC_ARGS, COLUMNS, Base, Row, make_rows
from repom.engine import build_async_engine
from repom.repository import AsyncRepository
from repom.urls import convert_to_async_uri

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "asyncpg COPY"
CHUNK = 10_000  # chunks of the hand-written SQLAlchemy and advanced-alchemy generator variants


@dataclass
class Variant:
    """A timed body; *prepare* builds its input before the timing starts; *slow* variants run
    in the first ``slow_rounds`` rounds only."""

    body: Callable[[AsyncSession, Any], Awaitable[Any]]
    prepare: Callable[[], Any] = lambda: None
    slow: bool = False
    writes: bool = True  # False: nothing is written (no table to empty, no session needed)


def gen_rows(n: int) -> Iterator[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    for i in range(n):
        yield {
            "name": f"row {i}",
            "price": i * 0.25,
            "qty": i,
            "active": i % 2 == 0,
            "created": now,
        }


def chunked(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def raw_copy(session: AsyncSession, records: Any) -> None:
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    await raw.copy_records_to_table("bench_repo_rows", records=records, columns=COLUMNS)


def aa_repository(session: AsyncSession) -> Any:
    from advanced_alchemy.repository import SQLAlchemyAsyncRepository

    class RowRepo(SQLAlchemyAsyncRepository[Row]):
        model_type = Row

    return RowRepo(session=session)


Samples = dict[str, list[tuple[int, float, float]]]


async def run_case(
    engine: AsyncEngine, variants: dict[str, Variant], rounds: int, slow_rounds: int
) -> Samples:
    """Interleaved rounds; per variant the (round, seconds, CPU seconds of this process)
    samples it ran in."""
    maker = async_sessionmaker(engine, expire_on_commit=False)
    times: Samples = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            variant = variants[name]
            if variant.slow and r >= slow_rounds:
                continue
            if variant.writes:
                async with engine.begin() as conn:
                    await conn.execute(text("TRUNCATE bench_repo_rows RESTART IDENTITY"))
            data = variant.prepare()
            gc.collect()  # no variant pays for the garbage of another, or of preparing its input
            async with maker() as session:
                start, cpu = time.perf_counter(), time.process_time()
                await variant.body(session, data)
                if variant.writes:
                    await session.commit()
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            del data
            times[name].append((r, elapsed, cpu))
            if variant.writes:
                async with engine.connect() as conn:
                    count = (await conn.execute(text("SELECT count(*) FROM bench_repo_rows"))).one()
                assert count[0] > 0, name
    return times


def report(title: str, times: Samples, unit_rows: int) -> str:
    """The table: wall time (what the ratio is taken of) and this process's CPU time, which
    the other processes of a busy machine disturb less (the database server's share is not
    in it)."""
    base = {r: t for r, t, _ in times[BASELINE]}
    base_cpu = {r: c for r, _, c in times[BASELINE]}
    lines = [
        f"### {title}",
        "",
        f"| variant | rounds | median ms | µs per row | ratio to {BASELINE} | client CPU ms "
        "| client CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, samples in times.items():
        if not samples:
            continue
        median = statistics.median(t for _, t, _ in samples)
        ratio = statistics.median(t / base[r] for r, t, _ in samples)
        cpu = statistics.median(c for _, _, c in samples)
        cpu_ratio = statistics.median(c / base_cpu[r] for r, _, c in samples)
        lines.append(
            f"| {name} | {len(samples)} | {median * 1000:.1f} | {median * 1e6 / unit_rows:.2f} "
            f"| {ratio:.2f}x | {cpu * 1000:.0f} | {cpu_ratio:.2f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- case 1


def instance_variants(rows: list[dict[str, Any]]) -> dict[str, Variant]:
    n = len(rows)

    def build() -> list[Row]:
        return [Row(**r) for r in rows]

    async def copy_body(session: AsyncSession, _: Any) -> None:
        await raw_copy(session, list(map(itemgetter(*COLUMNS), rows)))

    async def build_only(session: AsyncSession, _: Any) -> None:
        assert len(build()) == n

    async def repom_body(session: AsyncSession, objs: list[Row]) -> None:
        made = await AsyncRepository(session, Row).bulk_create(objs)
        assert made[-1].id is not None and not session.dirty and not session.new
        assert made[0] in session

    async def repom_build(session: AsyncSession, _: Any) -> None:
        await repom_body(session, build())

    async def orm_body(session: AsyncSession, objs: list[Row]) -> None:
        session.add_all(objs)
        await session.flush()
        assert objs[-1].id is not None

    async def core_body(session: AsyncSession, _: Any) -> None:
        result = await session.execute(
            insert(Row).returning(Row.id, sort_by_parameter_order=True), rows
        )
        assert len(result.all()) == n

    async def aa_body(session: AsyncSession, objs: list[Row]) -> None:
        made = await aa_repository(session).add_many(objs)
        assert made[-1].id is not None

    return {
        BASELINE: Variant(copy_body),
        "build the instances (no write)": Variant(build_only, writes=False),
        "repom bulk_create(instances)": Variant(repom_body, build),
        "repom build + bulk_create": Variant(repom_build),
        "SQLAlchemy ORM add_all + flush": Variant(orm_body, build),
        "SQLAlchemy Core insert().returning(id)": Variant(core_body),
        "advanced-alchemy add_many": Variant(aa_body, build),
    }


# --------------------------------------------------------------------------- case 2


def generator_variants(n: int) -> dict[str, Variant]:
    async def copy_body(session: AsyncSession, _: Any) -> None:
        await raw_copy(session, map(itemgetter(*COLUMNS), gen_rows(n)))

    async def repom_count(session: AsyncSession, _: Any) -> None:
        count = await AsyncRepository(session, Row).bulk_create(gen_rows(n), returning=None)
        assert count == n

    async def repom_keys(session: AsyncSession, _: Any) -> None:
        keys = await AsyncRepository(session, Row).bulk_create(gen_rows(n), returning="keys")
        assert len(keys) == n

    async def core_body(session: AsyncSession, _: Any) -> None:
        for chunk in chunked(gen_rows(n), CHUNK):
            await session.execute(insert(Row), chunk)

    async def aa_body(session: AsyncSession, _: Any) -> None:
        repo = aa_repository(session)
        for chunk in chunked(gen_rows(n), CHUNK):
            await repo.add_many([Row(**r) for r in chunk])
            session.expunge_all()  # keep the session as small as the chunk

    return {
        BASELINE: Variant(copy_body),
        "repom bulk_create(generator, returning=None)": Variant(repom_count),
        'repom bulk_create(generator, returning="keys")': Variant(repom_keys),
        f"SQLAlchemy Core insert, executemany per {CHUNK:,}": Variant(core_body, slow=True),
        f"advanced-alchemy add_many per {CHUNK:,}": Variant(aa_body, slow=True),
    }


# --------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> str:
    engine = build_async_engine(
        convert_to_async_uri(args.url), connect_args=ASYNC_ARGS, pool_pre_ping=False
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        parts = [
            "## bulk_create of model instances and generators (PostgreSQL, asyncpg; commit "
            "included; median of interleaved rounds)",
            "",
        ]
        if args.rows:
            times = await run_case(
                engine, instance_variants(make_rows(args.rows)), args.rounds, args.rounds
            )
            parts += [
                report(
                    f"{args.rows:,} model instances [target: bulk_create <= 2x]", times, args.rows
                ),
                "",
            ]
        if args.gen_rows:
            times = await run_case(
                engine, generator_variants(args.gen_rows), args.gen_rounds, args.slow_rounds
            )
            parts += [
                report(
                    f"{args.gen_rows:,} rows from a generator [target: <= 1.15x]",
                    times,
                    args.gen_rows,
                ),
                "",
            ]
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        extra = {
            "rows": args.rows,
            "rounds": args.rounds,
            "gen_rows": args.gen_rows,
            "gen_rounds": args.gen_rounds,
            "slow_rounds": args.slow_rounds,
            "synchronous_commit": "off",
        }
        return "\n".join([*parts, stamp(extra)]) + "\n"
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="instances (0: skip the case)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--gen-rows", type=int, default=1_000_000, help="generator rows (0: skip the case)"
    )
    parser.add_argument("--gen-rounds", type=int, default=3)
    parser.add_argument("--slow-rounds", type=int, default=1)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    report_ = asyncio.run(main_async(args))
    print(report_)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "bulk_instances.md").write_text(report_, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
