"""Read replicas: routing per transaction, read-your-writes, fallback to the primary.

The servers are the module's own: a PostgreSQL primary and a streaming hot standby of it
(``pg_basebackup -R``) on free loopback ports.  Every scenario runs on psycopg (sync) and asyncpg
(async) with one body.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from repom.config import RepomConfig
from repom.database import AsyncDatabase, Database
from repom.fastapi import (
    AsyncDbSession,
    AsyncReadOnlyDbSession,
    DbSession,
    ReadOnlyDbSession,
    install_exception_handlers,
    use_databases,
)
from repom.monitoring import replica_skip_counts
from repom.transactions import causality, transaction
from tests.support import IN_CI, maybe_await
from tests.support.topology import PostgresInstance, make_root, topology_available

WHERE = text("SELECT pg_is_in_recovery(), inet_server_port()")


@dataclass
class Pair:
    primary: PostgresInstance
    standby: PostgresInstance


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    missing = topology_available()
    if missing is not None:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)
    root = make_root("repom-replicas-")
    primary = PostgresInstance(root / "primary")
    standby: PostgresInstance | None = None
    try:
        primary.start()
        engine = create_engine(primary.url(), poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE rr_items (id integer PRIMARY KEY, note text)"))
        engine.dispose()
        standby = primary.standby(root / "standby")
        yield Pair(primary, standby)
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sync", "async"])
async def db(request: pytest.FixtureRequest, pair: Pair) -> AsyncIterator[Any]:
    config = RepomConfig(replica_wait=0.5, pool_size=5, max_overflow=5)
    if request.param == "async":
        adb = AsyncDatabase(
            pair.primary.url(driver="asyncpg"),
            replicas=[pair.standby.url(driver="asyncpg")],
            config=config,
        )
        yield adb
        await adb.dispose()
    else:
        sdb = Database(pair.primary.url(), replicas=[pair.standby.url()], config=config)
        yield sdb
        sdb.dispose()


def scope(database: Any, **options: Any) -> Any:
    """``async with scope(...)``: a repom transaction entered the flavour's way."""
    tx = transaction(database=database, **options)
    if isinstance(database, AsyncDatabase):
        return tx

    class _Sync:
        async def __aenter__(self) -> Any:
            return tx.__enter__()

        async def __aexit__(self, *exc: Any) -> Any:
            return tx.__exit__(*exc)

    return _Sync()


async def where(database: Any, **options: Any) -> tuple[bool, int]:
    async with scope(database, **options) as session:
        first = (await maybe_await(session.execute(WHERE))).one()
        second = (await maybe_await(session.execute(WHERE))).one()
    assert first == second  # one transaction, one server
    return bool(first[0]), int(first[1])


