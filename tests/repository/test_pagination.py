"""paginate (offset + total) and keyset (signed cursors, unique tie-breaker)."""

from __future__ import annotations

import base64

import pytest

from repom.exceptions import InvalidCursorError, InvalidFilterError
from repom.repository import AsyncRepository, CursorCodec, Page, Repository
from tests.repository.conftest import Env
from tests.repository.models import Author, Post


async def _seed(env: Env, n: int = 7) -> None:
    # scores repeat (tie-breaker needed): 20, 21, 22, 20, 21, 22, 20
    values = ", ".join(
        f"('u{i}', 'u{i}@x.io', {20 + (i - 1) % 3}, {20 + (i - 1) % 3}, true, 'low', "
        f"'2024-01-0{1 + i % 3} 10:00:00.000000')"
        for i in range(1, n + 1)
    )
    env.execute(
        f"INSERT INTO rp_authors (name, email, age, score, active, level, joined) VALUES {values}"
    )


async def test_paginate_counts_only_when_needed(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        first = await env.run(repo.paginate(1, 3))
        assert isinstance(first, Page)
        assert [a.name for a in first.items] == ["u1", "u2", "u3"]
        assert (first.total, first.page, first.per_page, first.pages) == (7, 1, 3, 3)
        assert first.has_next and not first.has_prev
        assert len(env.statements) == 2  # a full page: the total needs a COUNT
        env.reset()
        last = await env.run(repo.paginate(3, 3))
        assert [a.name for a in last] == ["u7"] and last.total == 7 and not last.has_next
        assert len(env.statements) == 1  # a partial page tells the total itself
        env.reset()
        beyond = await env.run(repo.paginate(9, 3, order_by="-score"))
        assert beyond.items == [] and beyond.total == 7
        filtered = await env.run(repo.paginate(1, 10, Author.age == 20))
        assert filtered.total == 3 and filtered.pages == 1
        names = await env.run(repo.paginate(1, 2, order_by=["-score", "-id"]))
        assert [a.name for a in names] == ["u6", "u3"]
        assert names.map(lambda a: a.id).items == [6, 3]
        with pytest.raises(InvalidFilterError, match="page must be an integer >= 1"):
            await env.run(repo.paginate(0, 10))
        with pytest.raises(InvalidFilterError, match="per_page must be >= 1"):
            await env.run(repo.paginate(1, 0))


async def test_paginate_empty_table(env: Env) -> None:
    async with env.session() as s:
        env.reset()
        page = await env.run(env.repo(s, Author).paginate(1, 10))
        assert (page.items, page.total, page.pages) == ([], 0, 0)
        assert len(env.statements) == 1


async def test_keyset_walks_every_row_once(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            env.reset()
            page = await env.run(repo.keyset(after=cursor, limit=3, order_by="score"))
            assert len(env.statements) == 1  # one statement per page, no COUNT
            seen.extend(a.id for a in page.items)
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        # ordered by age, ties broken by the primary key
        assert seen == [1, 4, 7, 2, 5, 3, 6] and pages == 3
        assert page.has_next is False


async def test_keyset_descending_mixed_and_filtered(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)
        first = await env.run(repo.keyset(limit=4, order_by=["-score", "-id"]))
        assert [a.id for a in first] == [6, 3, 5, 2]
        rest = await env.run(
            repo.keyset(after=first.next_cursor, limit=4, order_by=["-score", "-id"])
        )
        assert [a.id for a in rest] == [7, 4, 1] and rest.next_cursor is None
        # mixed directions: score descending, then id ascending (expanded OR predicate)
        mixed = await env.run(repo.keyset(limit=2, order_by=["-score", "id"]))
        assert [a.id for a in mixed] == [3, 6]
        nxt = await env.run(
            repo.keyset(after=mixed.next_cursor, limit=10, order_by=["-score", "id"])
        )
        assert [a.id for a in nxt] == [2, 5, 1, 4, 7]
        # datetime ordering with a filter
        by_date = await env.run(
            repo.keyset(Author.score > 20, limit=2, order_by=Author.joined.desc())
        )
        after = await env.run(
            repo.keyset(
                Author.score > 20, after=by_date.next_cursor, limit=5, order_by=Author.joined.desc()
            )
        )
        ids = [a.id for a in by_date] + [a.id for a in after]
        assert sorted(ids) == [2, 3, 5, 6] and len(set(ids)) == 4


async def test_keyset_rejects_bad_cursors_and_orders(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)
        page = await env.run(repo.keyset(limit=2, order_by="score"))
        token = page.next_cursor
        assert token is not None and "." in token
        body, mac = token.split(".")
        raw = base64.urlsafe_b64decode(body + "==").replace(b"20", b"99")
        forged = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac
        env.reset()
        with pytest.raises(InvalidCursorError, match="signature mismatch"):
            await env.run(repo.keyset(after=forged, order_by="score"))
        with pytest.raises(InvalidCursorError, match="different ordering"):
            await env.run(repo.keyset(after=token, order_by="-score"))
        with pytest.raises(InvalidCursorError, match="malformed"):
            await env.run(repo.keyset(after="garbage", order_by="score"))
        with pytest.raises(InvalidCursorError, match="too long"):
            await env.run(repo.keyset(after="a" * 5000))
        with pytest.raises(InvalidFilterError, match="nullable column 'age'") as info:
            await env.run(repo.keyset(order_by=Author.age))
        assert info.value.field == "age"
        with pytest.raises(InvalidFilterError, match="orders by columns only"):
            await env.run(repo.keyset(order_by=Author.age + 1))
        with pytest.raises(InvalidFilterError, match="limit must be >= 1"):
            await env.run(repo.keyset(limit=0))
        assert env.statements == []
        # another secret: the cursor is refused
        other = (AsyncRepository if env.is_async else Repository)(s, Author, cursor_secret="other")
        with pytest.raises(InvalidCursorError, match="signature mismatch"):
            await env.run(other.keyset(after=token, order_by="score"))


def test_cursor_codec_roundtrip() -> None:
    import datetime as dt
    import uuid
    from decimal import Decimal

    codec = CursorCodec("M", [("a", False), ("b", True)], b"k")
    values = [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), uuid.UUID(int=5)]
    assert codec.decode(codec.encode(values)) == values
    codec3 = CursorCodec("M", [("a", False), ("b", False), ("c", False)], b"k")
    more = [Decimal("1.50"), dt.date(2024, 1, 2), b"\x00\x01"]
    assert codec3.decode(codec3.encode(more)) == more
    _ = Post
