"""bulk_create at bulk speed: plain instances end up exactly as a flush leaves them (identity map,
history, rollback, expiry, events), instances that need the unit of work still get it, and
generators stream into one COPY on PostgreSQL (async drivers) without giving up "bad input:
nothing written".
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import String, event, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column

from repom.models import new_metadata
from repom.repository import bulk
from repom.repository.validation import ColumnValueError
from repom.types import JSONBType
from tests.repository.conftest import Env
from tests.repository.models import Author, Item, Post
from tests.support import enter


class FastBase(DeclarativeBase):
    metadata = new_metadata()


def _tag(context: Any) -> str:
    """A context-aware default: it reads the row being inserted."""
    return f"{context.get_current_parameters()['name']}-{context.get_current_parameters()['qty']}"


class Gadget(FastBase):
    """A serial key, a Python default, a tracked JSON document with a default, a column
    without any default and a SQL expression column property."""

    __tablename__ = "rpf_gadgets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int] = mapped_column(default=1)
    doc: Mapped[dict[str, Any]] = mapped_column(JSONBType(), default=dict)
    note: Mapped[str | None] = mapped_column(String(20))  # never given: NULL, left unloaded
    tag: Mapped[str] = mapped_column(String(50), default=_tag)
    shout: Mapped[str] = column_property(name + "!")


@pytest.fixture
async def gadgets(env: Env) -> AsyncIterator[Env]:
    FastBase.metadata.drop_all(env.verify)
    FastBase.metadata.create_all(env.verify)
    yield env
    FastBase.metadata.drop_all(env.verify)


def _made(prefix: str) -> list[Gadget]:
    return [
        Gadget(name=f"{prefix}{i}", doc={"i": i}) if i % 2 else Gadget(name=f"{prefix}{i}", qty=7)
        for i in range(6)
    ]


def _summary(session: Any, obj: Any) -> dict[str, Any]:
    """What a flush leaves on an inserted object, value aside."""
    state = inspect(obj)
    assert state.key is not None
    return {
        "persistent": state.persistent,
        "modified": state.modified,
        "history": dict(state.committed_state),
        "expired": set(state.expired_attributes),
        "unloaded": set(state.unloaded),
        "in identity map": session.identity_map.get(state.key) is obj,
        "new": obj in session.new,
        "dirty": obj in session.dirty,
        "doc type": type(state.dict["doc"]).__name__,  # tracked container (refresh_flush)
        "loaded": sorted(k for k in state.dict if not k.startswith("_")),
    }


def _inserts(env: Env) -> list[str]:
    return [s for s in env.statements if s.startswith("INSERT")]


def _streams(env: Env) -> bool:
    """Does bulk_create stream a generator into one COPY here (PostgreSQL, async driver)?"""
    return env.backend == "postgresql" and env.is_async


def _copies(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the columns of each COPY that bulk_create sends (the driver's COPY does not go
    through SQLAlchemy's statement events)."""
    seen: list[list[str]] = []
    real = bulk._copy

    def counting(conn: Any, table: Any, columns: Any, records: Any) -> int:
        seen.append([c.name for c in columns])
        return real(conn, table, columns, records)

    monkeypatch.setattr(bulk, "_copy", counting)
    return seen


# --------------------------------------------------------------------------- instances


async def test_instances_end_up_as_a_flush_leaves_them(gadgets: Env) -> None:
    env = gadgets
    async with env.session() as s:
        repo = env.repo(s, Gadget)
        ours, theirs = _made("r"), _made("o")
        env.reset()
        assert await env.run(repo.bulk_create(ours)) == ours
        if env.backend == "postgresql":
            assert _inserts(env) == [] and len(env.statements) == 1  # nextval, then COPY
        else:
            assert len(_inserts(env)) == 1
        s.add_all(theirs)
        await env.run(s.flush())
        for mine, orm in zip(ours, theirs, strict=True):
            assert _summary(s, mine) == _summary(s, orm)
        assert [g.qty for g in ours] == [g.qty for g in theirs] == [7, 1, 7, 1, 7, 1]
        assert [g.doc for g in ours] == [{}, {"i": 1}, {}, {"i": 3}, {}, {"i": 5}]
        assert [g.tag for g in ours] == ["r0-7", "r1-1", "r2-7", "r3-1", "r4-7", "r5-1"]
        assert [g.tag for g in theirs] == ["o0-7", "o1-1", "o2-7", "o3-1", "o4-7", "o5-1"]
        assert [g.id for g in ours] == [1, 2, 3, 4, 5, 6]
        # a default document is tracked as after a flush: changing it in place is a change
        env.reset()
        ours[0].doc["k"] = "v"
        theirs[0].doc["k"] = "v"
        ours[1].name = "renamed"
        await env.run(s.flush())
        updates = [st for st in env.statements if st.startswith("UPDATE rpf_gadgets")]
        assert len(updates) == 3 and len(env.statements) == 3
        await env.run(s.commit())
    assert env.rows("SELECT id, name, qty, doc FROM rpf_gadgets WHERE id <= 2 ORDER BY id") == [
        (1, "r0", 7, {"k": "v"} if env.backend == "postgresql" else '{"k": "v"}'),
        (2, "renamed", 1, {"i": 1} if env.backend == "postgresql" else '{"i": 1}'),
    ]


