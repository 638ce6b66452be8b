"""Read replicas: read throughput with 0, 1 and 2 hot standbys, and the cost of read-your-writes.

The benchmark starts its own PostgreSQL 15 primary and TWO streaming hot standbys of it
(``pg_basebackup -R``, ``hot_standby = on``) on free loopback ports, as the ``postgres`` OS user,
and tears all three down at the end (see ``tests/support/topology.py``).  Two standbys, so that
repom's round robin across healthy replicas is measured beside a single replica, and so that
hand-written round robin has more than one replica to spread over.  The table
(``bench_replica_items``, 10,000 rows) is created and filled before the standbys are copied, so
every server holds the same rows from the start.

The load: 32 asyncio tasks in all, asyncpg, spread over ``--procs`` client processes (default 2)
so that one Python interpreter's GIL is not the ceiling.  Every engine has a pool as large as its
process's task count (no overflow), so no task ever waits for a pooled connection; apart from
that, repom runs with its default configuration (recorded in the result's configuration line).
Variants run interleaved, round by round, in a rotating order, on the same rows.  For every batch
the CPU time of the client processes and of each PostgreSQL server (postmaster and children,
scheduler clock from ``/proc``) is recorded, per operation and as shares of the whole machine,
beside "other" (processes outside the benchmark, the kernel) and idle.  On a machine with few
cores the servers share the CPUs with each other and with the clients, so more replicas cannot
add capacity there; the result says so when the CPUs were saturated.

1. **Read throughput.**  A read-only transaction = a ``SELECT`` by primary key and a range
   ``SELECT`` of 10 rows.  repom ``transaction(database=db, read_only=True)`` on an
   ``AsyncDatabase`` with 0, 1 and 2 replicas; raw SQLAlchemy (``BEGIN READ ONLY`` through
   ``postgresql_readonly``) on the primary, on one standby, round robin over the two standbys and
   round robin over the primary and both standbys (by hand, no causality);
   advanced-alchemy's session maker on the primary.
2. **Read-your-writes.**  Each task loops over (write transaction: ``UPDATE ... RETURNING`` of
   a row of its own; then a read-only transaction reading that row back): repom with 1 replica
   (read-your-writes: the write reads ``pg_current_wal_lsn()`` after ``COMMIT``, the read checks
   the replica's replay position first and waits for it if needed), the same with
   ``replica=False`` (the write still reads its WAL position, the read goes to the primary),
   repom without replicas, raw SQLAlchemy and advanced-alchemy on the primary, and raw
   SQLAlchemy writing to the primary and reading from the standby without any causality (the
   reads it got back stale are counted).
3. **A read after a write.**  Read-only loops on repom with 1 replica, in a context that has not
   written against one that committed a write beforehand (its reads must find the write
   replayed), with raw SQLAlchemy on the standby beside.

After the timed rounds, diagnostic batches (not in the tables) count the statements repom sends
to the standby per read (state checks, 5 ms replay waits) and sample what the standby's replay
process is doing.  Reported: medians over the rounds; ratios are the median over rounds of the
per-round ratio, so slow drifts of a shared machine cancel out.

Run: ``python -m bench.replicas [--rounds N] [--transactions N] [--procs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shutil
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from bench._meta import stamp
from repom.config import RepomConfig
from repom.database import AsyncDatabase
from repom.monitoring import replica_skip_counts
from repom.transactions import Causality, transaction, use_causality
from tests.support.topology import (  # the servers the topology tests use
    PostgresInstance,
    make_root,
    topology_available,
)

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = 32
ROWS = 10_000
RANGE = 10
SERVERS = ("primary", "standby 1", "standby 2")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_replica_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]
    name: Mapped[str]


items = Item.__table__


def _get(key: int) -> Any:
    return select(items.c.value).where(items.c.id == key)


def _range(key: int) -> Any:
    top = min(key, ROWS - RANGE + 1)
    return select(items.c.id, items.c.value).where(items.c.id >= top, items.c.id < top + RANGE)


def _bump(key: int) -> Any:
    return update(items).where(items.c.id == key).values(value=items.c.value + 1)


# Sections: variant names, in the order of the tables.  The client processes build the callables.
READS = [
    "repom, 0 replicas (primary)",
    "repom, 1 replica",
    "repom, 2 replicas",
    "SQLAlchemy, primary",
    "SQLAlchemy, standby 1",
    "SQLAlchemy, round robin 2 standbys",
    "SQLAlchemy, round robin primary + 2 standbys",
    "advanced-alchemy, primary",
]
PAIRS = [
    "repom, 1 replica, read-your-writes",
    "repom, 1 replica, reads replica=False",
    "repom, no replicas",
    "SQLAlchemy, primary",
    "SQLAlchemy, write primary, read standby (no causality)",
    "advanced-alchemy, primary",
]
AFTER = [
    "repom, 1 replica, context never wrote",
    "repom, 1 replica, context wrote before",
    "SQLAlchemy, standby 1",
]


# --------------------------------------------------------------------------- client processes


@dataclass
class Work:
    """What one task does in a batch: an optional untimed setup, then *per_task* operations."""

    body: Callable[[int, int, dict[str, int]], Awaitable[None]]
    setup: Callable[[int], Awaitable[None]] | None = None


def _key(task: int, n: int) -> int:
    """Rows are dealt to tasks (task, task + 32, ...), so writers never wait on each other."""
    return (task + TASKS * ((n * 37 + task * 11) % (ROWS // TASKS))) % ROWS + 1


async def _read(session: AsyncSession, key: int) -> int:
    value = await session.scalar(_get(key))
    (await session.execute(_range(key))).all()
    return int(value or 0)


async def _sa_read(maker: Any, key: int) -> int:
    async with maker() as session, session.begin():
        await session.connection(execution_options={"postgresql_readonly": True})
        return await _read(session, key)


async def _sa_write(maker: Any, key: int) -> int:
    async with maker() as session, session.begin():
        return int(await session.scalar(_bump(key).returning(items.c.value)) or 0)


def _build(urls: dict[str, str], pool: int) -> tuple[dict[str, Work], list[Any], Any]:
    config = RepomConfig(pool_size=pool, max_overflow=0)  # otherwise repom's defaults
    primary, one, two = (urls[name] for name in SERVERS)
    repom0 = AsyncDatabase(primary, config=config)
    repom1 = AsyncDatabase(primary, replicas=[one], config=config)
    repom2 = AsyncDatabase(primary, replicas=[one, two], config=config)
    engines = {
        name: create_async_engine(urls[name], pool_size=pool, max_overflow=0) for name in SERVERS
    }
    makers = {
        name: async_sessionmaker(engine, expire_on_commit=False) for name, engine in engines.items()
    }
    from advanced_alchemy.config import SQLAlchemyAsyncConfig

    aa = SQLAlchemyAsyncConfig(engine_instance=engines["primary"]).create_session_maker()
    holders: dict[int, Causality] = {}

    def repom_reads(db: AsyncDatabase, context: dict[int, Causality] | None = None) -> Work:
        async def body(task: int, per_task: int, stats: dict[str, int]) -> None:
            # this task's own context: the one its setup wrote in, else a fresh one (no writes)
            found = None if context is None else context.get(task)
            use_causality(found if found is not None else Causality())
            for n in range(per_task):
                async with transaction(database=db, read_only=True) as session:
                    await _read(session, _key(task, n))
                    stats["replica"] += "repom_replica" in session.sync_session.info
            stats["reads"] += per_task

        return Work(body)

    def sa_reads(*names: str, maker: Any = None) -> Work:
        chosen = [makers[name] for name in names] if maker is None else [maker]
        turn = [0]

        async def body(task: int, per_task: int, stats: dict[str, int]) -> None:
            for n in range(per_task):
                index = turn[0] % len(chosen)
                turn[0] += 1
                await _sa_read(chosen[index], _key(task, n))
                stats["replica"] += maker is None and names[index] != "primary"
            stats["reads"] += per_task

        return Work(body)

    def repom_pairs(db: AsyncDatabase, replica: bool | None = None) -> Work:
        async def body(task: int, per_task: int, stats: dict[str, int]) -> None:
            use_causality(Causality())  # this task's own read-your-writes context
            for n in range(per_task):
                key = _key(task, n)
                async with transaction(database=db) as session:
                    wrote = await session.scalar(_bump(key).returning(items.c.value))
                async with transaction(database=db, read_only=True, replica=replica) as session:
                    got = await _read(session, key)
                    stats["replica"] += "repom_replica" in session.sync_session.info
                stats["stale"] += got < int(wrote or 0)
            stats["reads"] += per_task

        return Work(body)

    def sa_pairs(write: Any, read: Any, on_replica: bool) -> Work:
        async def body(task: int, per_task: int, stats: dict[str, int]) -> None:
            for n in range(per_task):
                key = _key(task, n)
                wrote = await _sa_write(write, key)
                got = await _sa_read(read, key)
                stats["stale"] += got < wrote
            stats["reads"] += per_task
            stats["replica"] += per_task if on_replica else 0

        return Work(body)

    async def write_once(task: int) -> None:
        holder = holders[task] = Causality()
        use_causality(holder)
        async with transaction(database=repom1) as session:
            await session.execute(_bump(_key(task, 0)))

    def after_write() -> Work:
        return Work(repom_reads(repom1, holders).body, setup=write_once)

    def never_wrote() -> Work:
        async def setup(task: int) -> None:
            holders.pop(task, None)

        return Work(repom_reads(repom1, holders).body, setup=setup)

    work = {
        "reads": {
            READS[0]: repom_reads(repom0),
            READS[1]: repom_reads(repom1),
            READS[2]: repom_reads(repom2),
            READS[3]: sa_reads("primary"),
            READS[4]: sa_reads("standby 1"),
            READS[5]: sa_reads("standby 1", "standby 2"),
            READS[6]: sa_reads(*SERVERS),
            READS[7]: sa_reads("primary", maker=aa),
        },
        "pairs": {
            PAIRS[0]: repom_pairs(repom1),
            PAIRS[1]: repom_pairs(repom1, replica=False),
            PAIRS[2]: repom_pairs(repom0),
            PAIRS[3]: sa_pairs(makers["primary"], makers["primary"], False),
            PAIRS[4]: sa_pairs(makers["primary"], makers["standby 1"], True),
            PAIRS[5]: sa_pairs(aa, aa, False),
        },
        "after": {
            AFTER[0]: never_wrote(),
            AFTER[1]: after_write(),
            AFTER[2]: sa_reads("standby 1"),
        },
    }
    flat = {f"{section}: {name}": w for section, ws in work.items() for name, w in ws.items()}
    closers = [repom0.dispose, repom1.dispose, repom2.dispose]
    closers += [engine.dispose for engine in engines.values()]
    return flat, closers, repom1


def _count_polls(db: AsyncDatabase) -> tuple[dict[str, int], Callable[[], None]]:
    """Diagnostics only (never during timed batches): statements repom sends to the replica."""
    counts = {"checks": 0, "polls": 0}
    engine = db.replicas[0].engine.sync_engine

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_sleep" in statement:
            counts["polls"] += 1
        elif "pg_is_in_recovery" in statement:
            counts["checks"] += 1

    event.listen(engine, "before_cursor_execute", seen)
    return counts, lambda: event.remove(engine, "before_cursor_execute", seen)


def _skips() -> dict[str, int]:
    """Replica skips so far in this process (repom counts them), by reason."""
    totals: dict[str, int] = {}
    for (_database, _replica, reason), count in replica_skip_counts().items():
        totals[reason] = totals.get(reason, 0) + count
    return totals


async def _client_loop(conn: Any, urls: dict[str, str], tasks: list[int]) -> None:
    # repom logs every replica skip as a warning; the tables count them instead
    logging.getLogger("repom.replicas").setLevel(logging.ERROR)
    work, closers, ryw_db = _build(urls, len(tasks))
    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            break
        name, per_task, diagnose = message
        chosen = work[name]
        stats = {"reads": 0, "replica": 0, "stale": 0}
        if chosen.setup is not None:
            await asyncio.gather(*(chosen.setup(t) for t in tasks))
        counts, stop = _count_polls(ryw_db) if diagnose else ({}, None)
        skipped = _skips()
        cpu = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(chosen.body(t, per_task, stats) for t in tasks))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if stop is not None:
            stop()
        for reason, count in _skips().items():
            if count > skipped.get(reason, 0):
                stats[f"skip {reason}"] = count - skipped.get(reason, 0)
        conn.send((wall, cpu, stats | counts))
    for close in closers:
        await close()
    conn.send("closed")


def client(conn: Any, urls: dict[str, str], tasks: list[int]) -> None:
    """Entry point of one client process (spawned): runs what the parent sends."""
    asyncio.run(_client_loop(conn, urls, tasks))


# --------------------------------------------------------------------------- CPU accounting


def _on_cpu(pid: int) -> tuple[int, float]:
    """(parent pid, seconds on a CPU) of *pid* (scheduler clock, ns precision); (0, 0.0) when it
    is gone.  PostgreSQL processes are single-threaded, so the main thread is the process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        ran = Path(f"/proc/{pid}/schedstat").read_text().split()[0]
    except OSError:
        return 0, 0.0
    return int(raw[raw.rindex(")") + 2 :].split()[1]), int(ran) / 1e9


