"""Errors while connecting are typed and classified right, for psycopg and asyncpg, wherever the
connection is made (``engine.connect()``, a session's first statement, a pool checkout, a repom
transaction scope that connects at BEGIN).

The failures are real: a database that does not exist, a role that does not exist, a port nothing
listens on, a role with ``CONNECTION LIMIT 1`` already connected, and a local server that answers
the startup packet the way PgBouncer does.  Only the libpq/asyncpg message table is also checked
on exception objects built from the drivers' own classes (no connection is involved there).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import URL, make_url, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.util import greenlet_spawn

from repom.config import RepomConfig
from repom.database import AsyncDatabase, Database
from repom.exceptions import (
    ConfigurationError,
    ConnectionLost,
    DatabaseError,
    DatabaseUnavailable,
    RetryableError,
    TooManyConnections,
    translate,
    translate_connect_error,
)
from repom.retry import is_retryable, retry_listeners, retry_on_database_error
from repom.transactions import transaction
from repom.urls import convert_to_async_uri
from tests.support import maybe_await, require_postgres
from tests.support.network import StartupRefusingServer, connection_limited_role, free_port

DRIVERS = ["psycopg", "asyncpg"]
WAYS = ["engine", "session", "pool", "scope"]


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pg(driver: str) -> URL:
    return make_url(require_postgres())


def database(driver: str, url: URL, **options: Any) -> Database | AsyncDatabase:
    rendered = url.render_as_string(hide_password=False)
    if driver == "asyncpg":
        return AsyncDatabase(convert_to_async_uri(rendered), **options)
    return Database(rendered, **options)


@asynccontextmanager
async def scope(db: Database | AsyncDatabase, **options: Any) -> AsyncIterator[Any]:
    if isinstance(db, AsyncDatabase):
        async with transaction(database=db, **options) as session:
            yield session
    else:
        with transaction(database=db, **options) as session:
            yield session


async def connect_via(way: str, db: Database | AsyncDatabase) -> None:
    """Make (and use) a connection the way *way* says."""
    if way == "engine":
        conn = await maybe_await(db.engine.connect())
        try:
            await maybe_await(conn.execute(text("SELECT 1")))
        finally:
            await maybe_await(conn.close())
    elif way == "session":
        session = db.session()
        try:
            await maybe_await(session.execute(text("SELECT 1")))
        finally:
            await maybe_await(session.close())
    elif way == "pool":  # straight from the pool, no Connection (and no handle_error) involved
        raw = await maybe_await(db.engine.raw_connection())
        await greenlet_spawn(raw.close)
    else:  # a repom scope with options connects at BEGIN, inside __enter__/__aenter__
        async with scope(db, read_only=True) as session:
            await maybe_await(session.execute(text("SELECT 1")))


async def failure(way: str, db: Database | AsyncDatabase) -> BaseException:
    try:
        with pytest.raises(Exception) as info:
            await connect_via(way, db)
    finally:
        await maybe_await(db.dispose())
    return info.value


async def attempts_with_retry(
    driver: str, db: Database | AsyncDatabase, **options: Any
) -> tuple[int, BaseException | None]:
    """How often a ``@retry_on_database_error`` function that connects ran, and its error."""
    count = 0
    deco = retry_on_database_error(**{"delay": 0.001, "max_delay": 0.01, **options})
    error: BaseException | None = None
    try:
        if isinstance(db, AsyncDatabase):

            @deco
            async def work_async() -> None:
                nonlocal count
                count += 1
                async with db.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))

            try:
                await work_async()
            except Exception as exc:
                error = exc
        else:

            @deco
            def work_sync() -> None:
                nonlocal count
                count += 1
                with db.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))

            try:
                work_sync()
            except Exception as exc:
                error = exc
    finally:
        await maybe_await(db.dispose())
    return count, error


def assert_typed(err: BaseException, cls: type[DatabaseError], driver: str) -> DatabaseError:
    assert type(err) is cls, repr(err)
    assert isinstance(err, DatabaseError) and isinstance(err, sa_exc.OperationalError)
    assert err.__cause__ is err.orig
    assert type(err.orig).__module__.split(".")[0] in (driver, "builtins"), repr(err.orig)
    assert str(err).startswith("cannot connect to the database")
    return err


# --------------------------------------------------------------------------- no such database


@pytest.mark.parametrize("way", WAYS)
async def test_missing_database(pg: URL, driver: str, way: str) -> None:
    db = database(driver, pg.set(database=f"repom_missing_{uuid.uuid4().hex[:8]}"))
    err = assert_typed(await failure(way, db), DatabaseUnavailable, driver)
    assert err.sqlstate == "3D000" and "does not exist" in str(err)
    assert not isinstance(err, RetryableError) and not is_retryable(err)


async def test_missing_database_is_not_retried(pg: URL, driver: str) -> None:
    db = database(driver, pg.set(database=f"repom_missing_{uuid.uuid4().hex[:8]}"))
    started = time.monotonic()
    attempts, error = await attempts_with_retry(driver, db, max_retries=3)
    assert attempts == 1 and isinstance(error, DatabaseUnavailable)
    assert time.monotonic() - started < 2


# --------------------------------------------------------------------------- refused credentials


@pytest.mark.parametrize("way", WAYS)
async def test_unknown_role(pg: URL, driver: str, way: str) -> None:
    db = database(driver, pg.set(username=f"repom_nobody_{uuid.uuid4().hex[:8]}"))
    err = assert_typed(await failure(way, db), DatabaseUnavailable, driver)
    assert err.sqlstate == "28000" and not is_retryable(err)
    attempts, error = await attempts_with_retry(
        driver, database(driver, pg.set(username="repom_nobody")), max_retries=3
    )
    assert attempts == 1 and isinstance(error, DatabaseUnavailable)


# --------------------------------------------------------------------------- refused port


@pytest.mark.parametrize("way", WAYS)
async def test_refused_port(pg: URL, driver: str, way: str) -> None:
    db = database(driver, pg.set(host="127.0.0.1", port=free_port()))
    err = assert_typed(await failure(way, db), ConnectionLost, driver)
    assert is_retryable(err)
    assert "refused" in str(err).lower() or "connect call failed" in str(err).lower()


async def test_refused_port_is_retried(pg: URL, driver: str) -> None:
    db = database(driver, pg.set(host="127.0.0.1", port=free_port()))
    attempts, error = await attempts_with_retry(driver, db, max_retries=2)
    assert attempts == 3 and isinstance(error, ConnectionLost)


# --------------------------------------------------------------------------- too many connections


@pytest.fixture
def limited_role(pg: URL) -> Iterator[str]:
    """A login role allowed one connection at a time (dropped afterwards)."""
    with connection_limited_role(pg) as role:
        yield role


def hold_connection(url: URL) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, dbname=url.database
    )


@pytest.mark.parametrize("way", WAYS)
async def test_too_many_connections(pg: URL, driver: str, way: str, limited_role: str) -> None:
    url = pg.set(username=limited_role)
    holder = hold_connection(url)  # the role's one connection
    try:
        err = assert_typed(await failure(way, database(driver, url)), TooManyConnections, driver)
    finally:
        holder.close()
    assert err.sqlstate == "53300" and isinstance(err, RetryableError) and is_retryable(err)
    assert "too many connections" in str(err)


async def test_too_many_connections_is_retried(pg: URL, driver: str, limited_role: str) -> None:
    url = pg.set(username=limited_role)
    holder = hold_connection(url)
    retried: list[type[BaseException]] = []

    def release(attempt: int, error: BaseException) -> None:
        retried.append(type(error))
        holder.close()  # the slot frees up before the next attempt

    retry_listeners.append(release)
    try:
        attempts, error = await attempts_with_retry(
            driver, database(driver, url), max_retries=10, max_delay=0.2
        )
    finally:
        retry_listeners.remove(release)
        holder.close()
    assert error is None and attempts >= 2
    assert retried and set(retried) == {TooManyConnections}


# --------------------------------------------------------------------------- a pooler's refusal


@pytest.mark.parametrize("way", WAYS)
async def test_pooler_rejecting_startup_parameters(pg: URL, driver: str, way: str) -> None:
    with StartupRefusingServer() as pooler:
        # asyncpg sends repom's settings as server_settings: PgBouncer tracks TimeZone and
        # application_name itself, so it is statement_timeout that it refuses
        config = RepomConfig(statement_timeout=5)
        db = database(driver, pg.set(host="127.0.0.1", port=pooler.port), config=config)
        err = await failure(way, db)
    assert type(err) is ConfigurationError, repr(err)
    refused = "options" if driver == "psycopg" else "statement_timeout"
    message = str(err)
    assert f"unsupported startup parameter: {refused}" in message
    assert "REPOM_POOLER=pgbouncer" in message and err.variable == "REPOM_POOLER"
    assert f"ignore_startup_parameters ({refused})" in message
    assert "TimeZone" in message and "statement_timeout" in message and "PgBouncer" in message
    assert type(err.__cause__).__module__.split(".")[0] == driver
    assert not is_retryable(err)


async def test_pooler_refusal_is_not_retried(pg: URL, driver: str) -> None:
    with StartupRefusingServer() as pooler:
        config = RepomConfig(statement_timeout=5)
        db = database(driver, pg.set(host="127.0.0.1", port=pooler.port), config=config)
        attempts, error = await attempts_with_retry(driver, db, max_retries=3)
        assert len(pooler.seen) == 1
    assert attempts == 1 and isinstance(error, ConfigurationError)


# --------------------------------------------------------------------------- the message table


@pytest.mark.parametrize(
    ("message", "cls", "sqlstate"),
    [
        ('FATAL:  database "shop" does not exist', DatabaseUnavailable, "3D000"),
        ('FATAL:  role "shop" does not exist', DatabaseUnavailable, "28000"),
        ('FATAL:  password authentication failed for user "shop"', DatabaseUnavailable, "28P01"),
        ("fe_sendauth: no password supplied", DatabaseUnavailable, "28P01"),
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "shop", database "shop"',
            DatabaseUnavailable,
            "28000",
        ),
        ("FATAL:  sorry, too many clients already", TooManyConnections, "53300"),
        (
            "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER "
            "attribute",
            TooManyConnections,
            "53300",
        ),
        ('FATAL:  too many connections for role "shop"', TooManyConnections, "53300"),
        ("FATAL:  the database system is starting up", ConnectionLost, "57P03"),
        (
            'could not translate host name "db.invalid" to address: Name or service not known',
            ConnectionLost,
            None,
        ),
        ("connection timeout expired", ConnectionLost, None),
    ],
)
def test_libpq_messages_without_sqlstate(
    message: str, cls: type[DatabaseError], sqlstate: str | None
) -> None:
    """psycopg's connect errors carry no SQLSTATE: the libpq message is classified.  The
    exception objects are psycopg's own class, as psycopg raises it from connect."""
    raw = psycopg.OperationalError(
        f'connection failed: connection to server at "127.0.0.1", port 5432 failed: {message}'
    )
    assert raw.sqlstate is None
    err = translate_connect_error(raw)
    assert type(err) is cls and isinstance(err, DatabaseError)
    assert err.sqlstate == sqlstate and err.orig is raw and err.__cause__ is raw


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        (
            asyncpg.exceptions.InvalidCatalogNameError('database "x" does not exist'),
            DatabaseUnavailable,
        ),
        (
            asyncpg.exceptions.InvalidPasswordError("password authentication failed"),
            DatabaseUnavailable,
        ),
        (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients"), TooManyConnections),
        (
            asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
            ConnectionLost,
        ),
    ],
    ids=["3D000", "28P01", "53300", "57P03"],
)
def test_raw_asyncpg_connect_errors_translate(raw: Any, cls: type[DatabaseError]) -> None:
    """asyncpg raises its own classes from connect; ``translate`` maps them even outside an
    engine built by repom (the engine's connect wrapper does it already)."""
    err = translate(raw)
    assert type(err) is cls and err.sqlstate == raw.sqlstate
    assert err.__cause__ is raw


def test_pgbouncer_message_on_driver_exception_objects() -> None:
    """The pooler's message through both drivers' own exception classes (PgBouncer sends 08P01,
    which alone would mean a protocol violation)."""
    for raw in (
        psycopg.OperationalError(
            'connection failed: connection to server at "10.0.0.5", port 6432 failed: '
            "FATAL:  unsupported startup parameter: options"
        ),
        asyncpg.exceptions.ProtocolViolationError("unsupported startup parameter: options"),
    ):
        err = translate_connect_error(raw)
        assert isinstance(err, ConfigurationError)
        assert "REPOM_POOLER=pgbouncer" in str(err)


def test_other_raw_errors_are_left_alone() -> None:
    unique = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert translate(unique) is unique  # not a connect failure: not ours to guess
    dsn = psycopg.ProgrammingError('missing "=" after "nonsense" in connection info string')
    assert translate_connect_error(dsn) is dsn
    boom = ValueError("boom")
    assert translate_connect_error(boom) is boom