async def test_rollback_makes_them_transient_again(gadgets: Env) -> None:
    env = gadgets
    async with env.session() as s:
        repo = env.repo(s, Gadget)
        objs = _made("a")
        await env.run(repo.bulk_create(objs))
        await env.run(s.rollback())
        for obj in objs:
            assert inspect(obj).transient and obj not in s
        assert len(s.identity_map) == 0
        # transient again, as the ORM leaves flushed objects: they can be written again
        await env.run(repo.bulk_create(objs))
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rpf_gadgets") == [(6,)]


async def test_savepoints_keep_or_drop_them_as_a_flush(gadgets: Env) -> None:
    env = gadgets
    async with env.session() as s:
        repo = env.repo(s, Gadget)
        dropped, kept, outer = _made("d"), _made("k"), _made("o")
        await env.run(repo.bulk_create(outer))
        nested = await env.run(s.begin_nested())
        await env.run(repo.bulk_create(dropped))
        await env.run(nested.rollback())
        assert all(inspect(g).transient for g in dropped)
        assert all(inspect(g).persistent for g in outer)
        nested = await env.run(s.begin_nested())
        await env.run(repo.bulk_create(kept))
        await env.run(nested.commit())
        await env.run(s.rollback())  # the outer transaction: everything it wrote is gone
        assert all(inspect(g).transient for g in kept + outer)
    assert env.rows("SELECT count(*) FROM rpf_gadgets") == [(0,)]
    async with env.session() as s:
        repo = env.repo(s, Gadget)
        nested = await env.run(s.begin_nested())
        await env.run(repo.bulk_create(kept))
        await env.run(nested.commit())
        await env.run(s.commit())
        assert all(inspect(g).persistent for g in kept)
    assert env.rows("SELECT count(*) FROM rpf_gadgets") == [(6,)]


async def test_commit_expires_them_when_the_session_does(gadgets: Env) -> None:
    env = gadgets
    async with enter(env.db.session(expire_on_commit=True)) as s:
        repo = env.repo(s, Gadget)
        objs = _made("e")
        await env.run(repo.bulk_create(objs))
        await env.run(s.commit())
        for obj in objs:
            state = inspect(obj)
            assert state.persistent and state.expired
            assert {"name", "qty", "doc"} <= state.expired_attributes
        env.reset()
        await env.run(s.refresh(objs[3]))
        assert objs[3].name == "e3" and objs[3].shout == "e3!" and len(env.statements) == 1


async def test_identity_map_and_changes(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        authors = [Author(name=f"i{i}", email=f"i{i}@x.io") for i in range(3)]
        await env.run(repo.bulk_create(authors))
        assert not s.new and not s.dirty and all(a in s for a in authors)
        env.reset()
        found = await env.run(s.scalars(select(Author).order_by(Author.id)))
        assert list(found) == authors  # the same objects, from the identity map
        assert await env.run(s.get(Author, authors[1].id)) is authors[1]
        env.reset()
        authors[2].age = 44
        await env.run(s.flush())
        assert len(env.statements) == 1
        assert env.statements[0].startswith("UPDATE rp_authors SET age=")
        await env.run(s.commit())
    assert env.rows("SELECT name, age FROM rp_authors ORDER BY id") == [
        ("i0", None),
        ("i1", None),
        ("i2", 44),
    ]


# --------------------------------------------------------------------------- unit of work


async def test_session_listeners_get_the_unit_of_work(env: Env) -> None:
    seen: list[str] = []
    async with env.session() as s:
        sync = s.sync_session if env.is_async else s

        @event.listens_for(sync, "transient_to_pending")
        def pending(session: Any, obj: Any) -> None:
            seen.append(obj.name)

        repo = env.repo(s, Author)
        env.reset()
        authors = [Author(name=f"l{i}", email=f"l{i}@x.io") for i in range(3)]
        keys = await env.run(repo.bulk_create(authors, returning="keys"))
        assert seen == ["l0", "l1", "l2"] and keys == [1, 2, 3]
        assert len(_inserts(env)) >= 1  # the ORM's INSERT, not COPY
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(3,)]


