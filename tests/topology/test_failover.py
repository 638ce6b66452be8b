"""Multi-host URLs and failover to a promoted standby, on real servers (issue 16).

Each test builds its own PostgreSQL 15 pair (a primary and a streaming hot standby made with
``pg_basebackup -R``) on free loopback ports; the session's PgBouncer topology is not touched.

* A libpq multi-host URL (``h1:p1,h2:p2`` and SQLAlchemy's ``?host=h1:p1&host=h2:p2``) reaches
  both drivers with ``target_session_attrs``: listing the standby first, ``read-write`` lands
  on the primary and ``any`` on the standby.
* Failover: with synchronous replication (``synchronous_standby_names = '*'``: a COMMIT is
  acknowledged only once the standby has it), 4 writers insert unique ids through
  ``@transactional(retries=RetryPolicy(idempotent=True))``.  Mid-load the primary is killed
  (``pg_ctl stop -m immediate``) and the standby promoted.  In-flight work fails with
  ``ConnectionLost``/``CommitOutcomeUnknown``, the retry carries it to the new primary, and
  every acknowledged id is there exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from repom.config import RepomConfig
from repom.database import AsyncDatabase, Database
from repom.exceptions import CommitOutcomeUnknown, ConnectionLost
from repom.retry import RetryPolicy, retry_listeners
from repom.transactions import current_session, transactional
from tests.support import IN_CI
from tests.support.topology import PostgresInstance, make_root, topology_available

WRITERS = 4
LOAD_BEFORE_KILL = 1.0  # seconds of load on the old primary
OUTAGE = 0.5  # seconds between the kill and the promotion
LOAD_AFTER_SWITCH = 1.5  # seconds of load on the new primary
CONNECT_TIMEOUT = 2  # seconds: psycopg per host, asyncpg for the whole attempt

WHERE = text("SELECT inet_server_port(), pg_is_in_recovery()")
INSERT = text(
    "INSERT INTO failover_writes (id) VALUES (:id) ON CONFLICT (id) DO NOTHING "
    "RETURNING inet_server_port()"
)
WHERE_AM_I = text("SELECT inet_server_port()")
POLICY = RetryPolicy(max_retries=60, delay=0.02, max_delay=0.25, idempotent=True)


@dataclass
class Pair:
    primary: PostgresInstance
    standby: PostgresInstance


def _require_servers() -> None:
    missing = topology_available()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"topology tests cannot run: {missing}")
        pytest.skip(missing)


def _build_pair(prefix: str, **primary_settings: str) -> tuple[Pair, Any]:
    root = make_root(prefix)
    primary = PostgresInstance(root / "primary", settings=dict(primary_settings))
    primary.start()
    # pg_basebackup copies postgresql.conf: without this, the promoted standby would make every
    # COMMIT wait for a synchronous standby of its own that does not exist
    standby = primary.standby(root / "standby", synchronous_standby_names="''")
    _wait_streaming(primary)
    return Pair(primary, standby), root


def _teardown(pair: Pair | None, root: Any) -> None:
    if pair is not None:
        pair.standby.stop()
        pair.primary.stop()
    shutil.rmtree(root, ignore_errors=True)


def _conninfo(server: PostgresInstance) -> str:
    return f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres connect_timeout=5"


def _wait_streaming(primary: PostgresInstance, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(_conninfo(primary), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchone()
            if row and row[0] >= 1:
                return
            time.sleep(0.05)
    raise RuntimeError("the standby did not start streaming")


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """A primary and an (asynchronous) hot standby, for the URL tests of this module."""
    _require_servers()
    built: Pair | None = None
    root = None
    try:
        built, root = _build_pair("repom-multihost-")
        yield built
    finally:
        if root is not None:
            _teardown(built, root)


@pytest.fixture
def sync_pair() -> Iterator[Pair]:
    """A fresh primary with synchronous replication to its standby (killed by the test)."""
    _require_servers()
    built: Pair | None = None
    root = None
    try:
        built, root = _build_pair("repom-failover-", synchronous_standby_names="'*'")
        with psycopg.connect(_conninfo(built.primary), autocommit=True) as conn:
            # waits for the standby's acknowledgement, like every commit from here on
            conn.execute("CREATE TABLE failover_writes (id integer PRIMARY KEY)")
            row = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchone()
            assert row is not None and row[0] == "sync", row
        yield built
    finally:
        if root is not None:
            _teardown(built, root)


def comma_url(*servers: PostgresInstance, attrs: str) -> str:
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    return (
        f"postgresql://postgres@{hosts}/postgres"
        f"?target_session_attrs={attrs}&connect_timeout={CONNECT_TIMEOUT}"
    )


def query_url(*servers: PostgresInstance, attrs: str) -> str:
    hosts = "&".join(f"host=127.0.0.1:{s.port}" for s in servers)
    return (
        f"postgresql+psycopg://postgres@/postgres?{hosts}"
        f"&target_session_attrs={attrs}&connect_timeout={CONNECT_TIMEOUT}"
    )


def config() -> RepomConfig:
    return RepomConfig(
        pool_class="queue", pool_size=WRITERS, max_overflow=0, pool_pre_ping=True, pool_timeout=10
    )


# ----------------------------------------------------------------------------- multi-host URLs


@pytest.mark.parametrize("form", [comma_url, query_url], ids=["comma", "query"])
@pytest.mark.parametrize(
    ("attrs", "lands_on"), [("read-write", "primary"), ("any", "standby")], ids=["rw", "any"]
)
def test_multihost_url_sync(pair: Pair, form: Any, attrs: str, lands_on: str) -> None:
    # the standby is listed first: only target_session_attrs=read-write skips it
    db = Database(form(pair.standby, pair.primary, attrs=attrs), config=config())
    try:
        with db.engine.connect() as conn:
            port, in_recovery = conn.execute(WHERE).one()
    finally:
        db.dispose()
    server = getattr(pair, lands_on)
    assert (port, in_recovery) == (server.port, lands_on == "standby")


@pytest.mark.parametrize("form", [comma_url, query_url], ids=["comma", "query"])
@pytest.mark.parametrize(
    ("attrs", "lands_on"), [("read-write", "primary"), ("any", "standby")], ids=["rw", "any"]
)
async def test_multihost_url_async(pair: Pair, form: Any, attrs: str, lands_on: str) -> None:
    db = AsyncDatabase(form(pair.standby, pair.primary, attrs=attrs), config=config())
    try:
        async with db.engine.connect() as conn:
            port, in_recovery = (await conn.execute(WHERE)).one()
    finally:
        await db.dispose()
    server = getattr(pair, lands_on)
    assert (port, in_recovery) == (server.port, lands_on == "standby")


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_multihost_without_a_writable_server_is_connection_lost(
    pair: Pair, driver: str
) -> None:
    """Only the standby listed, read-write asked: a typed, retryable error on both drivers."""
    url = comma_url(pair.standby, pair.standby, attrs="read-write")
    if driver == "psycopg":
        db = Database(url, config=config())
        try:
            with pytest.raises(ConnectionLost):
                db.engine.connect().close()
        finally:
            db.dispose()
    else:
        adb = AsyncDatabase(url, config=config())
        try:
            with pytest.raises(ConnectionLost):
                await (await adb.engine.connect()).close()
        finally:
            await adb.dispose()


# ----------------------------------------------------------------------------------- failover


@dataclass
class Load:
    """What the writers saw: acknowledged ids, retries, failures, timings."""

    pair: Pair
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    acked: dict[int, int] = field(default_factory=dict)  # id -> server port that acknowledged it
    retried: list[BaseException] = field(default_factory=list)
    failed: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    killed_at: float | None = None
    promoted_at: float | None = None
    first_on_new: float | None = None

    def next_id(self) -> int:
        with self.lock:
            return next(self.ids)

    def ack(self, ident: int, port: int) -> None:
        with self.lock:
            self.acked[ident] = port
            if port == self.pair.standby.port and self.first_on_new is None:
                self.first_on_new = time.monotonic()

    def on_retry(self, attempt: int, error: BaseException) -> None:
        with self.lock:
            self.retried.append(error)

    def switched_long_enough(self) -> bool:
        return (
            self.first_on_new is not None
            and time.monotonic() - self.first_on_new >= LOAD_AFTER_SWITCH
        )


def _kill_and_promote(load: Load) -> None:
    load.killed_at = time.monotonic()
    load.pair.primary.kill()
    time.sleep(OUTAGE)
    load.pair.standby.promote()
    load.promoted_at = time.monotonic()


def _verify(load: Load, label: str) -> None:
    pair = load.pair
    assert load.failed == [], [repr(e) for e in load.failed[:3]]
    assert load.killed_at is not None and load.first_on_new is not None
    # every error the retry saw was typed: a lost connection (statement, connect or a standby
    # refused by target_session_attrs) or a COMMIT whose outcome is unknown
    kinds = Counter(type(error).__name__ for error in load.retried)
    assert all(isinstance(e, ConnectionLost | CommitOutcomeUnknown) for e in load.retried), kinds
    assert load.retried, "the kill interrupted nothing: no retry happened"
    on_old = [i for i, port in load.acked.items() if port == pair.primary.port]
    on_new = [i for i, port in load.acked.items() if port == pair.standby.port]
    assert on_old and on_new, (len(on_old), len(on_new))
    with psycopg.connect(_conninfo(pair.standby), autocommit=True) as conn:
        port, in_recovery = conn.execute(
            "SELECT inet_server_port(), pg_is_in_recovery()"
        ).fetchone() or (0, 0)
        assert (port, in_recovery) == (pair.standby.port, False)
        rows = [r[0] for r in conn.execute("SELECT id FROM failover_writes").fetchall()]
    present = Counter(rows)
    assert all(n == 1 for n in present.values())
    missing = sorted(set(load.acked) - set(present))
    assert missing == [], f"acknowledged but lost: {missing[:10]}"
    # a writer stops only between writes, so every id it tried was acknowledged in the end
    # (after retries): no row the writers do not know about either
    assert set(present) == set(load.acked)
    switch = load.first_on_new - load.killed_at
    assert switch < 10, switch
    assert load.promoted_at is not None
    print(
        f"\n[{label}] switch (kill -> first write on the new primary): {switch:.3f}s; "
        f"promotion done {load.promoted_at - load.killed_at:.3f}s after the kill; "
        f"acknowledged {len(load.acked)} ({len(on_old)} old, {len(on_new)} new); "
        f"rows {len(rows)}; retries {len(load.retried)} {dict(kinds)}"
    )


def test_failover_to_promoted_standby_sync(sync_pair: Pair) -> None:
    load = Load(sync_pair)
    db = Database(
        comma_url(sync_pair.primary, sync_pair.standby, attrs="read-write"), config=config()
    )
    stop = threading.Event()

    @transactional(database=db, retries=POLICY)
    def write(ident: int) -> int:
        port: int = current_session().execute(INSERT, {"id": ident}).scalar_one_or_none() or 0
        if not port:  # the row was already there: an earlier attempt did commit
            port = current_session().execute(WHERE_AM_I).scalar_one()
        return port

    def writer() -> None:
        while not stop.is_set():
            ident = load.next_id()
            try:
                load.ack(ident, write(ident))
            except Exception as exc:
                with load.lock:
                    load.failed.append(exc)
                return

    retry_listeners.append(load.on_retry)
    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    try:
        with db.engine.connect() as conn:
            assert conn.execute(WHERE).one() == (sync_pair.primary.port, False)
        for thread in threads:
            thread.start()
        time.sleep(LOAD_BEFORE_KILL)
        _kill_and_promote(load)
        deadline = time.monotonic() + 15
        while not load.switched_long_enough() and time.monotonic() < deadline and not load.failed:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        retry_listeners.remove(load.on_retry)
    try:
        # the pool holds no connection to the dead server: every checkout lands on the new one
        sessions = [db.session() for _ in range(WRITERS)]
        ports = {s.execute(WHERE_AM_I).scalar_one() for s in sessions}
        for s in sessions:
            s.close()
        assert ports == {sync_pair.standby.port}
    finally:
        db.dispose()
    _verify(load, "psycopg")


async def test_failover_to_promoted_standby_async(sync_pair: Pair) -> None:
    load = Load(sync_pair)
    url = query_url(sync_pair.primary, sync_pair.standby, attrs="read-write")
    db = AsyncDatabase(url, config=config())
    stop = asyncio.Event()

    @transactional(database=db, retries=POLICY)
    async def write(ident: int) -> int:
        session = current_session()
        result = await session.execute(INSERT, {"id": ident})
        port: int = result.scalar_one_or_none() or 0
        if not port:
            port = (await session.execute(WHERE_AM_I)).scalar_one()
        return port

    async def writer() -> None:
        while not stop.is_set():
            ident = load.next_id()
            try:
                load.ack(ident, await write(ident))
            except Exception as exc:
                load.failed.append(exc)
                return

    retry_listeners.append(load.on_retry)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with db.engine.connect() as conn:
            assert (await conn.execute(WHERE)).one() == (sync_pair.primary.port, False)
        tasks = [asyncio.create_task(writer()) for _ in range(WRITERS)]
        await asyncio.sleep(LOAD_BEFORE_KILL)
        await asyncio.to_thread(_kill_and_promote, load)
        for _ in range(300):  # at most 15 s
            if load.switched_long_enough() or load.failed:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
        retry_listeners.remove(load.on_retry)
    try:
        sessions = [db.session() for _ in range(WRITERS)]
        ports = {(await s.execute(WHERE_AM_I)).scalar_one() for s in sessions}
        for s in sessions:
            await s.close()
        assert ports == {sync_pair.standby.port}
    finally:
        await db.dispose()
    _verify(load, "asyncpg")
