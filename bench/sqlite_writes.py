"""SQLite writers under concurrency, without HTTP: does throughput hold with 32 transfers at once?

One transfer = lock two accounts in key order (``SELECT ... FOR UPDATE``, which SQLite has no
syntax for), check the balance, update both accounts, insert a ledger row, commit.  Each variant
runs it on its own copy of the same SQLite file (WAL, 12 accounts), with aiosqlite:

* ``repom`` -- ``AsyncDatabase`` with its defaults: writers queue in the process, first come first
  served, before SQLite's write lock (the locking read takes the turn);
* ``repom, write queue off`` -- ``sqlite_write_queue=False``: SQLite's busy handler decides;
* ``SQLAlchemy`` -- ``create_async_engine`` + SQLAlchemy's documented recipe for SQLite
  transactions (driver transaction control off, ``BEGIN IMMEDIATE`` emitted in the "begin" event,
  so the locking read already holds the write lock); busy timeout 5 s (sqlite3's default);
* ``advanced-alchemy`` -- ``SQLAlchemyAsyncConfig`` with its defaults, the same session code;
* ``aiosqlite`` -- the same statements by hand on 32 raw connections (``BEGIN IMMEDIATE``).

Figures: *sequential* -- one task, transfers one after another; *32 at once* -- 32 tasks sharing
the transfers; their ratio (>= 0.9 means no collapse under concurrency); p95 latency of one
transfer at 32 at once; errors; and whether the total balance is unchanged (a variant without a
transaction around the read would lose updates).  *Lock held*: median time from taking SQLite's
write lock to the end of COMMIT, at 32 at once (repom: its turn in the queue; the others: from
``BEGIN IMMEDIATE``), next to plain ``sqlite3`` running the same statements.

Rounds interleave the variants; medians over rounds.  Run:
``python -m bench.sqlite_writes [--rounds 5] [--transfers 400] [--tasks 32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._meta import stamp

RESULTS = Path(__file__).resolve().parent / "results"
ACCOUNTS = 12
START = 100_000


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    balance: Mapped[int] = mapped_column(Integer)


class Ledger(Base):
    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    target: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(Integer)
    memo: Mapped[str] = mapped_column(String(40), default="")


def make_template(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    conn.execute(
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY, source INTEGER REFERENCES accounts(id), "
        "target INTEGER REFERENCES accounts(id), amount INTEGER NOT NULL, memo VARCHAR(40))"
    )
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?)", [(i, START) for i in range(1, ACCOUNTS + 1)]
    )
    conn.commit()
    conn.close()


@dataclass
class Result:
    seq_tps: list[float] = field(default_factory=list)
    conc_tps: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    p95_ms: list[float] = field(default_factory=list)
    hold_ms: list[float] = field(default_factory=list)
    errors: int = 0
    lost_money: int = 0


Transfer = Callable[[int, int, int], Awaitable[None]]


class Variant:
    name = ""

    async def open(self, path: Path, tasks: int) -> None:
        raise NotImplementedError

    async def transfer(self, a: int, b: int, amount: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def _record_hold(sync_engine: Any, holds: list[float]) -> None:
    """Time from BEGIN IMMEDIATE / the first locking statement to the end of COMMIT."""
    started: dict[int, float] = {}

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        if key not in started and not statement.startswith(("BEGIN", "PRAGMA")):
            started[key] = time.perf_counter()

    @event.listens_for(sync_engine, "commit")
    def _mark(conn: Any) -> None:
        conn.info["repom_bench_committing"] = True

    dialect = sync_engine.dialect
    original = dialect.do_commit

    def timed_commit(dbapi_connection: Any) -> None:
        original(dbapi_connection)
        key = id(getattr(dbapi_connection, "dbapi_connection", dbapi_connection))
        begun = started.pop(key, None)
        if begun is not None:
            holds.append(time.perf_counter() - begun)

    dialect.do_commit = timed_commit

    @event.listens_for(sync_engine, "rollback")
    def _forget(conn: Any) -> None:
        started.pop(id(conn.connection.dbapi_connection), None)


async def _orm_transfer(session: Any, a: int, b: int, amount: int) -> None:
    query = select(Account).where(Account.id.in_(sorted((a, b)))).order_by(Account.id)
    found = {acc.id: acc for acc in (await session.execute(query.with_for_update())).scalars()}
    if found[a].balance < amount:
        return
    found[a].balance -= amount
    found[b].balance += amount
    session.add(Ledger(source=a, target=b, amount=amount))


class Repom(Variant):
    def __init__(self, name: str, **settings: Any) -> None:
        self.name = name
        self.settings = settings
        self.holds: list[float] = []

    async def open(self, path: Path, tasks: int) -> None:
        from repom.config import RepomConfig
        from repom.database import AsyncDatabase

        url = f"sqlite+aiosqlite:///{path}"
        config = RepomConfig(database_url=f"sqlite:///{path}", **self.settings)
        self.db = AsyncDatabase(url, config=config)
        _record_hold(self.db.engine.sync_engine, self.holds)

    async def transfer(self, a: int, b: int, amount: int) -> None:
        async with self.db.transaction() as session:
            await _orm_transfer(session, a, b, amount)

    async def close(self) -> None:
        await self.db.dispose()


class PlainSQLAlchemy(Variant):
    name = "SQLAlchemy (BEGIN IMMEDIATE recipe)"

    def __init__(self) -> None:
        self.holds: list[float] = []

    async def open(self, path: Path, tasks: int) -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        self.engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        _record_hold(sync_engine, self.holds)
        self.maker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def transfer(self, a: int, b: int, amount: int) -> None:
        async with self.maker() as session, session.begin():
            await _orm_transfer(session, a, b, amount)

    async def close(self) -> None:
        await self.engine.dispose()


class AdvancedAlchemy(Variant):
    name = "advanced-alchemy (defaults)"

    def __init__(self) -> None:
        self.holds: list[float] = []

    async def open(self, path: Path, tasks: int) -> None:
        from advanced_alchemy.config import SQLAlchemyAsyncConfig

        self.config = SQLAlchemyAsyncConfig(connection_string=f"sqlite+aiosqlite:///{path}")
        self.engine = self.config.get_engine()
        _record_hold(self.engine.sync_engine, self.holds)
        self.maker = self.config.create_session_maker()

    async def transfer(self, a: int, b: int, amount: int) -> None:
        async with self.maker() as session, session.begin():
            await _orm_transfer(session, a, b, amount)

    async def close(self) -> None:
        await self.engine.dispose()


class RawAiosqlite(Variant):
    name = "aiosqlite by hand (BEGIN IMMEDIATE)"

    def __init__(self) -> None:
        self.holds: list[float] = []

    async def open(self, path: Path, tasks: int) -> None:
        import aiosqlite

        self.free: asyncio.Queue[Any] = asyncio.Queue()
        self.connections = []
        for _ in range(tasks):
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA busy_timeout=5000")
            self.connections.append(conn)
            self.free.put_nowait(conn)

    async def transfer(self, a: int, b: int, amount: int) -> None:
        conn = await self.free.get()
        try:
            await conn.execute("BEGIN IMMEDIATE")
            begun = time.perf_counter()
            try:
                rows = await conn.execute_fetchall(
                    "SELECT id, balance FROM accounts WHERE id IN (?, ?) ORDER BY id",
                    sorted((a, b)),
                )
                balance = dict(rows)  # type: ignore[arg-type]
                if balance[a] >= amount:
                    await conn.execute(
                        "UPDATE accounts SET balance = ? WHERE id = ?", (balance[a] - amount, a)
                    )
                    await conn.execute(
                        "UPDATE accounts SET balance = ? WHERE id = ?", (balance[b] + amount, b)
                    )
                    await conn.execute(
                        "INSERT INTO ledger (source, target, amount, memo) VALUES (?, ?, ?, '')",
                        (a, b, amount),
                    )
                await conn.commit()
                self.holds.append(time.perf_counter() - begun)
            except BaseException:
                await conn.rollback()
                raise
        finally:
            self.free.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.connections:
            await conn.close()


def plain_sqlite3_hold(path: Path, pairs: list[tuple[int, int, int]]) -> float:
    """Median time plain sqlite3 holds the write lock for the same transaction (one thread)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")  # as repom sets it in WAL mode: no fsync per COMMIT
    holds = []
    for a, b, amount in pairs:
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        balance = dict(
            conn.execute(
                "SELECT id, balance FROM accounts WHERE id IN (?, ?) ORDER BY id", sorted((a, b))
            ).fetchall()
        )
        if balance[a] >= amount:
            conn.execute("UPDATE accounts SET balance = ? WHERE id = ?", (balance[a] - amount, a))
            conn.execute("UPDATE accounts SET balance = ? WHERE id = ?", (balance[b] + amount, b))
            conn.execute(
                "INSERT INTO ledger (source, target, amount, memo) VALUES (?, ?, ?, '')",
                (a, b, amount),
            )
        conn.execute("COMMIT")
        holds.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(holds)


