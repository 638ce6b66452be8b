"""Pool liveness without a round trip per checkout (issue 17, item 3), on real servers.

repom's ``pool_pre_ping=True`` pings a pooled connection at checkout only when it sat idle in the
pool longer than ``pool_ping_idle`` seconds.  Pings are counted by wrapping the engine's own
``dialect.do_ping`` (the instance attribute; the class and other engines are untouched).

* (a) default config: units of work on a warm pool send no ping;
* (b) a connection idle longer than the threshold is pinged once, at checkout;
* (c) a restart of a PostgreSQL server of the test's own (``pg_ctl stop -m fast`` then start):
  with the default threshold at most the first unit of work fails, with idle connections pinged
  none does; sync psycopg and async asyncpg.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, pool, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.config import RepomConfig, build_config
from repom.database import AsyncDatabase, Database
from repom.engine import build_engine, install_liveness_check
from repom.exceptions import ConfigurationError
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.support import IN_CI, require_postgres
from tests.support.topology import PostgresInstance, make_root, topology_available

MODES = ["sync", "async"]


class LivenessBase(DeclarativeBase):
    pass


class Item(LivenessBase):
    __tablename__ = "pool_liveness_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    counter: Mapped[int]


# --------------------------------------------------------------------------- helpers


def _engine_of(db: Database | AsyncDatabase) -> Engine:
    return db.engine.sync_engine if isinstance(db, AsyncDatabase) else db.engine


def count_pings(db: Database | AsyncDatabase) -> list[int]:
    """Wrap the engine's ``dialect.do_ping``; the returned one-item list holds the count."""
    dialect = _engine_of(db).dialect
    original = dialect.do_ping
    calls = [0]

    def counting(dbapi_connection: Any) -> bool:
        calls[0] += 1
        return bool(original(dbapi_connection))

    setattr(dialect, "do_ping", counting)  # noqa: B010 - an instance attribute
    return calls


def make_db(url: str, mode: str, **config: Any) -> Database | AsyncDatabase:
    settings = RepomConfig(**{"pool_class": "queue", "pool_size": 3, "max_overflow": 0, **config})
    if mode == "async":
        return AsyncDatabase(convert_to_async_uri(url), config=settings)
    return Database(convert_to_sync_uri(url), config=settings)


async def unit_of_work(db: Database | AsyncDatabase, item_id: int = 1) -> None:
    """Session, get by id, change, commit, close."""
    if isinstance(db, AsyncDatabase):
        async with db.session() as session:
            item = await session.get(Item, item_id)
            assert item is not None
            item.counter += 1
            await session.commit()
    else:
        with db.session() as session:
            item = session.get(Item, item_id)
            assert item is not None
            item.counter += 1
            session.commit()


async def warm(db: Database | AsyncDatabase, connections: int = 3) -> None:
    """Open *connections* pooled connections at once, then give them back."""
    if isinstance(db, AsyncDatabase):
        conns = [await db.engine.connect() for _ in range(connections)]
        for conn in conns:
            await conn.execute(text("SELECT 1"))
        for conn in conns:
            await conn.close()
    else:
        sync_conns = [db.engine.connect() for _ in range(connections)]
        for sync_conn in sync_conns:
            sync_conn.execute(text("SELECT 1"))
        for sync_conn in sync_conns:
            sync_conn.close()


async def dispose(db: Database | AsyncDatabase) -> None:
    if isinstance(db, AsyncDatabase):
        await db.engine.dispose()
    else:
        db.engine.dispose()


def _create_table(url: str) -> None:
    engine = create_engine(convert_to_sync_uri(url))
    try:
        LivenessBase.metadata.drop_all(engine)
        LivenessBase.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO pool_liveness_items (id, counter) VALUES (1, 0)"))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = require_postgres()
    _create_table(url)
    return url


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, "soon"])
def test_invalid_ping_idle_names_the_option(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="pool_ping_idle"):
        RepomConfig(pool_ping_idle=value)


def test_invalid_ping_idle_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOM_POOL_PING_IDLE", "nan")
    with pytest.raises(ConfigurationError, match="REPOM_POOL_PING_IDLE"):
        build_config()


def test_ping_idle_default_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RepomConfig().pool_ping_idle == 10.0
    monkeypatch.setenv("REPOM_POOL_PING_IDLE", "2.5")
    assert build_config().pool_ping_idle == 2.5


def test_direct_install_refuses_a_negative_threshold(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}", pool_pre_ping=True)
    try:
        with pytest.raises(ConfigurationError, match="pool_ping_idle"):
            install_liveness_check(engine, -1.0)
    finally:
        engine.dispose()


def test_pool_choices(tmp_path: Any) -> None:
    """Who pings: memory SQLite and NullPool never; ``pool_ping_idle=0`` every checkout."""
    memory = build_engine("sqlite://", config=RepomConfig())
    assert isinstance(memory.pool, pool.StaticPool)
    assert memory.pool._pre_ping is False
    assert not memory.pool.dispatch.checkout
    null = build_engine("postgresql://u@h/db", config=RepomConfig(environment="test"))
    assert isinstance(null.pool, pool.NullPool)
    assert null.pool._pre_ping is False
    file_url = f"sqlite:///{tmp_path / 'f.sqlite3'}"
    idle = build_engine(file_url, config=RepomConfig())
    assert idle.pool._pre_ping is False  # SQLAlchemy's every-checkout ping replaced
    assert idle.pool.dispatch.checkout
    every = build_engine(file_url, config=RepomConfig(pool_ping_idle=0))
    assert every.pool._pre_ping is True
    off = build_engine(file_url, config=RepomConfig(pool_pre_ping=False))
    assert off.pool._pre_ping is False
    assert not off.pool.dispatch.checkout
    for engine in (memory, null, idle, every, off):
        engine.dispose()


