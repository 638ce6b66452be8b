"""What isolating a test costs: repom's rolled-back transaction per test against recreating or
emptying the tables per test (PostgreSQL and SQLite, a schema of 10 tables, 200 tests).

Every strategy runs the same simulated test suite: each "test" is a small function that inserts a
parent row and three children in two of the tables, commits, and checks that it sees exactly its
own three children -- which only holds if the test started from empty tables, so every strategy
is checked for isolation while it is timed.  Every test is also run with an empty body (what the
isolation alone costs).  Each strategy has its own database (SQLite file, PostgreSQL schema),
created once beforehand and not part of the per-test figures; the strategies run in interleaved
rounds so that drifting load on a shared machine hits them alike; medians are reported.

Strategies:

* ``repom IsolatedDatabase`` / ``repom AsyncIsolatedDatabase`` -- ``isolated_session()`` per test
  (what ``db_test``/``async_db_test`` do, including binding repom's default database);
* ``SQLAlchemy recipe`` / ``SQLAlchemy async recipe`` -- the hand-written equivalent from the
  SQLAlchemy docs (connection, ``begin()``, ``Session(join_transaction_mode="create_savepoint")``,
  rollback); on SQLite it needs the documented pysqlite BEGIN workaround, which is included;
* ``drop_all + create_all`` -- the schema is rebuilt before every test, the test commits;
* ``truncate`` -- the test commits, then the tables are emptied (PostgreSQL ``TRUNCATE ...
  RESTART IDENTITY CASCADE``; SQLite ``DELETE FROM`` each table, it has no TRUNCATE).

advanced-alchemy 1.12 has no per-test isolation helper (``advanced_alchemy.utils.fixtures`` loads
seed data files); its users write the SQLAlchemy recipe above, so that row stands for it.

Run: ``python -m bench.fixture_overhead [--tests 200] [--rounds 5] [--backends sqlite,postgresql]
[--url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from bench._meta import stamp
from repom.testing import AsyncIsolatedDatabase, IsolatedDatabase
from repom.urls import convert_to_async_uri, convert_to_sync_uri

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = "bench_fixture_overhead"
TABLES = 10

metadata = MetaData()
PARENT = Table(
    "bench_fx_t0",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
)
CHILDREN = [
    Table(
        f"bench_fx_t{i}",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("bench_fx_t0.id"), nullable=False),
        Column("title", String(50), nullable=False),
    )
    for i in range(1, TABLES)
]
CHILD = CHILDREN[0]
COUNT_CHILDREN = select(func.count()).select_from(CHILD)


# --------------------------------------------------------------------------- the simulated tests


def work(session: Session) -> None:
    parent_id = session.execute(insert(PARENT).values(name="p").returning(PARENT.c.id)).scalar_one()
    session.execute(insert(CHILD), [{"parent_id": parent_id, "title": f"c{i}"} for i in range(3)])
    session.commit()
    seen = session.scalar(COUNT_CHILDREN)
    assert seen == 3, f"the test did not start from empty tables: {seen} rows"


def nothing(session: Any) -> None:
    return None


async def async_work(session: AsyncSession) -> None:
    await session.run_sync(work)


async def async_nothing(session: AsyncSession) -> None:
    return None


# --------------------------------------------------------------------------- engines


def _schema_args(url: str, schema: str | None, is_async: bool) -> dict[str, Any]:
    if schema is None:
        return {}
    if is_async:
        return {"server_settings": {"search_path": schema}}
    return {"options": f"-c search_path={schema}"}


def _sqlite_savepoint_recipe(engine: Engine) -> None:
    """SQLAlchemy's documented pysqlite/aiosqlite workaround for SAVEPOINT support (and the
    same WAL settings repom uses)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")  # as fast as repom's SQLite engines commit
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def raw_engine(url: str, schema: str | None) -> Engine:
    url = convert_to_sync_uri(url)
    engine = create_engine(url, pool_pre_ping=False, connect_args=_schema_args(url, schema, False))
    if engine.dialect.name == "sqlite":
        _sqlite_savepoint_recipe(engine)
    return engine


