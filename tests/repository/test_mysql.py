"""MySQL/MariaDB, lightly: the statements that differ there (ON DUPLICATE KEY UPDATE, no
UPDATE RETURNING, executemany), sync and async, in a database of this test process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from repom.database import AsyncDatabase, Database
from repom.exceptions import ConflictError
from repom.repository import AsyncRepository, Repository
from repom.urls import convert_to_async_uri
from tests.repository.models import Author, Doc, Item, RepoBase
from tests.support import MYSQL_URL, maybe_await, mysql_available, require_mysql


@pytest.fixture(scope="module")
def mysql_db() -> Iterator[str]:
    require_mysql()
    assert mysql_available()
    name = f"rp_{uuid.uuid4().hex[:10]}"
    admin = create_engine(MYSQL_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = MYSQL_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = create_engine(url)
    RepoBase.metadata.create_all(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()


@pytest.fixture(params=["sync", "async"])
async def mysql(request: pytest.FixtureRequest, mysql_db: str) -> AsyncIterator[Any]:
    verify = create_engine(mysql_db)
    with verify.begin() as conn:
        conn.execute(text("SET FOREIGN_KEY_CHECKS=0"))
        for table in ("rp_posts", "rp_authors", "rp_docs", "rp_items"):
            conn.execute(text(f"TRUNCATE {table}"))
    is_async = request.param == "async"
    db: Any = AsyncDatabase(convert_to_async_uri(mysql_db)) if is_async else Database(mysql_db)
    log: list[str] = []
    engine = db.engine.sync_engine if is_async else db.engine
    event.listen(
        engine,
        "before_cursor_execute",
        lambda c, cur, stmt, *a: log.append(" ".join(stmt.split())),
    )
    try:
        yield is_async, db, verify, log
    finally:
        await maybe_await(db.dispose())
        verify.dispose()


async def test_mysql_statements(mysql: Any) -> None:
    is_async, db, verify, log = mysql
    repo_cls = AsyncRepository if is_async else Repository

    async def run(x: Any) -> Any:
        return await maybe_await(x)

    session = db.session()
    try:
        authors = repo_cls(session, Author)
        keys = await run(
            authors.bulk_create(
                [{"name": f"n{i}", "email": f"e{i}@x.io"} for i in range(5)], returning="keys"
            )
        )
        assert keys == [1, 2, 3, 4, 5]
        assert await run(authors.exists(email="e3@x.io")) is True
        page = await run(authors.keyset(limit=3, order_by="-score"))
        assert len(page.items) == 3 and page.next_cursor
        log.clear()
        assert await run(authors.bulk_update([{"id": k, "age": k} for k in keys])) == 5
        assert len(log) == 1 and log[0].startswith("UPDATE rp_authors SET age")
        items = repo_cls(session, Item)
        log.clear()
        first = await run(items.upsert({"sku": "a", "price": Decimal("1.00")}, conflict_on="sku"))
        again = await run(items.upsert({"sku": "a", "price": Decimal("2.00")}, conflict_on="sku"))
        assert again is first and again.price == Decimal("2.00")
        assert "ON DUPLICATE KEY UPDATE" in log[0]
        n = await run(
            items.bulk_upsert(
                [{"sku": "a", "price": Decimal(3)}, {"sku": "b", "price": Decimal(4)}],
                conflict_on="sku",
            )
        )
        assert n >= 2  # MySQL counts an updated row twice
        docs = repo_cls(session, Doc)
        doc = await run(docs.create({"title": "t", "slug": "s"}))
        await run(session.commit())
        with verify.begin() as conn:
            conn.execute(text("UPDATE rp_docs SET version = 7"))
        with pytest.raises(ConflictError):
            await run(docs.bulk_update([{"id": doc.id, "version": 1, "title": "late"}]))
        await run(session.rollback())
    finally:
        await run(session.close())
    with verify.connect() as conn:
        assert conn.execute(text("SELECT sku, price FROM rp_items ORDER BY sku")).all() == [
            ("a", Decimal("3.00")),
            ("b", Decimal("4.00")),
        ]
        assert conn.execute(text("SELECT sum(age) FROM rp_authors")).scalar() == 15
