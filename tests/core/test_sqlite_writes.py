"""SQLite writers queue in the process, first come first served (repom._sqlite_writes).

One scenario body per behaviour, run sync (one thread per writer) and async (one task per
writer) against a real SQLite file.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select, text

from repom._sqlite_writes import WriteQueue, queue_for, write_statement
from repom.config import RepomConfig
from repom.database import AsyncDatabase, Database
from repom.exceptions import LockNotAvailable, TransactionError
from repom.transactions import IsolationLevel, Propagation
from repom.urls import convert_to_async_uri
from tests.core.models import Account, CoreBase, Entry
from tests.support import enter, maybe_await


class _SyncOnly:
    """Hide ``__aenter__`` so :func:`tests.support.enter` uses ``with``."""

    def __init__(self, cm: Any) -> None:
        self._cm = cm

    def __enter__(self) -> Any:
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)


class Writers:
    """A SQLite file, a repom database on it (sync or async) and a way to run writers at once."""

    def __init__(self, path: Path, is_async: bool, **settings: Any) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.is_async = is_async
        config = RepomConfig(database_url=self.url, **settings)
        self.db: Database | AsyncDatabase = (
            AsyncDatabase(convert_to_async_uri(self.url), config=config)
            if is_async
            else Database(self.url, config=config)
        )
        self.queue: WriteQueue = queue_for(str(path))
        self.threads = ThreadPoolExecutor(max_workers=40)

    @property
    def sync_engine(self) -> Any:
        engine = self.db.engine
        return engine.sync_engine if self.is_async else engine

    def tx(self, **options: Any) -> Any:
        scope = self.db.transaction(**options)
        return enter(scope if self.is_async else _SyncOnly(scope))

    async def run(self, value: Any) -> Any:
        return await maybe_await(value)

    def start(self, worker: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """Start *worker* now: a task (async), or a thread with an event loop of its own (sync).
        The future gives its result, or the exception it raised."""
        if self.is_async:

            async def catching() -> Any:
                try:
                    return await worker()
                except Exception as exc:
                    return exc

            return asyncio.ensure_future(catching())

        def in_thread() -> Any:
            try:
                return asyncio.run(worker())  # type: ignore[arg-type]
            except Exception as exc:
                return exc

        return asyncio.get_running_loop().run_in_executor(self.threads, in_thread)

    async def together(self, workers: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
        """Run every worker at once; their results or errors."""
        return list(await asyncio.gather(*(self.start(w) for w in workers)))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql))]
        finally:
            engine.dispose()


@pytest.fixture(params=["sync", "async"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Writers] = []

    def factory(**settings: Any) -> Writers:
        w = Writers(tmp_path / "writes.sqlite3", request.param == "async", **settings)
        made.append(w)
        return w

    setup = create_engine(f"sqlite:///{tmp_path / 'writes.sqlite3'}")
    CoreBase.metadata.create_all(setup)
    with setup.begin() as conn:
        conn.execute(
            Account.__table__.insert(),
            [{"id": i, "owner": f"o{i}", "balance": 1000} for i in range(1, 13)],
        )
    setup.dispose()
    yield factory
    for w in made:
        w.threads.shutdown(wait=True)
        await maybe_await(w.db.dispose())


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


async def hold_until(flag: threading.Event) -> None:
    """Wait for *flag* without blocking an event loop (works in a task and in a thread)."""
    while not flag.is_set():  # noqa: ASYNC110 - a thread's event, set from another loop
        await asyncio.sleep(0.002)


@pytest.mark.parametrize("begin", ["immediate", "deferred"])
async def test_writers_get_their_turn_in_arrival_order(make: Any, begin: str) -> None:
    w = make()
    options = {"isolation": IsolationLevel.SERIALIZABLE} if begin == "immediate" else {}
    release_first = threading.Event()

    def writer(i: int) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            async with w.tx(**options) as session:
                session.add(Entry(account_id=1, note=f"w{i}"))
                await w.run(session.flush())
                if i == 0:  # keep the turn until every other writer queued behind this one
                    await hold_until(release_first)

        return body

    n = 12
    started = [w.start(writer(0))]
    await wait_until(lambda: w.queue.busy)
    for i in range(1, n):
        started.append(w.start(writer(i)))
        await wait_until(lambda i=i: w.queue.queued == i)  # type: ignore[misc]
    release_first.set()
    results = await asyncio.gather(*started)
    assert [r for r in results if r is not None] == []
    notes = [r[0] for r in w.rows("SELECT note FROM core_entries ORDER BY id")]
    assert notes == [f"w{i}" for i in range(n)]
    assert not w.queue.busy and w.queue.queued == 0


async def test_concurrent_transfers_never_fail(make: Any) -> None:
    """32 writers that read, check and write two rows: no busy error, money preserved."""
    w = make()
    rng = random.Random(7)
    pairs = [rng.sample(range(1, 13), 2) for _ in range(96)]
    waited_before = w.queue.waited

    def transfer(a: int, b: int) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            async with w.tx() as session:
                query = select(Account).where(Account.id.in_([a, b])).order_by(Account.id)
                result = await w.run(session.execute(query.with_for_update()))
                found = {acc.id: acc for acc in result.scalars()}
                found[a].balance -= 5
                found[b].balance += 5
                session.add(Entry(account_id=a, note=f"{a}->{b}"))

        return body

    for chunk in range(0, len(pairs), 32):
        results = await w.together([transfer(a, b) for a, b in pairs[chunk : chunk + 32]])
        assert [r for r in results if isinstance(r, BaseException)] == []
    assert w.rows("SELECT sum(balance), count(*) FROM core_accounts") == [(12000, 12)]
    assert w.rows("SELECT count(*) FROM core_entries") == [(len(pairs),)]
    assert w.queue.waited > waited_before  # they really contended
    assert not w.queue.busy


async def test_for_update_takes_the_turn_before_it_reads(make: Any) -> None:
    w = make()
    seen: list[tuple[str, bool]] = []

    @event.listens_for(w.sync_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        raw = conn.connection.dbapi_connection
        seen.append((statement.split()[0], w.queue.owned_by(raw)))

    async with w.tx() as session:
        await w.run(session.execute(select(Account).where(Account.id == 1).with_for_update()))
        await w.run(session.execute(select(func.count()).select_from(Account)))
    async with w.tx() as session:
        await w.run(session.execute(select(Account).where(Account.id == 1)))
    assert seen == [
        *[("BEGIN", False), ("SELECT", True), ("SELECT", True)],
        *[("BEGIN", False), ("SELECT", False)],  # a plain read never queues
    ]
    assert not w.queue.busy


async def test_readers_do_not_wait_for_the_writer(make: Any) -> None:
    w = make()
    release = threading.Event()

    async def writer() -> None:
        async with w.tx() as session:
            await w.run(session.execute(text("UPDATE core_accounts SET balance = 1 WHERE id = 1")))
            await hold_until(release)

    async def readers() -> list[Any]:
        async with w.tx(read_only=True) as session:
            ro = (await w.run(session.execute(text("SELECT balance FROM core_accounts")))).all()
        async with w.tx() as session:
            plain = (await w.run(session.execute(text("SELECT count(*) FROM core_entries")))).all()
        return [len(ro), plain[0][0]]

    holding = w.start(writer)
    await wait_until(lambda: w.queue.busy)
    result = await asyncio.wait_for(w.start(readers), 2)  # neither reader queues
    assert w.queue.busy  # the writer still held its turn while they read
    release.set()
    assert await holding is None
    assert result == [12, 0]
    assert w.rows("SELECT balance FROM core_accounts WHERE id = 1") == [(1,)]


async def test_a_turn_that_never_comes_is_a_typed_error_and_writes_nothing(make: Any) -> None:
    w = make(sqlite_busy_timeout=0.3)
    release = threading.Event()

    async def holder() -> None:
        async with w.tx() as session:
            await w.run(session.execute(text("UPDATE core_accounts SET balance = 2 WHERE id = 2")))
            await hold_until(release)

    async def late() -> None:
        async with w.tx() as session:
            session.add(Entry(account_id=3, note="late"))

    first = w.start(holder)
    await wait_until(lambda: w.queue.busy)
    start = time.monotonic()
    error = await w.start(late)
    waited = time.monotonic() - start
    release.set()
    assert await first is None
    assert isinstance(error, LockNotAvailable)
    assert "waited 0.3" in str(error) and "1 writer(s) ahead" in str(error)
    assert "REPOM_SQLITE_BUSY_TIMEOUT" in str(error)
    assert 0.3 <= waited < 2
    assert w.rows("SELECT count(*) FROM core_entries") == [(0,)]
    assert w.rows("SELECT balance FROM core_accounts WHERE id = 2") == [(2,)]
    assert not w.queue.busy and w.queue.queued == 0


async def test_a_second_writer_in_the_same_task_fails_at_once(make: Any) -> None:
    w = make()
    start = time.monotonic()
    with pytest.raises(TransactionError, match="REQUIRES_NEW"):
        async with w.tx() as outer:
            outer.add(Entry(account_id=1, note="outer"))
            await w.run(outer.flush())
            async with w.tx(propagation=Propagation.REQUIRES_NEW) as inner:
                inner.add(Entry(account_id=1, note="inner"))
                await w.run(inner.flush())
    assert time.monotonic() - start < 2  # not the 5 s busy timeout
    assert w.rows("SELECT count(*) FROM core_entries") == [(0,)]
    assert not w.queue.busy


async def test_a_failed_transaction_gives_its_turn_back(make: Any) -> None:
    w = make()
    with pytest.raises(RuntimeError):
        async with w.tx() as session:
            session.add(Entry(account_id=1, note="doomed"))
            await w.run(session.flush())
            assert w.queue.busy
            raise RuntimeError("boom")
    assert not w.queue.busy
    async with w.tx() as session:
        session.add(Entry(account_id=1, note="next"))
    assert w.rows("SELECT note FROM core_entries") == [("next",)]


async def test_a_cancelled_waiter_leaves_the_queue(tmp_path: Path) -> None:
    """asyncio only: a task cancelled while it waits for its turn does not block the next."""
    path = tmp_path / "cancel.sqlite3"
    setup = create_engine(f"sqlite:///{path}")
    CoreBase.metadata.create_all(setup)
    with setup.begin() as conn:
        conn.execute(Account.__table__.insert(), [{"id": 1, "owner": "o1", "balance": 0}])
    setup.dispose()
    db = AsyncDatabase(convert_to_async_uri(f"sqlite:///{path}"))
    queue = queue_for(str(path))
    release = asyncio.Event()

    async def write(note: str, hold: bool = False) -> None:
        async with db.transaction() as session:
            session.add(Entry(account_id=1, note=note))
            await session.flush()
            if hold:
                await release.wait()

    try:
        first = asyncio.create_task(write("first", hold=True))
        await wait_until(lambda: queue.busy)
        doomed = asyncio.create_task(write("cancelled"))
        await wait_until(lambda: queue.queued == 1)
        third = asyncio.create_task(write("third"))
        await wait_until(lambda: queue.queued == 2)
        doomed.cancel()
        await wait_until(lambda: queue.queued == 1)
        release.set()
        await asyncio.wait_for(asyncio.gather(first, third), 5)
        assert doomed.cancelled()
        check = create_engine(f"sqlite:///{path}")
        with check.connect() as conn:
            notes = [r[0] for r in conn.execute(text("SELECT note FROM core_entries ORDER BY id"))]
        check.dispose()
        assert notes == ["first", "third"]
        assert not queue.busy and queue.queued == 0
    finally:
        await db.dispose()


def test_write_statements_are_told_apart_by_their_first_keyword() -> None:
    writes = ["INSERT INTO t VALUES (1)", "  update t set a=1", "DELETE FROM t",
              "CREATE TABLE x(a)", "WITH x AS (SELECT 1) DELETE FROM t",
              "REPLACE INTO t VALUES (1)"]  # fmt: skip
    reads = ["SELECT 1", "\n select * from t", "PRAGMA foreign_keys", "SAVEPOINT sa_1",
             "RELEASE SAVEPOINT sa_1", "ROLLBACK TO SAVEPOINT sa_1", "(SELECT 1) UNION (SELECT 2)",
             "EXPLAIN QUERY PLAN SELECT 1", "VALUES (1)"]  # fmt: skip
    assert [write_statement(s) for s in writes] == [True] * len(writes)
    assert [write_statement(s) for s in reads] == [False] * len(reads)


def test_the_queue_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "off.sqlite3"
    db = Database(f"sqlite:///{path}", config=RepomConfig(sqlite_write_queue=False))
    queue = queue_for(str(path))
    try:
        with db.transaction() as session:
            session.execute(text("CREATE TABLE t (a INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
            assert not queue.busy
    finally:
        db.dispose()
