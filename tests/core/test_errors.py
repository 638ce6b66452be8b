"""Error translation on real databases: codes, not messages; names where the driver has them."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from repom.exceptions import (
    CheckViolationError,
    DeadlockDetected,
    DuplicateKeyError,
    ForeignKeyViolationError,
    NotNullViolationError,
    PoolExhausted,
    SerializationFailure,
    translate,
)
from repom.transactions import transaction
from tests.core.conftest import Flavor

SECRET = "hunter2-param"


async def run_sql(flavor: Flavor, sql: str, **params: Any) -> None:
    async with flavor.enter(transaction(database=flavor.db)) as session:
        await flavor.run(session.execute(text(sql), params))


@pytest.mark.parametrize(
    ("sql", "error", "names"),
    [
        (
            "INSERT INTO core_accounts (id, owner, balance) "
            "VALUES (2, 'taken', CASE WHEN :p = '' THEN 1 ELSE 0 END)",
            DuplicateKeyError,
            {
                "postgresql": ("core_accounts_owner_key", "core_accounts", None),
                "sqlite": (None, "core_accounts", "owner"),
            },
        ),
        (
            "INSERT INTO core_entries (id, account_id, note) VALUES (1, 999, :p)",
            ForeignKeyViolationError,
            {
                "postgresql": ("core_entries_account_id_fkey", "core_entries", None),
                "sqlite": (None, None, None),
            },
        ),
        (
            "INSERT INTO core_accounts (id, owner, balance) "
            "VALUES (3, CASE WHEN :p = '' THEN 'x' ELSE NULL END, 0)",
            NotNullViolationError,
            {
                "postgresql": (None, "core_accounts", "owner"),
                "sqlite": (None, "core_accounts", "owner"),
            },
        ),
        (
            "UPDATE core_accounts SET balance = -1 WHERE owner = :p OR id = 1",
            CheckViolationError,
            {
                "postgresql": ("ck_core_accounts_balance", "core_accounts", None),
                "sqlite": ("ck_core_accounts_balance", None, None),
            },
        ),
    ],
    ids=["unique", "foreign-key", "not-null", "check"],
)
async def test_integrity_errors(
    flavor: Flavor, sql: str, error: type[Exception], names: dict[str, tuple[Any, ...]]
) -> None:
    await run_sql(flavor, "INSERT INTO core_accounts (id, owner, balance) VALUES (1, 'taken', 5)")
    with pytest.raises(error) as info:
        await run_sql(flavor, sql, p=SECRET)
    err = info.value
    assert isinstance(err, sa_exc.IntegrityError)  # existing except clauses keep working
    assert err.__cause__ is err.orig and err.orig is not None
    expected = names[flavor.backend]
    assert (err.constraint_name, err.table_name, err.column_name) == expected
    assert SECRET not in str(err) and "INSERT" not in str(err) and "UPDATE" not in str(err)
    assert flavor.rows("SELECT id FROM core_accounts") == [(1,)]


def test_serialization_failure_and_deadlock_for_real(pg_url: str) -> None:
    from repom.database import Database
    from tests.core.models import CoreBase

    db = Database(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    CoreBase.metadata.drop_all(db.engine)
    CoreBase.metadata.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO core_accounts VALUES (1, 'a', 10), (2, 'b', 10)"))
    try:
        # serialization failure: two REPEATABLE READ snapshots update the same row
        c1 = db.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        c2 = db.engine.connect()
        c1.execute(text("SELECT * FROM core_accounts"))
        with c2.begin():
            c2.execute(text("UPDATE core_accounts SET balance = 11 WHERE id = 1"))
        with pytest.raises(SerializationFailure) as info:
            c1.execute(text("UPDATE core_accounts SET balance = 12 WHERE id = 1"))
        assert info.value.sqlstate == "40001" and info.value.retryable
        c1.rollback()
        c1.close()
        c2.close()

        # deadlock: each connection locks one row, then wants the other's
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def worker(first: int, second: int) -> None:
            with db.engine.connect() as conn:
                try:
                    with conn.begin():
                        conn.execute(
                            text(f"UPDATE core_accounts SET balance = 0 WHERE id = {first}")
                        )
                        barrier.wait()
                        time.sleep(0.05)
                        conn.execute(
                            text(f"UPDATE core_accounts SET balance = 0 WHERE id = {second}")
                        )
                except Exception as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=worker, args=a) for a in [(1, 2), (2, 1)]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 1 and isinstance(errors[0], DeadlockDetected)
        assert errors[0].sqlstate == "40P01"
    finally:
        CoreBase.metadata.drop_all(db.engine)
        db.dispose()


def test_pool_timeout_is_pool_exhausted(tmp_path: Any) -> None:
    from repom.database import Database

    db = Database(f"sqlite:///{tmp_path / 'p.db'}", pool_size=1, max_overflow=0, pool_timeout=0.1)
    held = db.engine.connect()
    try:
        with pytest.raises(PoolExhausted, match="pool"):
            with transaction(database=db) as session:
                session.execute(text("SELECT 1"))
        with pytest.raises(sa_exc.TimeoutError) as raw:
            db.engine.connect()
        assert isinstance(translate(raw.value), PoolExhausted)
    finally:
        held.close()
        db.dispose()


def test_unmapped_errors_pass_through(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'u.db'}")
    with pytest.raises(sa_exc.OperationalError) as info, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert translate(info.value) is info.value
    engine.dispose()
