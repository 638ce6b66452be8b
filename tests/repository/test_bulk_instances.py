"""bulk_create of model instances: plain instances take the row path (COPY / unnest /
executemany) and come back persistent; instances that need the unit of work still go through it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import String, event, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.models import TimestampMixin, UUIDPrimaryKeyMixin, VersionMixin, new_metadata
from tests.repository.conftest import Env
from tests.repository.models import Author, Level, Post


class InstBase(DeclarativeBase):
    metadata = new_metadata()


class Event(UUIDPrimaryKeyMixin, TimestampMixin, VersionMixin, InstBase):
    """UUIDv7 key, timestamps and a version counter: all set in Python."""

    __tablename__ = "rpi_events"

    name: Mapped[str] = mapped_column(String(50))
    size: Mapped[int] = mapped_column(default=3)
    note: Mapped[str | None] = mapped_column(String(20))


class Audited(InstBase):
    """A ``before_insert`` listener: the unit of work must run it."""

    __tablename__ = "rpi_audited"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    stamp: Mapped[str | None] = mapped_column(String(20))


SEEN: list[str] = []


@event.listens_for(Audited, "before_insert")
def _stamp(mapper: Any, connection: Any, target: Audited) -> None:
    SEEN.append(target.name)
    target.stamp = "by-listener"


@pytest.fixture
async def tables(env: Env) -> AsyncIterator[Env]:
    InstBase.metadata.drop_all(env.verify)
    InstBase.metadata.create_all(env.verify)
    SEEN.clear()
    yield env
    InstBase.metadata.drop_all(env.verify)


def _inserts(env: Env) -> list[str]:
    return [s for s in env.statements if s.startswith("INSERT")]


async def _no_sql_get(env: Env, s: Any, model: type[Any], obj: Any, key: Any) -> None:
    env.reset()
    assert await env.run(s.get(model, key)) is obj
    assert env.statements == []


async def test_plain_instances_take_the_row_path(tables: Env) -> None:
    env = tables
    authors = [Author(name=f"a{i}", email=f"a{i}@x.io", age=i) for i in range(25)]
    authors[3].age = None  # None: left out, as the ORM does (no default: NULL)
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        made = await env.run(repo.bulk_create(authors, chunk_size=10))
        assert made == authors
        if env.backend == "postgresql":
            # keys reserved from the sequence (one SELECT per chunk), rows sent by COPY
            assert _inserts(env) == []
            assert sum("nextval" in st for st in env.statements) == 3
        else:
            inserts = _inserts(env)
            assert len(inserts) == 3 and all("RETURNING" in st for st in inserts)
        assert [a.id for a in authors] == list(range(1, 26))
        for a in authors:
            state = inspect(a)
            assert state.persistent and not state.modified and a not in s.dirty
            assert state.unloaded == {"posts"}  # every column loaded, no lazy load on access
            # Python defaults applied as the ORM applies them
            assert a.score == 0 and a.active is True and a.level is Level.low
            assert isinstance(a.joined, dt.datetime)
        assert authors[3].age is None
        await _no_sql_get(env, s, Author, authors[7], authors[7].id)
        await env.run(s.commit())
    got = env.rows("SELECT id, name, email, age, score, active, level FROM rp_authors ORDER BY id")
    assert got == [
        (a.id, a.name, a.email, a.age, a.score, bool(a.active), a.level.value) for a in authors
    ]


async def test_mixin_defaults_and_keys(tables: Env) -> None:
    env = tables
    chosen = uuid.UUID("01900000-0000-7000-8000-000000000001")
    events = [Event(name=f"e{i}") for i in range(5)] + [Event(id=chosen, name="x", size=9)]
    async with env.session() as s:
        repo = env.repo(s, Event)
        env.reset()
        keys = await env.run(repo.bulk_create(events, returning="keys"))
        assert keys == [e.id for e in events] and keys[-1] == chosen
        if env.backend == "postgresql":
            assert env.statements == []  # keys made in Python: COPY only
        else:
            assert len(_inserts(env)) == 1
        for e in events[:-1]:
            assert e.id.version == 7
        for e in events:
            assert inspect(e).persistent and not inspect(e).modified
            assert e.version == 1 and e.created_at == e.updated_at
            assert e.created_at.tzinfo is not None
        assert events[0].size == 3 and events[-1].size == 9 and events[0].note is None
        await _no_sql_get(env, s, Event, events[2], events[2].id)
        # persistent for real: a change is an UPDATE with the version check
        events[1].name = "changed"
        await env.run(s.flush())
        assert events[1].version == 2
        await env.run(s.commit())
    rows = env.rows("SELECT id, name, size, note, version FROM rpi_events")
    by_id = {uuid.UUID(str(r[0])): r[1:] for r in rows}
    assert by_id == {e.id: (e.name, e.size, e.note, e.version) for e in events}
    stamps = env.rows("SELECT created_at, updated_at FROM rpi_events WHERE name <> 'changed'")
    assert len(stamps) == 5 and all(c == u for c, u in stamps)


async def test_pending_relationship_takes_the_unit_of_work(tables: Env) -> None:
    env = tables
    async with env.session() as s:
        repo = env.repo(s, Author)
        author = Author(name="r", email="r@x.io")
        author.posts.append(Post(title="p1"))
        plain = Author(name="q", email="q@x.io")
        made = await env.run(repo.bulk_create([plain, author]))
        assert made == [plain, author]
        assert author.posts[0].id is not None and author.posts[0].author_id == author.id
        assert inspect(author).persistent and inspect(plain).persistent
        await env.run(s.commit())
    assert env.rows("SELECT title, author_id FROM rp_posts") == [("p1", author.id)]


async def test_insert_listener_takes_the_unit_of_work(tables: Env) -> None:
    env = tables
    async with env.session() as s:
        repo = env.repo(s, Audited)
        objs = [Audited(name=f"n{i}") for i in range(3)]
        keys = await env.run(repo.bulk_create(objs, returning="keys"))
        assert SEEN == ["n0", "n1", "n2"]
        assert keys == [o.id for o in objs] == [1, 2, 3]
        await env.run(s.commit())
    assert env.rows("SELECT stamp FROM rpi_audited") == [("by-listener",)] * 3


async def test_method_insert_and_copy(tables: Env) -> None:
    env = tables
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        batch = [Author(name=f"m{i}", email=f"m{i}@x.io") for i in range(4)]
        assert await env.run(repo.bulk_create(batch, method="insert", returning=None)) == 4
        if env.backend == "postgresql":
            assert any("FROM unnest(" in st for st in _inserts(env))
            more = [Author(name=f"c{i}", email=f"c{i}@x.io") for i in range(2)]
            assert await env.run(repo.bulk_create(more, method="copy", returning="keys")) == [5, 6]
        assert all(inspect(a).persistent for a in batch)
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_authors") == [
        (6 if env.backend == "postgresql" else 4,)
    ]
