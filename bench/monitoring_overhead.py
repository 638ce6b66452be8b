"""What repom's monitoring listeners cost on a unit of work (PostgreSQL, sync psycopg and async
asyncpg).

The unit of work: open a session, ``get`` a row by primary key, change it, commit, close (SELECT,
UPDATE, COMMIT).  Every variant runs on the *same* engine, connections and rows: before each batch
the variant's listeners are put on, after it they are taken off again, and the rounds are
interleaved (each round runs every variant once, in a rotating order).  The overhead is the
median over rounds of the variant's time divided by the baseline's time in the same round, a
paired estimate that slow drifts of the machine's load cancel out.  (Separate engines differ by a
few percent on a shared machine, more than the effect measured.)  All variants commit with
``synchronous_commit=off`` so that WAL flush times on a shared server do not drown the signal.

Variants:

* ``SQLAlchemy (no listeners)`` -- the baseline;
* ``repom monitor`` -- ``PoolMonitor(engine).install()`` with its defaults: slow-statement log
  (0.5 s), long-checkout warning (5 s), checkout wait histogram and timeouts, statement-duration
  histogram, commit/rollback counters;
* ``repom monitor, route set`` -- the same inside ``route_context(...)``, as in a FastAPI request
  with ``RouteContextMiddleware``;
* ``repom monitor, capture_stack`` -- with the checkout stack captured on every checkout;
* ``cursor-event recipe`` -- the usual hand-written slow-query log with ``before_cursor_execute``
  and ``after_cursor_execute`` listeners, for comparison;
* ``advanced-alchemy session`` -- advanced-alchemy's session maker (its ORM listeners) on the same
  engine; it has no pool or statement monitoring of its own.

Run: ``python -m bench.monitoring_overhead [--rounds N] [--batch N] [--url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bench._meta import stamp
from repom.monitoring import PoolMonitor, route_context
from repom.urls import convert_to_async_uri, convert_to_sync_uri

RESULTS = Path(__file__).resolve().parent / "results"
POOL = {"pool_size": 5, "max_overflow": 5, "pool_pre_ping": False}
SYNC_ARGS = {"options": "-c synchronous_commit=off"}
ASYNC_ARGS = {"server_settings": {"synchronous_commit": "off"}}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_monitoring_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    counter: Mapped[int]
    name: Mapped[str]


# --------------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str
    maker: Any  # session factory
    on: Callable[[], contextlib.AbstractContextManager[Any]]


def _recipe_listeners() -> tuple[Callable[..., None], Callable[..., None]]:
    log = logging.getLogger("bench.recipe")

    def before(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        conn.info.setdefault("query_start", []).append(time.perf_counter())

    def after(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        elapsed = time.perf_counter() - conn.info["query_start"].pop()
        if elapsed > 0.5:
            log.warning("slow statement %.3f s: %s", elapsed, statement)

    return before, after


def variants(engine: Engine, maker: Any, aa_maker: Any) -> list[Variant]:
    """The variants of one engine (*engine* is the sync engine, also for async)."""

    @contextlib.contextmanager
    def nothing() -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def monitor(route: bool = False, **options: Any) -> Iterator[None]:
        mon = PoolMonitor(engine).install(**options)
        try:
            if route:
                with route_context("PATCH /items/{item_id}"):
                    yield
            else:
                yield
        finally:
            mon.uninstall()

    @contextlib.contextmanager
    def recipe() -> Iterator[None]:
        before, after = _recipe_listeners()
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        try:
            yield
        finally:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)
            # SQLAlchemy never clears this flag when the last connection listener goes; the
            # baseline must not keep paying for the recipe's joined dispatch afterwards
            engine._has_events = False

    return [
        Variant("SQLAlchemy (no listeners)", maker, nothing),
        Variant("repom monitor", maker, monitor),
        Variant("repom monitor, route set", maker, lambda: monitor(route=True)),
        Variant("repom monitor, capture_stack", maker, lambda: monitor(capture_stack=True)),
        Variant("cursor-event recipe", maker, recipe),
        Variant("advanced-alchemy session", aa_maker, nothing),
    ]


# --------------------------------------------------------------------------- the loops


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


def _order(n: int, round_no: int) -> list[int]:
    return [(i + round_no) % n for i in range(n)]


Result = tuple[float, float]  # (median µs per unit, median of per-round ratios to baseline)


def _summarise(times: list[list[float]]) -> list[Result]:
    """Per variant: the median time, and the median over rounds of its time divided by the
    baseline's time *in the same round* -- a paired estimate that drifting load cancels out."""
    base = times[0]
    return [
        (statistics.median(t), statistics.median(x / b for x, b in zip(t, base, strict=True)))
        for t in times
    ]


