"""CRUD: construction, get_by_id(s), get_one, create, update, delete -- rows and statements."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from sqlalchemy.orm import selectinload

from repom.exceptions import ConfigurationError, ConflictError, NotFoundError
from repom.repository import (
    AsyncBaseRepository,
    AsyncRepository,
    BaseRepository,
    InvalidOptionError,
    Repository,
    UnknownFieldError,
)
from tests.repository.conftest import Env
from tests.repository.models import Author, Doc, Post, Tag


class AuthorRepo(Repository[Author]):
    def get_by_email(self, email: str) -> Author | None:
        return self.get_one_or_none(email=email)


class AsyncAuthorRepo(AsyncRepository[Author]):
    async def get_by_email(self, email: str) -> Author | None:
        return await self.get_one_or_none(email=email)


class AuthorCreate(BaseModel):
    name: str
    email: str
    age: int | None = None


class AuthorUpdate(BaseModel):
    name: str | None = None
    age: int | None = None


async def _seed(env: Env, n: int = 3) -> None:
    env.execute(
        "INSERT INTO rp_authors (name, email, age, active, level, joined) VALUES "
        + ", ".join(
            f"('a{i}', 'a{i}@x.io', {20 + i}, {'true' if i % 2 == 0 else 'false'}, 'low', "
            "'2024-01-01 00:00:00')"
            for i in range(1, n + 1)
        )
    )


async def test_construction_forms(env: Env) -> None:
    async with env.session() as s:
        own = AsyncAuthorRepo(s) if env.is_async else AuthorRepo(s)
        assert own.model_class is Author
        generic = (AsyncRepository[Author] if env.is_async else Repository[Author])(s)
        assert generic.model_class is Author
        seed = (AsyncBaseRepository if env.is_async else BaseRepository)(s, Tag)
        assert seed.model_class is Tag
        named = (AsyncBaseRepository if env.is_async else BaseRepository)(
            session=s, model_class=Tag
        )
        assert named.model_class is Tag and repr(named).endswith("(Tag)")
        wrong = Repository if env.is_async else AsyncRepository
        with pytest.raises(ConfigurationError, match="needs a sqlalchemy"):
            wrong(s, Author)
        with pytest.raises(ConfigurationError, match="has no model"):
            (AsyncRepository if env.is_async else Repository)(s).model_class  # noqa: B018


async def test_create_dict_pydantic_instance_one_insert_each(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        a = await env.run(repo.create({"name": "ann", "email": "ann@x.io"}))
        b = await env.run(repo.create(AuthorCreate(name="bob", email="bob@x.io", age=40)))
        c = await env.run(repo.create(Author(name="cy", email="cy@x.io")))
        # the generated keys are there, with exactly one INSERT per create and no SELECT
        assert [a.id, b.id, c.id] == [1, 2, 3]
        assert len(env.statements) == 3
        assert all(st.startswith("INSERT INTO rp_authors") for st in env.statements)
        assert a.level.value == "low" and b.age == 40
        await env.run(s.commit())
    assert env.rows("SELECT id, name, age FROM rp_authors ORDER BY id") == [
        (1, "ann", None),
        (2, "bob", 40),
        (3, "cy", None),
    ]


async def test_create_rejects_unknown_field_and_writes_nothing(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        with pytest.raises(UnknownFieldError, match="no writable field 'nick'") as info:
            await env.run(repo.create({"name": "x", "email": "x@x.io", "nick": "y"}))
        assert info.value.field == "nick" and "email" in (info.value.allowed or [])
        with pytest.raises(InvalidOptionError, match="expects a Author instance"):
            await env.run(repo.create(42))
        assert env.statements == []
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(0,)]


async def test_get_by_id_uses_identity_map_and_composite_keys(env: Env) -> None:
    await _seed(env, 2)
    env.execute("INSERT INTO rp_tags (kind, code, label) VALUES ('x', 1, 'one'), ('x', 2, 'two')")
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        first = await env.run(repo.get_by_id(1))
        again = await env.run(repo.get_by_id(1))
        assert first is again and first.name == "a1"
        assert len(env.statements) == 1 and env.statements[0].startswith("SELECT")
        assert await env.run(repo.get_by_id(99)) is None
        assert (await env.run(repo.get_by_id("2"))).name == "a2"  # path-parameter string
        tags = env.repo(s, Tag)
        assert (await env.run(tags.get_by_id(("x", 2)))).label == "two"
        assert (await env.run(tags.get_by_id({"kind": "x", "code": 1}))).label == "one"
        with pytest.raises(Exception, match=r"tuple of 2 values \(kind, code\)"):
            await env.run(tags.get_by_id(1))
        with pytest.raises(Exception, match="expected an integer, got 'abc'"):
            await env.run(repo.get_by_id("abc"))


async def test_get_by_ids_keeps_the_order_given(env: Env) -> None:
    await _seed(env, 4)
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        found = await env.run(repo.get_by_ids([3, 1, 99, 3, 2]))
        assert [a.id for a in found] == [3, 1, 2]
        assert len(env.statements) == 1 and " IN " in env.statements[0]
        assert await env.run(repo.get_by_ids([])) == []


async def test_get_one_and_options(env: Env) -> None:
    await _seed(env, 2)
    env.execute("INSERT INTO rp_posts (author_id, title, views) VALUES (1, 'p1', 0), (1, 'p2', 0)")
    async with env.session() as s:
        repo = env.repo(s, AuthorRepo if not env.is_async else AsyncAuthorRepo)
        repo = (AsyncAuthorRepo if env.is_async else AuthorRepo)(s)
        found = await env.run(repo.get_by_email("a2@x.io"))
        assert found is not None and found.id == 2
        with pytest.raises(NotFoundError, match="Author not found"):
            await env.run(repo.get_one(email="nobody@x.io"))
        env.reset()
        author = await env.run(repo.get_by_id(1, options=["posts"]))
        # eager-loaded: one SELECT for the author, one for the posts; no lazy load later
        assert [p.title for p in author.posts] == ["p1", "p2"]
        assert len(env.statements) == 2
        env.reset()
        other = await env.run(repo.get_one(name="a2", options=[selectinload(Author.posts)]))
        assert other.posts == [] and len(env.statements) == 2


async def test_update_is_partial_and_one_statement(env: Env) -> None:
    await _seed(env, 1)
    async with env.session() as s:
        repo = env.repo(s, Author)
        author = await env.run(repo.get_by_id(1))
        env.reset()
        await env.run(repo.update(author, AuthorUpdate(age=77)))  # name not set: untouched
        assert len(env.statements) == 1 and env.statements[0].startswith(
            "UPDATE rp_authors SET age"
        )
        await env.run(repo.update(author, {"name": "renamed"}))
        author.active = True  # seeded False
        await env.run(repo.update(author))
        assert len(env.statements) == 3
        with pytest.raises(UnknownFieldError, match="no writable field 'bogus'"):
            await env.run(repo.update(author, {"bogus": 1}))
        await env.run(s.commit())
    assert env.rows("SELECT name, age, active FROM rp_authors") == [("renamed", 77, True)]


async def test_update_detached_entity(env: Env) -> None:
    await _seed(env, 1)
    async with env.session() as s:
        author = await env.run(env.repo(s, Author).get_by_id(1))
    async with env.session() as s:
        repo = env.repo(s, Author)
        await env.run(repo.update(author, {"name": "again"}))
        await env.run(s.commit())
    assert env.rows("SELECT name FROM rp_authors") == [("again",)]


async def test_version_conflicts(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Doc)
        doc = await env.run(repo.create({"title": "t", "slug": "s"}))
        await env.run(s.commit())
        assert doc.version == 1
    env.execute("UPDATE rp_docs SET version = 2, title = 'other' WHERE id = 1")
    async with env.session() as s:
        repo = env.repo(s, Doc)
        # a client that read version 1 sends it back: refused before anything is written
        current = await env.run(repo.get_by_id(1))
        with pytest.raises(ConflictError, match="changed since version 1"):
            await env.run(repo.update(current, {"title": "mine", "version": 1}))
        await env.run(s.rollback())
    async with env.session() as s:
        repo = env.repo(s, Doc)
        env.reset()
        with pytest.raises(ConflictError):
            await env.run(repo.update(doc, {"title": "stale"}))  # doc still holds version 1
        await env.run(s.rollback())
    assert env.rows("SELECT title, version FROM rp_docs") == [("other", 2)]


async def test_delete_by_id_and_instance(env: Env) -> None:
    await _seed(env, 3)
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        assert await env.run(repo.delete(1)) is True
        assert await env.run(repo.delete(1)) is False
        assert [st.split(" WHERE")[0] for st in env.statements] == ["DELETE FROM rp_authors"] * 2
        two = await env.run(repo.get_by_id(2))
        assert await env.run(repo.delete(two)) is True
        assert await env.run(repo.get_by_id(2)) is None
        await env.run(s.commit())
    assert env.rows("SELECT id FROM rp_authors") == [(3,)]


async def test_repository_never_commits(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        await env.run(repo.create({"name": "ann", "email": "ann@x.io"}))
        await env.run(repo.bulk_create([{"name": "b", "email": "b@x.io"}]))
        await env.run(s.rollback())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(0,)]


def test_sync_and_async_have_the_same_methods() -> None:
    import inspect

    names = {
        n
        for n, v in vars(Repository).items()
        if callable(v) and not n.startswith("_") and n != "select"
    }
    assert names == {
        n for n, v in vars(AsyncRepository).items() if callable(v) and not n.startswith("_")
    }
    for name in names:
        sync_sig = inspect.signature(getattr(Repository, name))
        async_sig = inspect.signature(getattr(AsyncRepository, name))
        assert list(sync_sig.parameters) == list(async_sig.parameters), name
        assert inspect.iscoroutinefunction(getattr(AsyncRepository, name)), name
    _ = Post