# --------------------------------------------------------------------------- (a) and (b)


@pytest.mark.parametrize("mode", MODES)
async def test_warm_pool_sends_no_ping(pg_url: str, mode: str) -> None:
    db = make_db(pg_url, mode)  # the default pool_pre_ping=True, pool_ping_idle=10
    pings = count_pings(db)
    try:
        await warm(db)
        for _ in range(50):
            await unit_of_work(db)
        assert pings[0] == 0
        assert _engine_of(db).pool._pre_ping is False
    finally:
        await dispose(db)


@pytest.mark.parametrize("mode", MODES)
async def test_idle_connection_pinged_once_at_checkout(pg_url: str, mode: str) -> None:
    db = make_db(pg_url, mode, pool_size=1, pool_ping_idle=0.2)
    pings = count_pings(db)
    try:
        await unit_of_work(db)  # a fresh connection: never pinged
        await unit_of_work(db)
        assert pings[0] == 0
        await asyncio.sleep(0.3)
        await unit_of_work(db)
        assert pings[0] == 1
        await unit_of_work(db)  # straight back from the previous unit of work
        assert pings[0] == 1
        # the listeners survive dispose() (the pool is recreated with the same dispatch)
        await dispose(db)
        await unit_of_work(db)
        await asyncio.sleep(0.3)
        await unit_of_work(db)
        assert pings[0] == 2
    finally:
        await dispose(db)


@pytest.mark.parametrize("mode", MODES)
async def test_ping_idle_zero_pings_every_checkout(pg_url: str, mode: str) -> None:
    db = make_db(pg_url, mode, pool_size=1, pool_ping_idle=0)
    pings = count_pings(db)
    try:
        for _ in range(5):
            await unit_of_work(db)
        assert pings[0] == 4  # every checkout but the first (fresh) one
    finally:
        await dispose(db)


@pytest.mark.parametrize("mode", MODES)
async def test_pre_ping_off_never_pings(pg_url: str, mode: str) -> None:
    db = make_db(pg_url, mode, pool_size=1, pool_pre_ping=False, pool_ping_idle=0.05)
    pings = count_pings(db)
    try:
        await unit_of_work(db)
        await asyncio.sleep(0.1)
        await unit_of_work(db)
        assert pings[0] == 0
    finally:
        await dispose(db)


# --------------------------------------------------------------------------- (c) restart


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresInstance]:
    missing = topology_available()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"restart tests cannot run: {missing}")
        pytest.skip(missing)
    root = make_root("repom-liveness-")
    server = PostgresInstance(root)
    try:
        server.start()
        _create_table(server.url())
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def restart(server: PostgresInstance) -> None:
    server._pg_ctl("stop", "-m", "fast")
    server.restart()


async def run_after_restart(db: Database | AsyncDatabase, server: PostgresInstance) -> list[int]:
    await warm(db)
    for _ in range(5):
        await unit_of_work(db)
    restart(server)
    failures = []
    for index in range(50):
        try:
            await unit_of_work(db)
        except Exception:
            failures.append(index)
    return failures


@pytest.mark.parametrize("mode", MODES)
async def test_restart_with_defaults_fails_at_most_the_first(
    own_server: PostgresInstance, mode: str
) -> None:
    """Connections idle less than the threshold are not pinged: the first unit of work may meet
    a dead connection; SQLAlchemy then invalidates the whole pool and nothing else fails."""
    db = make_db(own_server.url(), mode)
    try:
        failures = await run_after_restart(db, own_server)
        assert failures in ([], [0])
    finally:
        await dispose(db)


@pytest.mark.parametrize("mode", MODES)
async def test_restart_with_idle_ping_fails_nothing(
    own_server: PostgresInstance, mode: str
) -> None:
    """Connections idle longer than the threshold are pinged: the dead one is found at checkout,
    the whole pool is invalidated, and no unit of work fails."""
    db = make_db(own_server.url(), mode, pool_ping_idle=0.3)
    pings = count_pings(db)
    try:
        await warm(db)
        await unit_of_work(db)
        restart(own_server)
        await asyncio.sleep(
            0.4
        )  # every pooled connection is now idle for longer than the threshold
        failures = []
        for index in range(50):
            try:
                await unit_of_work(db)
            except Exception:
                failures.append(index)
        assert failures == []
        # one failed ping invalidated the whole pool: the other connections were replaced, not
        # pinged one by one
        assert pings[0] == 1
    finally:
        await dispose(db)


def test_pool_status_reports_the_idle_ping(tmp_path: Any) -> None:
    from repom.database import Database as _Database

    pinged = _Database(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    quiet = _Database(f"sqlite:///{tmp_path / 'b.sqlite3'}", pool_pre_ping=False)
    try:
        assert pinged.pool_status()["pre_ping"] is True
        assert quiet.pool_status()["pre_ping"] is False
    finally:
        pinged.dispose()
        quiet.dispose()