def measure_sync(vs: list[Variant], ids: list[int], rounds: int) -> list[Result]:
    times: list[list[float]] = [[] for _ in vs]
    for v in vs:  # warm up: pool, statement caches
        with v.on():
            sync_batch(v.maker, ids)
    for r in range(rounds):
        for i in _order(len(vs), r):
            with vs[i].on():
                start = time.perf_counter()
                sync_batch(vs[i].maker, ids)
                times[i].append((time.perf_counter() - start) / len(ids))
    return _summarise(times)


async def measure_async(vs: list[Variant], ids: list[int], rounds: int) -> list[Result]:
    times: list[list[float]] = [[] for _ in vs]
    for v in vs:
        with v.on():
            await async_batch(v.maker, ids)
    for r in range(rounds):
        for i in _order(len(vs), r):
            with vs[i].on():
                start = time.perf_counter()
                await async_batch(vs[i].maker, ids)
                times[i].append((time.perf_counter() - start) / len(ids))
    return _summarise(times)


# --------------------------------------------------------------------------- main


def _seed(engine: Engine, n: int) -> list[int]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            Item.__table__.insert(),
            [{"id": i, "counter": 0, "name": f"item {i}"} for i in range(1, n + 1)],
        )
    return list(range(1, n + 1))


def _rows(driver: str, vs: list[Variant], results: list[Result]) -> list[str]:
    lines = []
    for v, (median, ratio) in zip(vs, results, strict=True):
        overhead = "baseline" if v is vs[0] else f"{(ratio - 1) * 100:+.1f} %"
        lines.append(f"| {driver} | {v.name} | {median * 1e6:.0f} | {ratio:.3f} | {overhead} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.monitoring_overhead")
    parser.add_argument("--rounds", type=int, default=120)
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

    from advanced_alchemy.config import (
        AsyncSessionConfig,
        SQLAlchemyAsyncConfig,
        SQLAlchemySyncConfig,
        SyncSessionConfig,
    )

    lines = [
        f"Unit of work = session, get by primary key, change, commit (PostgreSQL, "
        f"synchronous_commit=off); one engine per driver, {args.rounds} interleaved rounds of "
        f"{args.batch} units per variant.  `ratio` is the median over rounds of the variant's "
        "time / the baseline's time in the same round.",
        "",
        "| driver | variant | µs per unit (median) | ratio | overhead |",
        "|---|---|---:|---:|---:|",
    ]
    engine = create_engine(convert_to_sync_uri(args.url), connect_args=SYNC_ARGS, **POOL)
    try:
        ids = _seed(engine, args.batch)
        aa = SQLAlchemySyncConfig(
            engine_instance=engine, session_config=SyncSessionConfig(expire_on_commit=False)
        )
        vs = variants(
            engine, sessionmaker(engine, expire_on_commit=False), aa.create_session_maker()
        )
        lines += _rows("psycopg (sync)", vs, measure_sync(vs, ids, args.rounds))

        async def run_async() -> list[str]:
            aengine: AsyncEngine = create_async_engine(
                convert_to_async_uri(args.url), connect_args=ASYNC_ARGS, **POOL
            )
            try:
                aaa = SQLAlchemyAsyncConfig(
                    engine_instance=aengine,
                    session_config=AsyncSessionConfig(expire_on_commit=False),
                )
                avs = variants(
                    aengine.sync_engine,
                    async_sessionmaker(aengine, expire_on_commit=False),
                    aaa.create_session_maker(),
                )
                return _rows("asyncpg (async)", avs, await measure_async(avs, ids, args.rounds))
            finally:
                await aengine.dispose()

        lines += asyncio.run(run_async())
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
    table = "\n".join([*lines, "", stamp({"drivers": "psycopg (sync), asyncpg (async)"})])
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "monitoring_overhead.md").write_text(table + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