def raw_async_engine(url: str, schema: str | None) -> AsyncEngine:
    url = convert_to_async_uri(url)
    engine = create_async_engine(
        url, pool_pre_ping=False, connect_args=_schema_args(url, schema, True)
    )
    if engine.dialect.name == "sqlite":
        _sqlite_savepoint_recipe(engine.sync_engine)
    return engine


# --------------------------------------------------------------------------- strategies
# Each strategy gets a database of its own (a SQLite file, a PostgreSQL schema), so that all of
# them can be set up at once and their runs interleaved: drifting load on a shared machine then
# hits every strategy alike.

Body = Callable[[Any], Any]


class Strategy:
    label = ""

    def __init__(self, url: str, key: str) -> None:
        """*url*: PostgreSQL (the strategy gets schema ``bench_fx_<key>``) or a SQLite URL
        template with ``{key}`` in the file name."""
        self.url = url.replace("{key}", key)
        self.schema = f"bench_fx_{key}" if url.startswith("postgresql") else None

    async def setup(self) -> None:
        self.admin = raw_engine(self.url, self.schema)
        if self.schema is not None:
            with self.admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
                conn.exec_driver_sql(f"CREATE SCHEMA {self.schema}")
        metadata.create_all(self.admin)

    async def teardown(self) -> None:
        with self.admin.begin() as conn:
            if self.schema is not None:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            else:
                metadata.drop_all(conn)
        self.admin.dispose()

    async def run(self, body: Body, async_body: Callable[[Any], Awaitable[Any]]) -> None:
        raise NotImplementedError


class RepomSync(Strategy):
    label = "repom IsolatedDatabase"

    async def setup(self) -> None:
        self.isolated = IsolatedDatabase(self.url, metadata, schema=self.schema)
        self.isolated.start()

    async def teardown(self) -> None:
        self.isolated.stop()

    async def run(self, body: Body, async_body: Any) -> None:
        with self.isolated.isolated_session() as session:
            body(session)


class RecipeSync(Strategy):
    label = "SQLAlchemy recipe"

    async def run(self, body: Body, async_body: Any) -> None:
        conn = self.admin.connect()
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        try:
            body(session)
        finally:
            outer.rollback()
            session.close()
            conn.close()


class DropCreate(Strategy):
    label = "drop_all + create_all"

    async def run(self, body: Body, async_body: Any) -> None:
        metadata.drop_all(self.admin)
        metadata.create_all(self.admin)
        with Session(self.admin) as session:
            body(session)


class Truncate(Strategy):
    label = "truncate"

    async def run(self, body: Body, async_body: Any) -> None:
        with Session(self.admin) as session:
            body(session)
        with self.admin.begin() as conn:
            if conn.dialect.name == "postgresql":
                names = ", ".join(t.name for t in metadata.sorted_tables)
                conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
            else:
                for table in reversed(metadata.sorted_tables):
                    conn.execute(table.delete())


class RepomAsync(Strategy):
    label = "repom AsyncIsolatedDatabase"

    async def setup(self) -> None:
        self.isolated = AsyncIsolatedDatabase(self.url, metadata, schema=self.schema)
        await self.isolated.start()

    async def teardown(self) -> None:
        await self.isolated.stop()

    async def run(self, body: Body, async_body: Callable[[Any], Awaitable[Any]]) -> None:
        async with self.isolated.isolated_session() as session:
            await async_body(session)


class RecipeAsync(Strategy):
    label = "SQLAlchemy async recipe"

    async def setup(self) -> None:
        await super().setup()
        self.engine = raw_async_engine(self.url, self.schema)

    async def teardown(self) -> None:
        await self.engine.dispose()
        await super().teardown()

    async def run(self, body: Body, async_body: Callable[[Any], Awaitable[Any]]) -> None:
        conn = await self.engine.connect()
        outer = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
        try:
            await async_body(session)
        finally:
            await outer.rollback()
            await session.close()
            await conn.close()


STRATEGIES: list[type[Strategy]] = [
    RepomSync,
    RecipeSync,
    DropCreate,
    Truncate,
    RepomAsync,
    RecipeAsync,
]
ASYNC_LABELS = {RepomAsync.label, RecipeAsync.label}


