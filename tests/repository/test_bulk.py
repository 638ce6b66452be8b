"""bulk_create (objects / keys / count; insert and COPY), bulk_update, upsert, bulk_upsert."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from repom.exceptions import ConflictError, DuplicateKeyError, InvalidFilterError
from repom.repository import InvalidOptionError, UnknownFieldError
from tests.repository.conftest import Env
from tests.repository.models import Author, Doc, Item, Tag


def _authors(n: int, start: int = 1) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        yield {"name": f"n{i}", "email": f"e{i}@x.io", "age": i % 90}


class ItemIn(BaseModel):
    sku: str
    price: Decimal
    meta: dict[str, Any] | None = None


async def test_bulk_create_objects(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Item)
        env.reset()
        items = await env.run(
            repo.bulk_create(
                [ItemIn(sku=f"s{i}", price=Decimal("1.50"), meta={"i": i}) for i in range(5)]
            )
        )
        # one INSERT ... RETURNING for the five rows; server defaults came back with it
        assert len(env.statements) == 1 and env.statements[0].startswith("INSERT INTO rp_items")
        assert [it.sku for it in items] == [f"s{i}" for i in range(5)]
        assert all(isinstance(it.id, uuid.UUID) for it in items)
        assert items[0].note == "n/a" and items[0].created is not None and items[4].meta == {"i": 4}
        assert len(env.statements) == 1  # reading them sent nothing
        items[0].qty = 9  # persistent objects: a change flushes as an UPDATE
        await env.run(s.commit())
    assert env.rows("SELECT sku, qty FROM rp_items WHERE qty = 9") == [("s0", 9)]


async def test_bulk_create_keys_in_input_order(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        await env.run(repo.create({"name": "first", "email": "first@x.io"}))
        env.reset()
        keys = await env.run(repo.bulk_create(_authors(2500), returning="keys", chunk_size=1000))
        assert keys == list(range(2, 2502))
        if env.backend == "postgresql":
            # COPY, keys reserved from the sequence first: one statement per chunk (the
            # sequence name is looked up once per connection, not counted here)
            assert len(env.statements) == 3
            assert all("array_agg(nextval(" in st for st in env.statements)
        else:
            assert all(st.startswith("INSERT INTO rp_authors") for st in env.statements)
        await env.run(s.commit())
    assert env.rows("SELECT id, email FROM rp_authors WHERE id IN (2, 1000, 2501) ORDER BY id") == [
        (2, "e1@x.io"),
        (1000, "e999@x.io"),
        (2501, "e2500@x.io"),
    ]


async def test_bulk_create_count_from_a_generator(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        count = await env.run(repo.bulk_create(_authors(1500), returning=None, chunk_size=700))
        assert count == 1500
        if env.backend == "postgresql":
            assert env.statements == []  # COPY only: nothing goes through cursor.execute
        else:
            assert len(env.statements) == 3 and all(env.executemany)
        await env.run(s.commit())
    assert env.rows("SELECT count(*), min(level), max(score) FROM rp_authors") == [(1500, "low", 0)]
    assert env.rows("SELECT count(*) FROM rp_authors WHERE active AND joined IS NOT NULL") == [
        (1500,)
    ]


async def test_bulk_create_insert_method_and_defaults(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Doc)
        env.reset()
        keys = await env.run(
            repo.bulk_create(
                [{"title": f"t{i}", "slug": f"s{i}"} for i in range(3)],
                returning="keys",
                method="insert",
            )
        )
        assert keys == [1, 2, 3]
        if env.backend == "postgresql":
            assert "FROM unnest(" in env.statements[-1]
        await env.run(s.commit())
    rows = env.rows(
        "SELECT id, version, is_deleted, created_at = updated_at FROM rp_docs ORDER BY id"
    )
    assert rows == [(1, 1, False, True), (2, 1, False, True), (3, 1, False, True)]


async def test_bulk_create_copy(env: Env) -> None:
    rows = [
        {"sku": f"c{i}", "price": Decimal("2.25"), "meta": {"k": [i]}, "qty": i} for i in range(4)
    ]
    async with env.session() as s:
        repo = env.repo(s, Item)
        if env.backend != "postgresql":
            with pytest.raises(InvalidOptionError, match="method='copy' needs PostgreSQL"):
                await env.run(repo.bulk_create(rows, method="copy", returning="keys"))
            return
        keys = await env.run(repo.bulk_create(rows, method="copy", returning="keys"))
        assert len(keys) == 4 and all(isinstance(k, uuid.UUID) for k in keys)
        assert await env.run(repo.bulk_create(rows[:0], method="copy", returning=None)) == 0
        await env.run(s.commit())
    stored = env.rows("SELECT id, sku, price, meta, note FROM rp_items ORDER BY qty")
    assert [r[0] for r in stored] == keys
    assert stored[3][1:] == ("c3", Decimal("2.25"), {"k": [3]}, "n/a")


async def test_bulk_create_copy_errors_are_translated(env: Env) -> None:
    if env.backend != "postgresql":
        pytest.skip("COPY is PostgreSQL only")
    async with env.session() as s:
        repo = env.repo(s, Author)
        await env.run(repo.create({"name": "a", "email": "dup@x.io"}))
        with pytest.raises(DuplicateKeyError) as info:
            await env.run(repo.bulk_create([{"name": "b", "email": "dup@x.io"}], returning=None))
        assert info.value.constraint_name == "uq_rp_authors_email"
        await env.run(s.rollback())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(0,)]


async def test_bulk_create_instances_and_bad_input(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Tag)
        made = await env.run(repo.bulk_create([Tag(kind="k", code=i, label="l") for i in range(3)]))
        assert [t.code for t in made] == [0, 1, 2]
        keys = await env.run(repo.bulk_create([Tag(kind="z", code=1, label="l")], returning="keys"))
        assert keys == [("z", 1)]
        env.reset()
        with pytest.raises(UnknownFieldError, match="no writable field 'colour'"):
            await env.run(repo.bulk_create([{"kind": "a", "code": 9, "label": "x", "colour": 1}]))
        with pytest.raises(InvalidOptionError, match="returning must be"):
            await env.run(repo.bulk_create([], returning="rows"))
        with pytest.raises(InvalidOptionError, match="method must be"):
            await env.run(repo.bulk_create([], method="fast"))
        with pytest.raises(InvalidOptionError, match="chunk_size must be a positive integer"):
            await env.run(repo.bulk_create([], chunk_size=0))
        with pytest.raises(InvalidOptionError, match="mixed with other rows"):
            await env.run(repo.bulk_create([Tag(kind="q", code=1, label="l"), {"kind": "q"}]))
        with pytest.raises(InvalidOptionError, match="expects an iterable of rows"):
            await env.run(repo.bulk_create({"kind": "a"}))
        with pytest.raises(InvalidOptionError, match="returns keys or a count, not objects"):
            await env.run(repo.bulk_create([{"kind": "a", "code": 1, "label": "x"}], method="copy"))
        assert env.statements == []
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_tags") == [(4,)]


async def test_bulk_update_is_one_statement(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        keys = await env.run(repo.bulk_create(_authors(5), returning="keys"))
        held = await env.run(repo.get_by_id(keys[0]))
        env.reset()
        changed = await env.run(
            repo.bulk_update(
                [{"id": k, "age": 70 + k, "name": f"u{k}"} for k in keys]
                + [{"id": 999, "age": 1, "name": "x"}]
            )
        )
        assert changed == 5
        assert len(env.statements) == 1 and env.statements[0].startswith("UPDATE rp_authors SET")
        if env.backend == "postgresql":
            assert "FROM unnest(" in env.statements[0] and env.executemany == [False]
        else:
            assert env.executemany == [True]
        assert held.age == 71 and held.name == "u1"  # the object in the session is up to date
        with pytest.raises(UnknownFieldError, match="need the primary key of Author: missing id"):
            await env.run(repo.bulk_update([{"age": 3}]))
        with pytest.raises(UnknownFieldError, match="no writable field 'nope'"):
            await env.run(repo.bulk_update([{"id": 1, "nope": 3}]))
        await env.run(s.commit())
    assert env.rows("SELECT id, name, age FROM rp_authors WHERE id IN (1, 5) ORDER BY id") == [
        (1, "u1", 71),
        (5, "u5", 75),
    ]


async def test_bulk_update_instances_and_versions(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Doc)
        docs = await env.run(
            repo.bulk_create([{"title": f"t{i}", "slug": f"s{i}"} for i in range(3)])
        )
        await env.run(s.commit())
        for doc in docs:
            doc.title = doc.title.upper()
        env.reset()
        assert await env.run(repo.bulk_update(docs)) == 3
        assert len(env.statements) == 1
        assert [d.version for d in docs] == [2, 2, 2]
        assert not s.dirty  # nothing left for the next flush
        await env.run(s.commit())
    env.execute("UPDATE rp_docs SET version = 5 WHERE id = 2")
    async with env.session() as s:
        repo = env.repo(s, Doc)
        with pytest.raises(ConflictError, match=r"1 of 3 Doc row\(s\) were changed"):
            await env.run(
                repo.bulk_update([{"id": i, "version": 2, "title": "late"} for i in (1, 2, 3)])
            )
        with pytest.raises(UnknownFieldError, match="need the version read"):
            await env.run(repo.bulk_update([{"id": 1, "title": "x"}]))
        await env.run(s.rollback())
    assert env.rows("SELECT title, version FROM rp_docs ORDER BY id") == [
        ("T0", 2),
        ("T1", 5),
        ("T2", 2),
    ]


async def test_upsert(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Doc)
        env.reset()
        doc = await env.run(repo.upsert({"slug": "a", "title": "one"}, conflict_on="slug"))
        assert (doc.id, doc.title, doc.version) == (1, "one", 1)
        again = await env.run(repo.upsert({"slug": "a", "title": "two"}, conflict_on=["slug"]))
        # native ON CONFLICT, one statement each, the existing row updated and returned
        assert again is doc and doc.title == "two" and doc.version == 2
        assert len(env.statements) == 2 and "ON CONFLICT" in env.statements[0]
        same = await env.run(
            repo.upsert({"slug": "a", "title": "ignored"}, conflict_on="slug", update_fields=())
        )
        assert same.title == "two"  # DO NOTHING, then the row is read
        with pytest.raises(InvalidFilterError, match=r"conflict_on \(title\) is not a primary key"):
            await env.run(repo.upsert({"slug": "b", "title": "x"}, conflict_on="title"))
        with pytest.raises(InvalidFilterError, match="has no column 'nope'"):
            await env.run(repo.upsert({"slug": "b", "title": "x"}, conflict_on="nope"))
        with pytest.raises(UnknownFieldError, match="needs the conflict column"):
            await env.run(repo.upsert({"title": "x"}, conflict_on="slug"))
        with pytest.raises(UnknownFieldError, match="no updatable column 'version'"):
            await env.run(
                repo.upsert(
                    {"slug": "b", "title": "x"}, conflict_on="slug", update_fields=["version"]
                )
            )
        tags = env.repo(s, Tag)
        tag = await env.run(tags.upsert({"kind": "k", "code": 1, "label": "x"}))
        tag = await env.run(tags.upsert({"kind": "k", "code": 1, "label": "y"}))
        assert tag.label == "y"
        await env.run(s.commit())
    assert env.rows("SELECT slug, title, version FROM rp_docs") == [("a", "two", 2)]
    assert env.rows("SELECT label FROM rp_tags") == [("y",)]


async def test_bulk_upsert(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Item)
        env.reset()
        n = await env.run(
            repo.bulk_upsert(
                [{"sku": f"k{i}", "price": Decimal(i), "qty": i} for i in range(4)],
                conflict_on="sku",
            )
        )
        assert n == 4 and len(env.statements) == 1
        n = await env.run(
            repo.bulk_upsert(
                [
                    {"sku": "k1", "price": Decimal(10), "qty": 1},
                    {"sku": "k1", "price": Decimal(11), "qty": 1},  # last one wins
                    {"sku": "k9", "price": Decimal(9), "qty": 9},
                ],
                conflict_on="sku",
                update_fields=["price"],
            )
        )
        assert n == 2
        await env.run(s.commit())
    assert env.rows("SELECT sku, price, qty FROM rp_items ORDER BY sku") == [
        ("k0", Decimal("0.00"), 0),
        ("k1", Decimal("11.00"), 1),
        ("k2", Decimal("2.00"), 2),
        ("k3", Decimal("3.00"), 3),
        ("k9", Decimal("9.00"), 9),
    ]
    async with env.session() as s:
        docs = env.repo(s, Doc)
        await env.run(docs.bulk_upsert([{"slug": "x", "title": "1"}], conflict_on="slug"))
        await env.run(docs.bulk_upsert([{"slug": "x", "title": "2"}], conflict_on="slug"))
        await env.run(s.commit())
    assert env.rows("SELECT title, version, updated_at >= created_at FROM rp_docs") == [
        ("2", 2, True)
    ]


async def test_bulk_writes_of_json_columns(env: Env) -> None:
    # JSON cannot travel as a PostgreSQL array: these take the executemany paths
    async with env.session() as s:
        repo = env.repo(s, Item)
        await env.run(
            repo.bulk_upsert(
                [{"sku": f"j{i}", "price": Decimal(1), "meta": {"v": i}} for i in range(3)],
                conflict_on="sku",
            )
        )
        await env.run(s.commit())
        ids = [i.id for i in await env.run(repo.list(order_by="sku"))]
        n = await env.run(repo.bulk_update([{"id": k, "meta": {"v": "new"}} for k in ids]))
        assert n == 3
        await env.run(s.commit())
    stored = [
        m if isinstance(m, dict) else json.loads(m)
        for (m,) in env.rows("SELECT meta FROM rp_items")
    ]
    assert stored == [{"v": "new"}] * 3


async def test_copy_is_part_of_the_transaction(env: Env) -> None:
    # COPY as the very first statement of the transaction: a rollback must undo it
    async with env.session() as s:
        repo = env.repo(s, Author)
        assert await env.run(repo.bulk_create(_authors(50), returning=None)) == 50
        await env.run(s.rollback())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(0,)]
    async with env.session() as s:
        repo = env.repo(s, Author)
        await env.run(s.begin_nested())
        await env.run(repo.bulk_create(_authors(5), returning=None))
        await env.run(s.rollback())  # the savepoint
        await env.run(repo.bulk_create(_authors(3, start=10), returning=None))
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(3,)]


async def test_copy_with_psycopg_async(pg_schema: str | None) -> None:
    """The third COPY driver: psycopg's async connection (asyncpg and sync psycopg run above)."""
    from sqlalchemy import create_engine, make_url, text

    from repom.database import AsyncDatabase
    from repom.repository import AsyncRepository
    from tests.repository.conftest import _pg_args
    from tests.support import require_postgres

    base = make_url(require_postgres())
    url = base.set(drivername="postgresql+psycopg_async")
    assert pg_schema is not None
    verify = create_engine(base.set(drivername="postgresql+psycopg"), **_pg_args(pg_schema, False))
    with verify.begin() as conn:
        conn.execute(text("TRUNCATE rp_authors RESTART IDENTITY CASCADE"))
    db = AsyncDatabase(url, **_pg_args(pg_schema, is_async=False))
    try:
        async with db.session() as s:
            repo = AsyncRepository(s, Author)
            keys = await repo.bulk_create(_authors(20), returning="keys", method="copy")
            assert keys == list(range(1, 21))
            await s.commit()
        with verify.connect() as conn:
            assert conn.execute(text("SELECT count(*), max(email) FROM rp_authors")).one() == (
                20,
                "e9@x.io",
            )
    finally:
        await db.dispose()
        verify.dispose()