async def measure(
    variant: Variant,
    path: Path,
    pairs: list[tuple[int, int, int]],
    sequential: int,
    tasks: int,
    result: Result,
) -> None:
    await variant.open(path, tasks)
    holds: list[float] = getattr(variant, "holds", [])
    try:
        start = time.perf_counter()
        for a, b, amount in pairs[:sequential]:
            await variant.transfer(a, b, amount)
        seq = sequential / (time.perf_counter() - start)
        holds.clear()
        todo = list(pairs[sequential:])
        latencies: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while todo:
                a, b, amount = todo.pop()
                begun = time.perf_counter()
                try:
                    await variant.transfer(a, b, amount)
                except Exception:
                    errors += 1
                latencies.append(time.perf_counter() - begun)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        conc = (len(pairs) - sequential) / (time.perf_counter() - start)
    finally:
        await variant.close()
    latencies.sort()
    result.seq_tps.append(seq)
    result.conc_tps.append(conc)
    result.ratio.append(conc / seq)
    result.p95_ms.append(latencies[int(0.95 * len(latencies)) - 1] * 1000)
    if holds:
        result.hold_ms.append(statistics.median(holds) * 1000)
    result.errors += errors
    conn = sqlite3.connect(path)
    total = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
    conn.close()
    result.lost_money += abs(total - START * ACCOUNTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sqlite_writes", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transfers", type=int, default=400, help="at 32 at once, per round")
    parser.add_argument("--sequential", type=int, default=200, help="one after another")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--output", default=str(RESULTS / "sqlite_writes.md"))
    args = parser.parse_args(argv)

    variants: list[Variant] = [
        Repom("repom (defaults)"),
        Repom("repom, write queue off", sqlite_write_queue=False),
        PlainSQLAlchemy(),
        AdvancedAlchemy(),
        RawAiosqlite(),
    ]
    results = {v.name: Result() for v in variants}
    rng = random.Random(1)
    raw_holds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="repom-sqlite-writes-") as tmp:
        template = Path(tmp) / "template.sqlite3"
        make_template(template)
        for round_ in range(args.rounds):
            pairs = [
                (*rng.sample(range(1, ACCOUNTS + 1), 2), rng.randint(1, 500))
                for _ in range(args.sequential + args.transfers)
            ]
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            for variant in order:
                path = Path(tmp) / f"{round_}-{variants.index(variant)}.sqlite3"
                shutil.copy(template, path)
                result = results[variant.name]
                asyncio.run(measure(variant, path, pairs, args.sequential, args.tasks, result))
            path = Path(tmp) / f"{round_}-raw.sqlite3"
            shutil.copy(template, path)
            raw_holds.append(plain_sqlite3_hold(path, pairs[: args.sequential]))
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    def med(values: list[float], fmt: str = "{:.0f}") -> str:
        return fmt.format(statistics.median(values)) if values else "-"

    lines = [
        "One transfer = lock two accounts in key order, check, update both, insert a ledger row, "
        f"commit (SQLite file, WAL, aiosqlite, {ACCOUNTS} accounts).  Sequential: one task, "
        f"{args.sequential} transfers; 32 at once: {args.tasks} tasks, {args.transfers} "
        f"transfers; medians of {args.rounds} interleaved rounds.",
        "",
        "| variant | sequential tx/s | 32 at once tx/s | 32 at once / sequential | p95 ms at 32 "
        "| lock held ms (median) | errors (all rounds) | money lost or created |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        r = results[v.name]
        lines.append(
            f"| {v.name} | {med(r.seq_tps)} | {med(r.conc_tps)} | {med(r.ratio, '{:.2f}')} "
            f"| {med(r.p95_ms)} | {med(r.hold_ms, '{:.3f}')} | {r.errors} | {r.lost_money} |"
        )
    lines += [
        f"| plain sqlite3, one thread, synchronous=NORMAL (lock held only) | | | | | "
        f"{statistics.median(raw_holds) * 1000:.3f} | | |",
        "",
        "Lock held: from the first statement after BEGIN (repom: after its turn) to the end of "
        "COMMIT; it includes each statement's hop to aiosqlite's thread and back.  repom sets "
        "`synchronous=NORMAL` in WAL mode (no fsync per COMMIT); the other variants keep SQLite's "
        "default (FULL), whose COMMIT waits for an fsync while it holds the lock.",
        "",
        f"Command: `python -m bench.sqlite_writes --rounds {args.rounds} --transfers "
        f"{args.transfers} --tasks {args.tasks}`",
        "",
        stamp({"backend": "sqlite+aiosqlite", "journal_mode": "wal"}),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    repom = results["repom (defaults)"]
    return 0 if repom.errors == 0 and repom.lost_money == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