async def test_server_defaults_decide_the_path(env: Env) -> None:
    stamp = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    async with env.session() as s:
        repo = env.repo(s, Item)
        env.reset()
        # every server-default column given: the row path (keys made in Python: COPY only)
        given = [Item(sku=f"g{i}", price=Decimal(1), note="given", created=stamp) for i in range(3)]
        await env.run(repo.bulk_create(given))
        assert (env.statements == []) if env.backend == "postgresql" else len(_inserts(env)) == 1
        assert all(inspect(i).persistent for i in given)
        # server-default columns left unset: the unit of work fetches what the server made
        env.reset()
        unset = [Item(sku=f"u{i}", price=Decimal(2)) for i in range(3)]
        await env.run(repo.bulk_create(unset))
        assert len(_inserts(env)) >= 1
        assert [i.note for i in unset] == ["n/a"] * 3
        # some serial keys given, some not: the unit of work as well
        env.reset()
        authors = [Author(id=50, name="k", email="k@x.io"), Author(name="m", email="m@x.io")]
        made = await env.run(env.repo(s, Author).bulk_create(authors, returning="keys"))
        assert made[0] == 50 and len(_inserts(env)) >= 1
        # an instance the session already knows, in a chunk: the whole chunk goes through it
        env.reset()
        known = await env.run(env.repo(s, Author).get_by_id(50))
        post_author = Author(name="p", email="p@x.io")
        post_author.posts.append(Post(title="t"))
        both = await env.run(env.repo(s, Author).bulk_create([known, post_author]))
        assert both[0] is known and post_author.posts[0].author_id == post_author.id
        await env.run(s.commit())
    assert env.rows("SELECT note FROM rp_items ORDER BY sku") == [("given",)] * 3 + [("n/a",)] * 3


# --------------------------------------------------------------------------- generators