# --------------------------------------------------------------------------- report


async def run_backend(
    name: str, url: str, tests: int, rounds: int
) -> list[tuple[str, float, float, float]]:
    """(strategy, median ms per empty test, median ms per test with work, seconds for all with
    work).  *rounds* interleaved rounds, each running a batch of every strategy, the order
    rotating from round to round."""
    strategies = [cls(url, cls.__name__.lower()) for cls in STRATEGIES]
    empty: dict[str, list[float]] = {s.label: [] for s in strategies}
    full: dict[str, list[float]] = {s.label: [] for s in strategies}
    batch = max(1, tests // rounds)
    for strategy in strategies:
        await strategy.setup()
    try:
        for round_no in range(rounds):
            shift = round_no % len(strategies)
            for strategy in strategies[shift:] + strategies[:shift]:
                for body, async_body, sink in (
                    (nothing, async_nothing, empty),
                    (work, async_work, full),
                ):
                    for _ in range(batch):
                        start = time.perf_counter()
                        await strategy.run(body, async_body)
                        sink[strategy.label].append(time.perf_counter() - start)
    finally:
        for strategy in strategies:
            await strategy.teardown()
    rows = []
    for strategy in strategies:
        label = strategy.label
        rows.append((label, _ms(empty[label]), _ms(full[label]), sum(full[label])))
        print(f"  {name:10} {label:30} {_ms(full[label]):8.3f} ms/test", flush=True)
    return rows


def _ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def report(results: dict[str, list[tuple[str, float, float, float]]], tests: int) -> str:
    lines = [
        f"Per-test cost of isolation: {TABLES} tables, {tests} simulated tests per strategy, "
        "median per test. *Empty*: the isolation alone; *with work*: the test inserts 4 rows, "
        "commits and reads them back. × repom: the strategy's time / repom's (sync against "
        "IsolatedDatabase, async against AsyncIsolatedDatabase).",
        "",
        f"| backend | strategy | empty (ms) | with work (ms) | {tests} tests (s) "
        "| × repom, empty | × repom, with work |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for backend, rows in results.items():
        by_label = {row[0]: row for row in rows}
        for label, empty, full, total in rows:
            is_async = label in ASYNC_LABELS
            base = by_label[RepomAsync.label if is_async else RepomSync.label]
            lines.append(
                f"| {backend} | {label} | {empty:.3f} | {full:.3f} | {total:.2f} "
                f"| {empty / base[1]:.1f} | {full / base[2]:.1f} |"
            )
        repom, drop, truncate = (
            by_label[k] for k in ("repom IsolatedDatabase", "drop_all + create_all", "truncate")
        )
        notes.append(
            f"- {backend}: repom {repom[2]:.3f} ms per test with work "
            f"(async {by_label['repom AsyncIsolatedDatabase'][2]:.3f} ms). drop_all + create_all "
            f"per test is {drop[2] / repom[2]:.0f}× slower with work and {drop[1] / repom[1]:.0f}× "
            f"in isolation cost alone; truncate {truncate[2] / repom[2]:.1f}× and "
            f"{truncate[1] / repom[1]:.0f}×."
        )
    return "\n".join([*lines, "", *notes]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fixture_overhead")
    parser.add_argument("--tests", type=int, default=200, help="simulated tests per strategy")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
        help="PostgreSQL URL",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "fixture_overhead.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv if argv is not None else [])
    results = {}
    with tempfile.TemporaryDirectory(prefix="repom-bench-") as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp)}/bench_{{key}}.sqlite3"
            elif backend == "postgresql":
                url = args.url
            else:
                raise SystemExit(f"unknown backend {backend!r} (sqlite, postgresql)")
            results[backend] = asyncio.run(run_backend(backend, url, args.tests, args.rounds))
    table = report(results, args.tests) + "\n" + stamp({"backends": ", ".join(results)}) + "\n"
    print()
    print(table)
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)


if __name__ == "__main__":
    main(sys.argv[1:])