def _server_cpu(postmasters: dict[str, int]) -> dict[str, float]:
    """CPU seconds of every server so far: its postmaster and the postmaster's children
    (backends, walsender, walreceiver, startup/replay, checkpointer, ...)."""
    totals = {name: _on_cpu(pid)[1] for name, pid in postmasters.items()}
    owner = {pid: name for name, pid in postmasters.items()}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid, seconds = _on_cpu(int(entry))
            if ppid in owner:
                totals[owner[ppid]] += seconds
    return totals


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


@dataclass
class Batch:
    wall: float
    rate: float
    shares: dict[str, float]  # share of the machine's CPU: clients, each server, other, idle
    stats: dict[str, int] = field(default_factory=dict)
    client_us: float = 0.0  # client processes' CPU time per operation
    server_us: float = 0.0  # the three servers' CPU time per operation


class Clients:
    """The client processes; each runs its share of the 32 tasks for every batch."""

    def __init__(self, urls: dict[str, str], procs: int, postmasters: dict[str, int]) -> None:
        context = multiprocessing.get_context("spawn")
        self.postmasters = postmasters
        self.pipes: list[Any] = []
        self.processes: list[Any] = []
        for index in range(procs):
            ours, theirs = context.Pipe()
            tasks = list(range(index, TASKS, procs))
            process = context.Process(target=client, args=(theirs, urls, tasks), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a client process did not start")

    def run(self, name: str, operations: int, diagnose: bool = False) -> Batch:
        per_task = max(1, operations // TASKS)
        servers = _server_cpu(self.postmasters)
        busy, total = _machine()
        began = time.perf_counter()
        for pipe in self.pipes:
            pipe.send((name, per_task, diagnose))
        answers = [pipe.recv() for pipe in self.pipes]
        capacity = (time.perf_counter() - began) * (os.cpu_count() or 1)  # CPU-seconds
        busy_after, total_after = _machine()
        servers_after = _server_cpu(self.postmasters)
        wall = max(answer[0] for answer in answers)
        shares = {"clients": sum(answer[1] for answer in answers) / capacity}
        for server in self.postmasters:
            shares[server] = (servers_after[server] - servers[server]) / capacity
        used = (busy_after - busy) / ((total_after - total) or 1)
        shares["other"] = max(0.0, used - sum(shares.values()))
        shares["idle"] = 1 - used
        stats: dict[str, int] = {}
        for answer in answers:
            for key, value in answer[2].items():
                stats[key] = stats.get(key, 0) + value
        operations = per_task * TASKS
        client_cpu = sum(answer[1] for answer in answers)
        server_cpu = sum(servers_after[name] - servers[name] for name in self.postmasters)
        return Batch(
            wall,
            operations / wall,
            shares,
            stats,
            client_us=client_cpu / operations * 1e6,
            server_us=server_cpu / operations * 1e6,
        )

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                pipe.recv()
            except EOFError:
                pass
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()


# --------------------------------------------------------------------------- the run


def _ratios(batches: dict[str, list[Batch]], base: str) -> dict[str, float]:
    return {
        name: statistics.median(b.rate / o.rate for b, o in zip(values, batches[base], strict=True))
        for name, values in batches.items()
    }


def _shares(values: list[Batch]) -> str:
    """The CPU columns: CPU time per operation (clients, servers), then shares of the machine."""
    keys = ["clients", *SERVERS, "other", "idle"]
    per_op = [
        f"{statistics.median(b.client_us for b in values):,.0f}",
        f"{statistics.median(b.server_us for b in values):,.0f}",
    ]
    shares = [f"{statistics.median(b.shares[k] for b in values):.0%}" for k in keys]
    return " | ".join(per_op + shares)


_REPLAY_SAMPLE = text(
    "SELECT (SELECT coalesce(wait_event, 'running') FROM pg_stat_activity "
    "WHERE backend_type = 'startup'), "
    "CASE WHEN pg_last_wal_receive_lsn() IS NULL "  # repom's formula for a replica's lag
    "OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


@dataclass
class Replay:
    """What standby 1's replay (startup) process did during the diagnostic batch."""

    waits: dict[str, int] = field(default_factory=dict)
    max_lag: float = 0.0


def _sample_replay(url: str, stop: threading.Event, into: Replay) -> None:
    """Poll standby 1 every ~5 ms in autocommit (no snapshot held between samples)."""
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                wait, lag = conn.execute(_REPLAY_SAMPLE).one()
                into.waits[str(wait)] = into.waits.get(str(wait), 0) + 1
                into.max_lag = max(into.max_lag, float(lag or 0))
                stop.wait(0.005)
    finally:
        engine.dispose()


def measure(clients: Clients, settings: dict[str, Any], standby_url: str) -> str:
    rounds, n = settings["rounds"], settings["transactions"]
    pairs_n = settings["pairs"] = max(TASKS, n // 2)
    for section, names, count in (("reads", READS, n), ("pairs", PAIRS, pairs_n)):
        for name in names:  # warm every pool (and every replica's first lag check)
            clients.run(f"{section}: {name}", min(count, TASKS * 4))
    for name in AFTER:
        clients.run(f"after: {name}", TASKS * 4)
    reads: dict[str, list[Batch]] = {name: [] for name in READS}
    pairs: dict[str, list[Batch]] = {name: [] for name in PAIRS}
    after: dict[str, list[Batch]] = {name: [] for name in AFTER}
    for r in range(rounds):  # one round = every variant of every section once
        for section, into, count in (
            ("reads", reads, n),
            ("pairs", pairs, pairs_n),
            ("after", after, n),
        ):
            names = list(into)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                into[name].append(clients.run(f"{section}: {name}", count))
    # diagnostics, after the timed rounds: statements repom sent to the standby per read, and
    # what the standby's replay process was doing meanwhile
    diag: dict[str, Batch] = {}
    replay = Replay()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_replay, args=(standby_url, stop, replay))
    sampler.start()
    try:
        diag[PAIRS[0]] = clients.run(f"pairs: {PAIRS[0]}", pairs_n, diagnose=True)
    finally:
        stop.set()
        sampler.join()
    for name in AFTER[:2]:
        diag[name] = clients.run(f"after: {name}", n, diagnose=True)
    return report(reads, pairs, after, diag, replay, settings)


def _served(values: list[Batch]) -> str:
    """Share of all the variant's reads (every round) that a standby served."""
    reads = sum(b.stats.get("reads", 0) for b in values)
    return f"{sum(b.stats.get('replica', 0) for b in values) / reads:.0%}" if reads else "-"


def _skipped(values: list[Batch]) -> str:
    """Replica skips repom counted during the variant's batches, by reason (every round)."""
    totals: dict[str, int] = {}
    for batch in values:
        for key, count in batch.stats.items():
            if key.startswith("skip "):
                totals[key[5:]] = totals.get(key[5:], 0) + count
    return ", ".join(f"{reason} {count}" for reason, count in sorted(totals.items())) or "-"


def _per_read(batch: Batch) -> str:
    reads = batch.stats.get("reads", 0) or 1
    return (
        f"{batch.stats.get('checks', 0) / reads:.2f} state checks and "
        f"{batch.stats.get('polls', 0) / reads:.2f} waits of 5 ms per read"
    )


def _delta(batches: dict[str, list[Batch]], name: str, base: str) -> str:
    """*name* against *base*: wall time, client CPU and server CPU per operation."""

    def med(key: Callable[[Batch], float], which: str) -> float:
        return statistics.median(key(b) for b in batches[which])

    wall = med(lambda b: 1e6 / b.rate, name) - med(lambda b: 1e6 / b.rate, base)
    client = med(lambda b: b.client_us, name) - med(lambda b: b.client_us, base)
    server = med(lambda b: b.server_us, name) - med(lambda b: b.server_us, base)
    ratio = _ratios(batches, base)[name]
    return (
        f"{wall:+,.0f} µs of batch time per operation ({ratio:.2f}x the throughput), "
        f"client CPU {client:+,.0f} µs, server CPU {server:+,.0f} µs"
    )


def report(
    reads: dict[str, list[Batch]],
    pairs: dict[str, list[Batch]],
    after: dict[str, list[Batch]],
    diag: dict[str, Batch],
    replay: Replay,
    settings: dict[str, Any],
) -> str:
    rounds, n, pairs_n = settings["rounds"], settings["transactions"], settings["pairs"]
    procs, feedback = settings["procs"], settings["hot_standby_feedback"]
    cpus = os.cpu_count() or 1
    cpu_head = (
        "client CPU µs/op | server CPU µs/op | "
        "CPU: clients | primary | standby 1 | standby 2 | other | idle"
    )
    cpu_rule = "---:|---:|---:|---:|---:|---:|---:|---:"
    every = [b for section in (reads, pairs, after) for v in section.values() for b in v]
    idle = statistics.median(b.shares["idle"] for b in every)
    other = statistics.median(b.shares["other"] for b in every)
    clients = statistics.median(b.shares["clients"] for b in every)
    lines = [
        f"PostgreSQL 15 primary + 2 streaming hot standbys, all on this machine ({cpus} CPUs); "
        f"{TASKS} asyncio tasks over {procs} client processes, asyncpg, {ROWS:,} rows; median "
        f"of {rounds} interleaved rounds; standbys with hot_standby_feedback = "
        f"{'on' if feedback else 'off (the default)'}; repom with its defaults (configuration "
        "line at the end) except that every pool is as large as its process's task count.  "
        "*On a standby*: share of all reads a standby served; "
        "*skips*: replicas repom skipped, by reason.  *client/server CPU µs/op*: CPU time of "
        "the client processes, and of the three servers (postmaster and children, scheduler "
        "clock), per operation (transaction or pair): less disturbed than throughput by other "
        "load on the machine.  *CPU* columns: share of the whole machine's CPU during "
        "the batch: the client processes, each server, other processes and the kernel, idle.  "
        "All figures are medians over the rounds.",
        "",
    ]
    if idle < 0.1:
        lines.append(
            f"**The machine's {cpus} CPUs were saturated** (median idle {idle:.0%}; the client "
            f"processes alone used {clients:.0%} of it): the clients and all three servers share "
            "the same CPUs, so adding replicas cannot add capacity here, and more replicas need "
            "not raise throughput; moving reads to standbys only changes where the same CPU is "
            "spent.  On separate machines each standby brings its own CPUs."
        )
    if other > 0.1:
        lines.append(
            f"Processes outside this benchmark used a median {other:.0%} of the machine's CPU "
            "during the batches: every figure is lower than on a quiet machine."
        )
    lines += [
        "",
        f"### 1. Read throughput ({n} read-only transactions per batch: SELECT by key + "
        f"SELECT of {RANGE} rows)",
        "",
        f"| variant | transactions/s | vs SQLAlchemy, primary | on a standby | skips | "
        f"{cpu_head} |",
        f"|---|---:|---:|---:|---|{cpu_rule}|",
    ]
    ratio = _ratios(reads, READS[3])
    for name, values in reads.items():
        rate = statistics.median(b.rate for b in values)
        lines.append(
            f"| {name} | {rate:,.0f} | {ratio[name]:.2f}x | {_served(values)} | "
            f"{_skipped(values)} | {_shares(values)} |"
        )
    lagging = sum(
        b.stats.get("skip lagging", 0) for v in (*reads.values(), *after.values()) for b in v
    )
    if lagging:
        lines += [
            "",
            f"repom skipped a replica as lagging {lagging} time(s) during read-only batches.  "
            "repom's lag is `now() - pg_last_xact_replay_timestamp()` whenever the standby has "
            "received WAL it has not replayed yet: after a stretch without commits on the "
            "primary (read-only batches), any WAL without a commit (page pruning by the reads, "
            "a checkpoint) makes a standby that is milliseconds behind look as far behind as "
            "the time since the last commit, past replica_max_lag.",
        ]
    by_replicas = _ratios(reads, READS[0])
    lines += [
        "",
        f"repom with 1 replica / without: {by_replicas[READS[1]]:.2f}x; with 2 replicas / "
        f"without: {by_replicas[READS[2]]:.2f}x (median of the per-round ratios).",
    ]

    ratio = _ratios(pairs, PAIRS[3])
    us = {name: 1e6 / statistics.median(b.rate for b in v) for name, v in pairs.items()}
    lines += [
        "",
        f"### 2. Read-your-writes ({pairs_n} pairs per batch: write transaction `UPDATE ... "
        "RETURNING` on the primary, then a read-only transaction reading the row back)",
        "",
        f"µs per pair = batch time / pairs ({TASKS} tasks at once, so one task waits about "
        f"{TASKS}x that for each pair).  *Stale*: the read returned an older value than the "
        "write just committed.",
        "",
        f"| variant | pairs/s | µs per pair | vs SQLAlchemy, primary | on a standby | skips | "
        f"stale | {cpu_head} |",
        f"|---|---:|---:|---:|---:|---|---:|{cpu_rule}|",
    ]
    for name, values in pairs.items():
        rate = statistics.median(b.rate for b in values)
        stale = sum(b.stats["stale"] for b in values)
        total = sum(b.stats["reads"] for b in values)
        lines.append(
            f"| {name} | {rate:,.0f} | {us[name]:,.0f} | {ratio[name]:.2f}x | "
            f"{_served(values)} | {_skipped(values)} | {stale} of {total} | "
            f"{_shares(values)} |"
        )
    ryw = diag[PAIRS[0]]
    samples = sum(replay.waits.values()) or 1
    lines += [
        "",
        f"Read-your-writes on the replica vs the same reads pinned to the primary "
        f"(replica=False): {_delta(pairs, PAIRS[0], PAIRS[1])}.  replica=False vs no replicas at "
        "all (what remains is the write's `pg_current_wal_lsn()` round trip after COMMIT): "
        f"{_delta(pairs, PAIRS[1], PAIRS[2])}.  repom without replicas vs SQLAlchemy: "
        f"{_delta(pairs, PAIRS[2], PAIRS[3])}.",
        "",
        f"Diagnostics, one extra batch of {ryw.stats['reads']} read-your-writes pairs after the "
        f"timed rounds (not in the table): {_per_read(ryw)}; "
        f"{ryw.stats['reads'] - ryw.stats['replica']} reads went to the primary (skips: "
        f"{_skipped([ryw])}).  Standby 1's replay process meanwhile, sampled every ~5 ms: "
        + ", ".join(
            f"{wait} {count / samples:.0%}"
            for wait, count in sorted(replay.waits.items(), key=lambda item: -item[1])
        )
        + f"; lag as repom computes it up to {replay.max_lag:.2f} s.",
    ]
    if replay.waits.get("RecoveryConflictSnapshot") and not feedback:
        lines += [
            "",
            "RecoveryConflictSnapshot: the standby's replay stops at a cleanup record (the "
            "UPDATEs' dead row versions, pruned on the primary) until every standby "
            "transaction whose snapshot may still see those rows has ended.  repom's "
            "read-your-writes wait polls inside its read-only transaction on the standby "
            "(`pg_sleep(0.005)` in a loop, up to replica_wait), so a waiting read can hold up "
            "the very replay it waits for; it then gives up after replica_wait and reads from "
            "the primary.  `--hot-standby-feedback` runs the standbys with "
            "hot_standby_feedback = on, which removes these conflicts.",
        ]

    ratio = _ratios(after, AFTER[0])
    lines += [
        "",
        f"### 3. One read-only transaction on the replica: context without and with a prior "
        f"write ({n} per batch)",
        "",
        f"| variant | transactions/s | µs per transaction | vs never wrote | on a standby | "
        f"skips | {cpu_head} |",
        f"|---|---:|---:|---:|---:|---|{cpu_rule}|",
    ]
    for name, values in after.items():
        rate = statistics.median(b.rate for b in values)
        lines.append(
            f"| {name} | {rate:,.0f} | {1e6 / rate:,.0f} | {ratio[name]:.2f}x | "
            f"{_served(values)} | {_skipped(values)} | {_shares(values)} |"
        )
    lines += [
        "",
        f"Context that wrote before vs never wrote: {_delta(after, AFTER[1], AFTER[0])}.  "
        f"Statements repom sent to the standby (diagnostic batches of {n} reads after the timed "
        f"rounds): never wrote, {_per_read(diag[AFTER[0]])}; wrote before, "
        f"{_per_read(diag[AFTER[1]])}.",
    ]
    return "\n".join(lines)


def _postmaster(server: PostgresInstance) -> int:
    return int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transactions", type=int, default=960, help="read transactions per batch")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument(
        "--hot-standby-feedback",
        action="store_true",
        help="run the standbys with hot_standby_feedback = on (default: PostgreSQL's off)",
    )
    args = parser.parse_args(argv)
    missing = topology_available()
    if missing is not None:
        print(f"bench.replicas skipped: {missing}")
        return
    root = make_root("repom-bench-replicas-")
    primary = PostgresInstance(root / "primary")
    standbys: list[PostgresInstance] = []
    clients: Clients | None = None
    try:
        primary.start()
        engine = create_engine(primary.url())
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM bench_replica_items"))
            conn.execute(
                items.insert(),
                [{"id": i, "value": 0, "name": f"item {i}"} for i in range(1, ROWS + 1)],
            )
            conn.execute(text("ANALYZE bench_replica_items"))
        engine.dispose()
        for index in (1, 2):
            settings = {"hot_standby_feedback": "on"} if args.hot_standby_feedback else {}
            standbys.append(primary.standby(root / f"standby{index}", **settings))
        servers = dict(zip(SERVERS, [primary, *standbys], strict=True))
        urls = {name: server.url(driver="asyncpg") for name, server in servers.items()}
        postmasters = {name: _postmaster(server) for name, server in servers.items()}
        clients = Clients(urls, args.procs, postmasters)
        table = measure(clients, vars(args), servers["standby 1"].url())
    finally:
        if clients is not None:
            clients.close()
        for standby in standbys:
            standby.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)
    config = RepomConfig()
    extra = {
        "pool_ping_idle": getattr(config, "pool_ping_idle", None),
        "replica_wait": config.replica_wait,
        "replica_max_lag": config.replica_max_lag,
        "standbys": 2,
        "hot_standby_feedback": "on" if args.hot_standby_feedback else "off",
        "client processes": args.procs,
        "pools in this run": f"{-(-TASKS // args.procs)} per engine, no overflow",
    }
    table += "\n\n" + stamp(extra)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replicas.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