def _author_rows(n: int, bad: int | None = None, start: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        name = "x" * 51 if i == bad else f"n{i}"
        yield {"name": name, "email": f"g{i}@x.io", "age": i % 90}


async def test_a_generator_streams_into_one_copy(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    copies = _copies(monkeypatch)
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        count = await env.run(repo.bulk_create(_author_rows(60_000), returning=None))
        assert count == 60_000
        if _streams(env):
            # chunks of the generator fed into one COPY (a savepoint around it, not counted)
            assert len(copies) == 1 and env.statements == []
        elif env.backend == "postgresql":  # psycopg's sync connection: a COPY per 50,000 rows
            assert len(copies) == 2 and env.statements == []

        # rows of another shape end the COPY run and start the next one
        def two_shapes() -> Iterator[dict[str, Any]]:
            for i in range(15_000):
                yield {"name": f"a{i}", "email": f"a{i}@x.io"}
            for i in range(15_000):
                yield {"name": f"b{i}", "email": f"b{i}@x.io", "age": 3}

        copies.clear()
        assert await env.run(repo.bulk_create(two_shapes(), returning=None)) == 30_000
        if env.backend == "postgresql":
            # (Python defaults of the columns not given are computed and sent too)
            assert len(copies) == 2 and "age" not in copies[0] and "age" in copies[1]
        await env.run(s.commit())
    assert env.rows("SELECT count(*), count(age) FROM rp_authors") == [(90_000, 75_000)]


async def test_a_generator_with_client_side_keys_returns_them_in_order(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = _copies(monkeypatch)
    rows = ({"sku": f"s{i}", "price": Decimal("0.5"), "qty": i} for i in range(25_000))
    async with env.session() as s:
        keys = await env.run(env.repo(s, Item).bulk_create(rows, returning="keys"))
        assert len(keys) == 25_000 and all(isinstance(k, uuid.UUID) for k in keys)
        if env.backend == "postgresql":
            assert len(copies) == 1
        await env.run(s.commit())
    stored = env.rows("SELECT id FROM rp_items ORDER BY qty")
    assert [uuid.UUID(str(r[0])) for r in stored] == keys


async def test_a_bad_row_late_in_a_generator(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        with pytest.raises(ColumnValueError) as info:
            await env.run(repo.bulk_create(_author_rows(25_000, bad=23_456), returning=None))
        assert info.value.field == "name" and "Author.name (row 23456)" in str(info.value)
        assert "longer than the column's 50" in str(info.value)
        # the transaction is still usable
        await env.run(repo.create({"name": "after", "email": "after@x.io"}))
        await env.run(s.commit())
    # PostgreSQL streams the rows into one COPY inside a savepoint (async drivers), or checks
    # them in chunks of 50,000 before each COPY: nothing of the call is written.  Elsewhere
    # each chunk (10,000 rows) is its own statement, written as it comes.
    expected = 1 if env.backend == "postgresql" else 20_001
    assert env.rows("SELECT count(*) FROM rp_authors") == [(expected,)]


async def test_a_bad_row_in_the_first_chunk_writes_nothing(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        with pytest.raises(ColumnValueError) as info:
            await env.run(repo.bulk_create(_author_rows(5_000, bad=4_000), returning="keys"))
        assert "Author.name (row 4000)" in str(info.value)
        assert env.statements == []
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(0,)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"name": "a\x00b"}, "NUL character"),
        ({"name": "\ud800"}, "lone surrogate"),
        ({"age": True}, "expected an integer, got bool"),
        ({"age": 2**31}, "out of the 32-bit range"),
        ({"active": 1}, "expected True or False, got int"),
        ({"score": "12"}, "expected an integer, got str"),
    ],
)
async def test_whole_column_checks_name_the_row(
    env: Env, row: dict[str, Any], message: str
) -> None:
    rows = [
        {"name": f"c{i}", "email": f"c{i}@x.io", "age": None, "active": True, "score": i}
        for i in range(30)
    ]
    rows[17] = {**rows[17], **row}
    async with env.session() as s:
        with pytest.raises(ColumnValueError) as info:
            await env.run(env.repo(s, Author).bulk_create(rows, returning=None))
        field = next(iter(row))
        assert f"Author.{field} (row 17)" in str(info.value) and message in str(info.value)
        assert info.value.field == field
    assert env.rows("SELECT count(*) FROM rp_authors") == [(0,)]


async def test_a_stale_object_with_the_same_key_is_replaced(env: Env) -> None:
    from sqlalchemy import delete

    async with env.session() as s:
        repo = env.repo(s, Author)
        old = await env.run(repo.create({"name": "old", "email": "old@x.io"}))
        # the row goes away behind the identity map's back
        stmt = delete(Author).where(Author.id == old.id)
        await env.run(s.execute(stmt, execution_options={"synchronize_session": False}))
        assert s.identity_map.get(inspect(old).key) is old
        new = Author(id=old.id, name="new", email="new@x.io")
        await env.run(repo.bulk_create([new]))
        assert await env.run(s.get(Author, old.id)) is new
        assert inspect(new).persistent and old not in list(s.identity_map.values())
        await env.run(s.commit())
    assert env.rows("SELECT name FROM rp_authors") == [("new",)]


async def test_without_the_internals_the_public_path_is_taken(
    gadgets: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLAlchemy whose internals differ: make_transient_to_detached + add, same result but
    for the rollback (the objects stay in the session, expired)."""
    env = gadgets
    monkeypatch.setattr(bulk, "_FAST_PERSIST", False)
    async with env.session() as s:
        objs = _made("p")
        await env.run(env.repo(s, Gadget).bulk_create(objs))
        assert all(inspect(g).persistent and not inspect(g).modified for g in objs)
        assert await env.run(s.get(Gadget, objs[2].id)) is objs[2]
        assert objs[0].qty == 7 and objs[1].qty == 1
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rpf_gadgets") == [(6,)]


async def test_an_input_that_reads_the_session_while_streamed(env: Env) -> None:
    """Rows computed from the same session as they are read: fine when the input is read
    between statements (chunk_size=N, and every path but the streamed COPY); the streamed COPY
    cannot share its connection, and says so."""
    from sqlalchemy import func

    async with env.session() as s:
        repo = env.repo(s, Author)
        sync = s.sync_session if env.is_async else s

        def rows(n: int, prefix: str) -> Iterator[dict[str, Any]]:
            for i in range(n):
                if i == n - 10:  # far into the input: a streamed COPY is running by now
                    sync.execute(select(func.count()).select_from(Author)).scalar()
                yield {"name": f"{prefix}{i}", "email": f"{prefix}{i}@x.io"}

        count = await env.run(repo.bulk_create(rows(12_000, "a"), returning=None, chunk_size=5000))
        assert count == 12_000
        if _streams(env):
            with pytest.raises(Exception) as info:
                await env.run(repo.bulk_create(rows(25_000, "b"), returning=None))
            assert "pass chunk_size=N" in "\n".join(getattr(info.value, "__notes__", []))
        else:
            assert await env.run(repo.bulk_create(rows(25_000, "b"), returning=None)) == 25_000
        await env.run(repo.create({"name": "after", "email": "after@x.io"}))  # still usable
        await env.run(s.commit())
    expected = 12_001 if _streams(env) else 37_001
    assert env.rows("SELECT count(*) FROM rp_authors") == [(expected,)]


async def test_errors_name_the_position_in_the_whole_input(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        authors = [Author(name=f"p{i}", email=f"p{i}@x.io") for i in range(30)]
        authors[25].name = "y" * 60
        with pytest.raises(ColumnValueError, match=r"Author\.name \(row 25\)"):
            await env.run(repo.bulk_create(authors, chunk_size=10))
        rows = [{"name": f"q{i}", "email": f"q{i}@x.io"} for i in range(30)]
        rows[27]["name"] = "z" * 60
        with pytest.raises(ColumnValueError, match=r"Author\.name \(row 27\)"):
            await env.run(repo.bulk_create(rows, chunk_size=10, returning=None))
