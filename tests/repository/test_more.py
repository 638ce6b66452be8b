"""Row locks, default loader options, the current transaction's session, custom statements,
lazy chunking, ordering of returned objects, and misuse errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import MultipleResultsFound

from repom.exceptions import ConfigurationError
from repom.repository import AsyncRepository, InvalidOptionError, Repository
from repom.transactions import transaction
from tests.repository.conftest import Env
from tests.repository.models import Author, Level, Post, Tag


class WithPosts(Repository[Author]):
    default_options = ("posts",)


class AsyncWithPosts(AsyncRepository[Author]):
    default_options = ("posts",)


async def _authors(env: Env, n: int) -> None:
    values = ", ".join(
        f"('a{i}', 'a{i}@x.io', {i % 3}, true, '{'high' if i % 2 else 'low'}', "
        "'2024-01-01 00:00:00.000000')"
        for i in range(1, n + 1)
    )
    env.execute(
        f"INSERT INTO rp_authors (name, email, score, active, level, joined) VALUES {values}"
    )


async def test_for_update(env: Env) -> None:
    await _authors(env, 2)
    if env.backend == "postgresql":
        async with env.session() as s:
            # a locking read refreshes an object the session already holds
            repo = env.repo(s, Author)
            held = await env.run(repo.get_by_id(2))
            env.execute("UPDATE rp_authors SET name = 'changed' WHERE id = 2")
            assert (await env.run(repo.get_by_id(2, for_update=True))) is held
            assert held.name == "changed"
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        await env.run(repo.get_by_id(1, for_update=True))
        await env.run(repo.list(for_update={"skip_locked": True}, limit=1))
        await env.run(repo.get_one(email="a2@x.io", for_update={"nowait": True}))
        if env.backend == "postgresql":
            assert env.statements[0].endswith("FOR UPDATE")
            assert env.statements[1].endswith("FOR UPDATE SKIP LOCKED")
            assert "FOR UPDATE NOWAIT" in env.statements[2]
        else:  # SQLite has no row locks: the clause is left out
            assert not any("FOR UPDATE" in st for st in env.statements)
        with pytest.raises(InvalidOptionError, match="for_update must be True, False or a dict"):
            await env.run(repo.get_by_id(1, for_update="yes"))


async def test_default_options_and_select(env: Env) -> None:
    await _authors(env, 2)
    env.execute("INSERT INTO rp_posts (author_id, title, views) VALUES (2, 'p', 3)")
    async with env.session() as s:
        repo = (AsyncWithPosts if env.is_async else WithPosts)(s)
        env.reset()
        authors = await env.run(repo.list(order_by="id"))
        assert [len(a.posts) for a in authors] == [0, 1]  # loaded up front: no lazy load
        assert len(env.statements) == 2
        stmt = repo.select(Author.score > 0, order_by="-id", active=True).limit(1)
        found = (await env.run(s.scalars(stmt))).all()
        assert [a.id for a in found] == [2]


async def test_session_from_the_current_transaction(env: Env) -> None:
    if env.is_async:
        async with transaction(database=env.db):
            repo = AsyncRepository[Author]()
            await repo.create({"name": "t", "email": "t@x.io"})
    else:
        with transaction(database=env.db):
            Repository[Author]().create({"name": "t", "email": "t@x.io"})
    assert env.rows("SELECT name FROM rp_authors") == [("t",)]


async def test_cursor_for_and_enum_order(env: Env) -> None:
    await _authors(env, 6)
    async with env.session() as s:
        repo = env.repo(s, Author)
        first = await env.run(repo.keyset(limit=2, order_by=["level", "id"]))
        assert [a.level for a in first] == [Level.high, Level.high]
        rest = await env.run(
            repo.keyset(after=first.next_cursor, limit=10, order_by=["level", "id"])
        )
        assert [a.id for a in rest] == [5, 2, 4, 6]
        anchor = rest.items[1]
        tail = await env.run(
            repo.keyset(after=repo.cursor_for(anchor, ["level", "id"]), order_by=["level", "id"])
        )
        assert [a.id for a in tail] == [4, 6]
        with pytest.raises(MultipleResultsFound, match="more than one Author matches"):
            await env.run(repo.get_one_or_none(active=True))


async def test_chunks_are_consumed_lazily(env: Env) -> None:
    consumed = 0
    seen_at_statement: list[int] = []

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal consumed
        for i in range(1000):
            consumed += 1
            yield {"name": f"g{i}", "email": f"g{i}@x.io"}

    sync_engine = env.db.engine.sync_engine if env.is_async else env.db.engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _seen(*args: Any) -> None:
        seen_at_statement.append(consumed)

    async with env.session() as s:
        repo = env.repo(s, Author)
        keys = await env.run(repo.bulk_create(rows(), returning="keys", chunk_size=250))
        await env.run(s.commit())
    assert len(keys) == 1000
    # the first statement of the load ran when only the first chunk had been read
    assert next(n for n in seen_at_statement if n) == 250
    assert env.rows("SELECT count(*) FROM rp_authors") == [(1000,)]


async def test_objects_come_back_in_input_order(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        made = await env.run(
            repo.bulk_create([{"name": f"o{i}", "email": f"o{i}@x.io"} for i in range(1200)])
        )
        assert [a.name for a in made] == [f"o{i}" for i in range(1200)]
        assert [a.id for a in made] == list(range(1, 1201))
        assert len(env.statements) <= 3  # batches, never one INSERT per row
        tags = env.repo(s, Tag)
        await env.run(tags.bulk_create([{"kind": "k", "code": i, "label": "x"} for i in range(3)]))
        changed = await env.run(
            tags.bulk_update([{"kind": "k", "code": i, "label": f"y{i}"} for i in range(3)])
        )
        assert changed == 3
        await env.run(s.commit())
    assert env.rows("SELECT label FROM rp_tags ORDER BY code") == [("y0",), ("y1",), ("y2",)]
    assert env.rows("SELECT id, name FROM rp_authors WHERE id IN (1, 1200) ORDER BY id") == [
        (1, "o0"),
        (1200, "o1199"),
    ]


async def test_misuse(env: Env) -> None:
    class Unmapped:
        pass

    class BadWhitelist(Repository[Author]):
        filterable_fields = ("name", "shoe_size")

    async with env.session() as s:
        repo = env.repo(s, Author)
        with pytest.raises(InvalidOptionError, match="never saved; use create"):
            await env.run(repo.update(Author(name="x", email="y")))
        with pytest.raises(InvalidOptionError, match="expects a Author instance"):
            await env.run(repo.update(Post(title="x")))
        with pytest.raises(
            InvalidOptionError, match="delete\\(\\) got a Author that was never saved"
        ):
            await env.run(repo.delete(Author(name="x", email="y")))
        with pytest.raises(ConfigurationError, match="Unmapped is not a mapped class"):
            env.repo(s, Unmapped).model_class  # noqa: B018
        if not env.is_async:
            with pytest.raises(ConfigurationError, match="unknown column\\(s\\) shoe_size"):
                BadWhitelist(s).model_class  # noqa: B018
