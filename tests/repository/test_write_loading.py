"""``create(..., options=)`` / ``update(..., options=)``: the written object comes back with the
relationships asked for loaded, so it can be read without a lazy load (which an async session
cannot do on attribute access).  SQLite and PostgreSQL, sync and async, one body each."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import MissingGreenlet, StatementError
from sqlalchemy.orm import selectinload

from repom.exceptions import InvalidFilterError
from tests.repository.conftest import Env
from tests.repository.models import Author, Post


def _author(env: Env) -> None:
    env.execute(
        "INSERT INTO rp_authors (id, name, email, age, score, active, level, joined) VALUES "
        "(1, 'ann', 'ann@x.io', 31, 0, true, 'low', '2024-01-01 00:00:00')"
    )


async def test_create_loads_the_relationships_asked_for(env: Env) -> None:
    _author(env)
    async with env.session() as s:
        posts = env.repo(s, Post)
        env.reset()
        post = await env.run(posts.create({"author_id": 1, "title": "hello"}, options=["author"]))
        # INSERT, then the row with its author joined: nothing more, nothing left to load lazily
        assert [sql.split()[0] for sql in env.statements] == ["INSERT", "SELECT"]
        assert "JOIN rp_authors" in env.statements[1]
        assert "author" not in inspect(post).unloaded
        env.reset()
        assert post.author.name == "ann"
        assert env.statements == []

        # nested paths and loader options, as for reads
        authors = env.repo(s, Author)
        author = await env.run(
            authors.create(
                {"id": 2, "name": "bob", "email": "bob@x.io"}, options=[selectinload(Author.posts)]
            )
        )
        assert author.posts == []
        env.reset()
        second = await env.run(
            posts.create({"author_id": 1, "title": "again"}, options=["author.posts"])
        )
        # the row with its author joined, then the author's posts (a collection: selectin)
        assert [sql.split()[0] for sql in env.statements] == ["INSERT", "SELECT", "SELECT"]
        assert sorted(p.title for p in second.author.posts) == ["again", "hello"]
        await env.run(s.commit())
    assert env.rows("SELECT title FROM rp_posts ORDER BY id") == [("hello",), ("again",)]


async def test_update_loads_the_relationships_asked_for(env: Env) -> None:
    _author(env)
    env.execute(
        "INSERT INTO rp_authors (id, name, email, age, score, active, level, joined) VALUES "
        "(2, 'bob', 'bob@x.io', 25, 0, true, 'low', '2024-01-01 00:00:00')"
    )
    env.execute("INSERT INTO rp_posts (id, author_id, title, views) VALUES (1, 1, 'draft', 0)")
    async with env.session() as s:
        posts = env.repo(s, Post)
        post = await env.run(posts.get_by_id(1))
        assert "author" in inspect(post).unloaded
        env.reset()
        post = await env.run(posts.update(post, {"title": "final"}, options=["author"]))
        assert [sql.split()[0] for sql in env.statements] == ["UPDATE", "SELECT"]
        assert (post.title, post.author.name) == ("final", "ann")
        # a changed foreign key: the relationship asked for shows the new target
        post = await env.run(posts.update(post, {"author_id": 2}, options=["author"]))
        assert post.author.name == "bob"
        await env.run(s.commit())
    assert env.rows("SELECT title, author_id FROM rp_posts") == [("final", 2)]


async def test_without_options_no_extra_select_and_async_cannot_lazy_load(env: Env) -> None:
    _author(env)
    async with env.session() as s:
        posts = env.repo(s, Post)
        env.reset()
        post = await env.run(posts.create({"author_id": 1, "title": "plain"}))
        assert [sql.split()[0] for sql in env.statements] == ["INSERT"]
        assert "author" in inspect(post).unloaded
        if env.is_async:
            # what a response model reading post.author runs into
            # SQLAlchemy 2.1 wraps the MissingGreenlet in a StatementError
            with pytest.raises((MissingGreenlet, StatementError), match="greenlet_spawn"):
                _ = post.author
        else:
            assert post.author.name == "ann"  # a sync session loads it on access


async def test_unknown_relationship_writes_nothing(env: Env) -> None:
    _author(env)
    async with env.session() as s:
        posts = env.repo(s, Post)
        env.reset()
        with pytest.raises(InvalidFilterError, match="unknown relationship 'writer'") as info:
            await env.run(posts.create({"author_id": 1, "title": "x"}, options=["writer"]))
        assert info.value.allowed == ["author"]
        assert env.statements == []  # refused before the INSERT
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_posts") == [(0,)]


async def test_options_replace_the_default_options_of_the_same_relationship(env: Env) -> None:
    """A repository that always loads ``author`` (``default_options``, selectin) and a write
    asking for it (joined): one strategy wins, no "loader strategies conflict" error."""
    from repom.repository import AsyncRepository, Repository

    base = AsyncRepository if env.is_async else Repository

    class PostRepository(base[Post]):  # type: ignore[valid-type,misc]
        default_options = ("author",)

    _author(env)
    async with env.session() as s:
        posts = env.repo(s, Post, PostRepository)
        env.reset()
        post = await env.run(posts.create({"author_id": 1, "title": "hello"}, options=["author"]))
        assert [sql.split()[0] for sql in env.statements] == ["INSERT", "SELECT"]
        assert post.author.name == "ann"
        env.reset()
        read = await env.run(posts.list(options=[selectinload(Post.author)]))
        assert [p.author.name for p in read] == ["ann"]
        assert len(env.statements) == 2  # the posts, then their authors: once, not twice
        await env.run(s.commit())
