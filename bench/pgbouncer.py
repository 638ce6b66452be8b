"""Throughput through PgBouncer (transaction mode) against direct connections, side by side.

The benchmark starts its own PostgreSQL 15 instance and its own PgBouncer 1.18 (default
configuration, transaction mode, 20 server connections) on free loopback ports, as the
``postgres`` OS user, and tears both down at the end (see ``tests/support/topology.py``).

The workload: 32 asyncio tasks, each running short transactions (a ``SELECT`` by primary key and
an ``UPDATE`` of that row, ``COMMIT``) against 1,000 rows, asyncpg.  Variants, interleaved
round by round in a rotating order on the same rows:

* ``repom direct`` -- ``AsyncDatabase`` with repom's default configuration, straight to
  PostgreSQL;
* ``repom via PgBouncer`` -- the same with ``pooler="pgbouncer"`` (repom's pooler mode);
* ``SQLAlchemy direct`` -- ``create_async_engine`` with its defaults;
* ``SQLAlchemy via PgBouncer`` -- ``create_async_engine`` with the settings SQLAlchemy documents
  for PgBouncer (statement caches off, a unique name per prepared statement);
* ``advanced-alchemy via PgBouncer`` -- advanced-alchemy's session maker on that engine.

Every variant uses a pool of 32 so the client pool is never the bottleneck.  Reported: the median
transactions per second over the rounds, and ratios.

Run: ``python -m bench.pgbouncer [--rounds N] [--transactions N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._meta import stamp
from repom.config import RepomConfig
from repom.database import AsyncDatabase
from tests.support.topology import (  # the servers the topology tests use
    PgBouncer,
    PostgresInstance,
    make_root,
    topology_available,
)

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = 32
ROWS = 1_000


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "bench_bouncer_counters"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


@dataclass
class Variant:
    name: str
    maker: Any
    closer: Any


async def run_batch(maker: Any, transactions: int) -> float:
    """Seconds for *transactions* transactions spread over TASKS tasks."""
    per_task = transactions // TASKS

    async def worker(offset: int) -> None:
        for n in range(per_task):
            key = (offset * 7919 + n * 31) % ROWS + 1
            async with maker() as session, session.begin():
                row = await session.scalar(select(Counter.value).where(Counter.id == key))
                await session.execute(
                    update(Counter).where(Counter.id == key).values(value=(row or 0) + 1)
                )

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(TASKS)))
    return time.perf_counter() - start


def _bouncer_engine(url: str) -> Any:
    return create_async_engine(
        url,
        pool_size=TASKS,
        max_overflow=0,
        connect_args={
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__bench_{uuid.uuid4().hex}__",
        },
    )


async def measure(server: PostgresInstance, bouncer: PgBouncer, rounds: int, n: int) -> str:
    from advanced_alchemy.config import SQLAlchemyAsyncConfig

    direct_url = server.url(driver="asyncpg")
    bouncer_url = bouncer.url(driver="asyncpg")
    pool = {"pool_size": TASKS, "max_overflow": 0}
    repom_direct = AsyncDatabase(direct_url, config=RepomConfig(**pool))
    repom_bounced = AsyncDatabase(bouncer_url, config=RepomConfig(pooler="pgbouncer", **pool))
    sa_direct = create_async_engine(direct_url, **pool)
    sa_bounced = _bouncer_engine(bouncer_url)
    aa_config = SQLAlchemyAsyncConfig(engine_instance=sa_bounced)
    variants = [
        Variant("repom direct", repom_direct.session, repom_direct.dispose),
        Variant("repom via PgBouncer", repom_bounced.session, repom_bounced.dispose),
        Variant("SQLAlchemy direct", async_sessionmaker(sa_direct, expire_on_commit=False), None),
        Variant(
            "SQLAlchemy via PgBouncer",
            async_sessionmaker(sa_bounced, expire_on_commit=False),
            None,
        ),
        Variant("advanced-alchemy via PgBouncer", aa_config.create_session_maker(), None),
    ]
    for variant in variants:  # warm every pool
        await run_batch(variant.maker, TASKS * 4)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_no in range(rounds):
        order = variants[round_no % len(variants) :] + variants[: round_no % len(variants)]
        for variant in order:
            times[variant.name].append(await run_batch(variant.maker, n))
    for variant in variants:
        if variant.closer is not None:
            await variant.closer()
    await sa_direct.dispose()
    await sa_bounced.dispose()
    rate = {name: n / statistics.median(values) for name, values in times.items()}
    lines = [
        f"{TASKS} tasks, {n} transactions per batch (SELECT + UPDATE + COMMIT), median of "
        f"{rounds} interleaved rounds, asyncpg; PgBouncer 1.18 transaction mode, default "
        "pool (20 server connections).",
        "",
        "| variant | transactions/s | vs SQLAlchemy, same path |",
        "|---|---|---|",
    ]
    for name in times:
        base = "SQLAlchemy via PgBouncer" if "PgBouncer" in name else "SQLAlchemy direct"
        lines.append(f"| {name} | {rate[name]:,.0f} | {rate[name] / rate[base]:.2f}x |")
    through = rate["repom via PgBouncer"] / rate["repom direct"]
    lines += ["", f"repom via PgBouncer / repom direct: {through:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transactions", type=int, default=3_200)
    args = parser.parse_args(argv)
    missing = topology_available()
    if missing is not None:
        print(f"bench.pgbouncer skipped: {missing}")
        return
    root = make_root("repom-bench-bouncer-")
    server = PostgresInstance(root / "pg")
    bouncer = PgBouncer(server, root / "bouncer")
    try:
        server.start()
        bouncer.start()
        engine = create_engine(server.url())
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM bench_bouncer_counters"))
            conn.execute(
                Counter.__table__.insert(), [{"id": i, "value": 0} for i in range(1, ROWS + 1)]
            )
        engine.dispose()
        table = asyncio.run(measure(server, bouncer, args.rounds, args.transactions))
    finally:
        bouncer.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    table += "\n\n" + stamp({"pooler": "pgbouncer (transaction mode)"})
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pgbouncer.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