def primary_exec(pair: Pair, sql: str) -> None:
    engine = create_engine(pair.primary.url(), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def standby_exec(pair: Pair, sql: str) -> None:
    engine = create_engine(pair.standby.url(), poolclass=NullPool)
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


async def test_routing_per_transaction(db: Any, pair: Pair) -> None:
    assert await where(db, read_only=True) == (True, pair.standby.port)
    assert await where(db, read_only=True, replica=False) == (False, pair.primary.port)
    assert await where(db) == (False, pair.primary.port)
    # a read-only scope that joins a primary transaction stays on the primary
    async with scope(db) as outer:
        async with scope(db, read_only=True) as inner:
            assert inner is outer
            assert (await maybe_await(inner.execute(WHERE))).one()[1] == pair.primary.port


async def test_read_your_writes_1000_rounds(db: Any, pair: Pair) -> None:
    primary_exec(pair, "DELETE FROM rr_items")
    stale = 0
    served: dict[bool, int] = {True: 0, False: 0}
    for n in range(1000):
        async with scope(db) as session:
            await maybe_await(
                session.execute(text("INSERT INTO rr_items (id) VALUES (:n)"), {"n": n})
            )
        async with scope(db, read_only=True) as session:
            row = (
                await maybe_await(
                    session.execute(
                        text("SELECT count(*), pg_is_in_recovery() FROM rr_items WHERE id = :n"),
                        {"n": n},
                    )
                )
            ).one()
        stale += row[0] != 1
        served[bool(row[1])] += 1
    assert stale == 0
    assert served[True] > 0, served  # the replica did serve reads
    print(f"read-your-writes: {served[True]} reads on the replica, {served[False]} on the primary")


async def test_paused_replay_falls_back_to_the_primary(db: Any, pair: Pair) -> None:
    standby_exec(pair, "SELECT pg_wal_replay_pause()")
    try:
        async with scope(db) as session:
            await maybe_await(
                session.execute(text("INSERT INTO rr_items (id, note) VALUES (-1, 'paused')"))
            )
        before = sum(n for k, n in replica_skip_counts().items() if k[2] == "behind")
        started = time.perf_counter()
        async with scope(db, read_only=True) as session:
            row = (
                await maybe_await(
                    session.execute(
                        text("SELECT note, pg_is_in_recovery() FROM rr_items WHERE id = -1")
                    )
                )
            ).one()
        took = time.perf_counter() - started
        assert row == ("paused", False)  # the primary answered, with the write
        assert 0.5 <= took < 2.0  # waited the configured bound, then gave up on the replica
        after = sum(n for k, n in replica_skip_counts().items() if k[2] == "behind")
        assert after == before + 1
        # a context that did not write still reads from the (paused) replica
        await asyncio.to_thread(lambda: None)
    finally:
        standby_exec(pair, "SELECT pg_wal_replay_resume()")
        primary_exec(pair, "DELETE FROM rr_items WHERE id = -1")


async def test_replica_down_mid_load_gives_no_client_error(db: Any, pair: Pair) -> None:
    errors: list[BaseException] = []
    for n in range(200):
        if n == 50:
            pair.standby._pg_ctl("stop", "-m", "fast")
        try:
            async with scope(db, read_only=True) as session:
                await maybe_await(session.execute(text("SELECT count(*) FROM rr_items")))
        except BaseException as exc:
            errors.append(exc)
    pair.standby.restart()
    assert errors == []
    down = [k for k in replica_skip_counts() if k[2] == "down"]
    assert down, "the stopped replica was not counted"
    [replica] = db.replicas
    replica.down_until = 0.0  # the restarted replica may serve the next tests at once


def _http_app(database: Any) -> FastAPI:
    app = FastAPI()
    install_exception_handlers(app)
    if isinstance(database, AsyncDatabase):
        use_databases(app, async_database=database)

        @app.post("/items/{n}", status_code=201)
        async def add(n: int, session: AsyncDbSession) -> None:
            await session.execute(text("INSERT INTO rr_items (id) VALUES (:n)"), {"n": n})

        @app.get("/items/{n}")
        async def read(n: int, session: AsyncReadOnlyDbSession) -> dict[str, Any]:
            row = (
                await session.execute(
                    text("SELECT count(*), pg_is_in_recovery() FROM rr_items WHERE id = :n"),
                    {"n": n},
                )
            ).one()
            return {"found": row[0], "replica": row[1]}

    else:
        use_databases(app, database=database)

        @app.post("/items/{n}", status_code=201)
        def add_sync(n: int, session: DbSession) -> None:
            session.execute(text("INSERT INTO rr_items (id) VALUES (:n)"), {"n": n})

        @app.get("/items/{n}")
        def read_sync(n: int, session: ReadOnlyDbSession) -> dict[str, Any]:
            row = session.execute(
                text("SELECT count(*), pg_is_in_recovery() FROM rr_items WHERE id = :n"),
                {"n": n},
            ).one()
            return {"found": row[0], "replica": row[1]}

    return app


async def test_read_your_writes_over_http(db: Any, pair: Pair) -> None:
    primary_exec(pair, "DELETE FROM rr_items")
    app = _http_app(db)
    stale = 0
    on_replica = 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for n in range(300):
            assert (await client.post(f"/items/{n}")).status_code == 201
            body = (await client.get(f"/items/{n}")).json()
            stale += body["found"] != 1
            on_replica += bool(body["replica"])
    assert stale == 0
    assert on_replica > 0
    assert causality().lsn == {}  # the requests' positions stayed with the client's cookie


async def test_health_shows_each_server_with_its_role_and_lag(db: Any, pair: Pair) -> None:
    from repom.fastapi import health_router

    app = FastAPI()
    if isinstance(db, AsyncDatabase):
        use_databases(app, async_database=db)
    else:
        use_databases(app, database=db)
    app.include_router(health_router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    entries = {entry["role"]: entry for entry in response.json()["databases"]}
    assert set(entries) == {"primary", "replica"}
    replica = entries["replica"]
    assert replica["ok"] and replica["lag_seconds"] >= 0
    assert replica["name"].endswith(f"127.0.0.1:{pair.standby.port}")


def test_repom_info_lists_replicas(pair: Pair, tmp_path: Any) -> None:
    from tests.cli._support import cli_env, run

    env = cli_env(REPOM_REPLICA_URLS=pair.standby.url().replace("postgres@", "postgres:pw@"))
    result = run(["info", "--url", pair.primary.url()], tmp_path, env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("replica")]
    assert lines and f"127.0.0.1:{pair.standby.port}" in lines[0] and "pw" not in lines[0]


def test_replicas_are_postgresql_only(tmp_path: Any) -> None:
    from repom.exceptions import ConfigurationError

    db = Database(f"sqlite:///{tmp_path / 'a.sqlite3'}", replicas=[f"sqlite:///{tmp_path}/b"])
    with pytest.raises(ConfigurationError, match="PostgreSQL only"):
        with transaction(database=db, read_only=True):
            pass
    db.dispose()


async def test_isolated_tests_read_their_own_writes_from_a_replicated_database(
    pair: Pair,
) -> None:
    """In repom.testing's rolled-back test transaction, a read-only transaction on a database
    with replicas sees the test's uncommitted write (it runs on the test's connection)."""
    from repom.testing import IsolatedDatabase

    db = Database(pair.primary.url(), replicas=[pair.standby.url()])
    isolated = IsolatedDatabase(pair.primary.url(), databases=[db])
    isolated.start()
    try:
        with isolated.isolated_session():
            with transaction(database=db) as session:
                session.execute(text("INSERT INTO rr_items (id, note) VALUES (-7, 'test')"))
            with transaction(database=db, read_only=True) as session:
                assert (
                    session.execute(text("SELECT note FROM rr_items WHERE id = -7")).scalar_one()
                    == "test"
                )
    finally:
        isolated.stop()
        db.dispose()
    engine = create_engine(pair.primary.url(), poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rr_items WHERE id = -7")).scalar() == 0
    engine.dispose()


async def test_concurrent_read_your_writes_rarely_needs_the_primary(pair: Pair) -> None:
    """32 tasks writing and reading back at once: the wait for replay happens outside the read's
    transaction, so no read holds a snapshot that the standby's replay must wait for (a wait
    inside the transaction sent ~40% of these reads to the primary after the full bound)."""
    db = AsyncDatabase(
        pair.primary.url(driver="asyncpg"),
        replicas=[pair.standby.url(driver="asyncpg")],
        config=RepomConfig(replica_wait=0.5, pool_size=32, max_overflow=0),
    )
    primary_exec(pair, "DELETE FROM rr_items")
    primary_exec(pair, "INSERT INTO rr_items (id, note) VALUES (-100, 'hot')")
    on_primary = stale = 0

    async def worker(task: int) -> None:
        nonlocal on_primary, stale
        for n in range(60):
            key = task * 1000 + n
            async with transaction(database=db) as session:
                await session.execute(text("INSERT INTO rr_items (id) VALUES (:k)"), {"k": key})
                # one hot row updated by everyone: dead tuples, pruning, replay conflicts
                await session.execute(
                    text("UPDATE rr_items SET note = :n WHERE id = -100"), {"n": str(key)}
                )
            async with transaction(database=db, read_only=True) as session:
                found, replica = (
                    await session.execute(
                        text("SELECT count(*), pg_is_in_recovery() FROM rr_items WHERE id = :k"),
                        {"k": key},
                    )
                ).one()
            stale += found != 1
            on_primary += not replica

    try:
        await asyncio.gather(*(asyncio.create_task(worker(t)) for t in range(32)))
    finally:
        await db.dispose()
    assert stale == 0
    assert on_primary <= 32 * 60 // 20, f"{on_primary} of 1920 reads fell back to the primary"
