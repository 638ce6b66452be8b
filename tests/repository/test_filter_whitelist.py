"""``filterable_fields`` restricts what *callers* filter on, not the application's own code.

Caller-supplied filters arrive as a ``filters=`` mapping or a positional mapping (what
``repom.fastapi.filter_params`` returns, the seeds' ``count(filters)``); they are checked against
the whitelist.  Keyword filters (``get_one(id=i)``) are written in code and may use any mapped
column, the primary key included.  Every scenario runs on SQLite and PostgreSQL, sync and async.
"""

from __future__ import annotations

from typing import Any

import pytest

from repom.exceptions import InvalidFilterError
from repom.repository import AsyncRepository, Repository
from tests.repository.conftest import Env
from tests.repository.models import Author

ONLY_NAME = r"^unknown filter field '\w+' for Author; allowed: name$"
COLUMNS = ["active", "age", "email", "id", "joined", "level", "name", "score"]


class NameOnly(Repository[Author]):
    filterable_fields = ("name",)


class AsyncNameOnly(AsyncRepository[Author]):
    filterable_fields = ("name",)


def _repo(env: Env, session: Any) -> Any:
    return (AsyncNameOnly if env.is_async else NameOnly)(session)


def _seed(env: Env) -> None:
    env.execute(
        "INSERT INTO rp_authors (id, name, email, age, score, active, level, joined) VALUES "
        "(1, 'ann', 'ann@x.io', 31, 0, true, 'low', '2024-01-01 00:00:00'), "
        "(2, 'bob', 'bob@x.io', 25, 0, true, 'low', '2024-01-01 00:00:00'), "
        "(3, 'ann', 'ann2@x.io', 40, 0, true, 'low', '2024-01-01 00:00:00')"
    )


async def test_code_filters_use_any_column(env: Env) -> None:
    _seed(env)
    async with env.session() as s:
        repo = _repo(env, s)
        env.reset()
        # the primary key and columns outside the whitelist, written in code
        assert (await env.run(repo.get_one(id=2))).name == "bob"
        assert (await env.run(repo.get_one_or_none(email="ann2@x.io"))).id == 3
        assert await env.run(repo.count(age__gte=31)) == 2
        assert await env.run(repo.exists(email__endswith="@x.io", id__in=[1, 2]))
        assert [a.id for a in await env.run(repo.list(id__ne=1, order_by="id"))] == [2, 3]
        page = await env.run(repo.paginate(1, 5, age__lt=40))
        assert ([a.id for a in page.items], page.total) == ([1, 2], 2)
        keyset = await env.run(repo.keyset(limit=5, email__startswith="ann"))
        assert [a.id for a in keyset.items] == [1, 3]
        stmt = repo.select(id=3)
        assert "rp_authors.id" in str(stmt)
        # one statement per call (paginate: the page is short, so no COUNT): nothing extra
        assert len(env.statements) == 7
        # caller filters and code filters combine (AND)
        both = await env.run(repo.list(filters={"name": "ann"}, age__gt=35))
        assert [a.id for a in both] == [3]


async def test_caller_filters_are_checked_against_the_whitelist(env: Env) -> None:
    _seed(env)
    async with env.session() as s:
        repo = _repo(env, s)
        env.reset()
        calls = [
            lambda: repo.list(filters={"email": "ann@x.io"}),
            lambda: repo.list({"id": 1}),  # positional mapping (seed style)
            lambda: repo.count({"age__gte": 1}),
            lambda: repo.exists(filters={"id": 1}),
            lambda: repo.get_one(filters={"email": "bob@x.io"}),
            lambda: repo.get_all(filters={"age": 25}),
            lambda: repo.paginate(1, 10, filters={"email__contains": "x"}),
            lambda: repo.keyset(filters={"id__gt": 1}),
            lambda: repo.select(filters={"email": "x"}),
        ]
        for call in calls:
            with pytest.raises(InvalidFilterError, match=ONLY_NAME) as info:
                await env.run(call())
            assert info.value.allowed == ["name"]
        # the caller's filter is refused even when code adds a filter of its own
        with pytest.raises(InvalidFilterError, match="unknown filter field 'email'") as info:
            await env.run(repo.list(filters={"email": "ann@x.io"}, id=1))
        assert info.value.field == "email"
        assert env.statements == []  # nothing reached the database
        # whitelisted caller filters work
        assert [a.id for a in await env.run(repo.list(filters={"name": "ann"}))] == [1, 3]


async def test_code_filters_are_still_validated(env: Env) -> None:
    async with env.session() as s:
        repo = _repo(env, s)
        env.reset()
        with pytest.raises(InvalidFilterError, match="unknown filter field 'nope'") as info:
            await env.run(repo.get_one(nope=1))
        assert info.value.allowed == COLUMNS  # every column is allowed to code, nothing more
        with pytest.raises(InvalidFilterError, match="expected an integer, got 'two'"):
            await env.run(repo.get_one(id="two"))
        with pytest.raises(InvalidFilterError, match="unknown filter operator 'between'"):
            await env.run(repo.count(id__between=[1, 2]))
        assert env.statements == []


async def test_delete_where_follows_the_same_rule(env: Env) -> None:
    _seed(env)
    async with env.session() as s:
        repo = _repo(env, s)
        env.reset()
        with pytest.raises(InvalidFilterError, match="unknown filter field 'email'"):
            await env.run(repo.delete_where(filters={"email": "bob@x.io"}, hard=True))
        assert env.statements == []
        assert await env.run(repo.delete_where(email="bob@x.io", hard=True)) == 1
        await env.run(s.commit())
    assert env.rows("SELECT id FROM rp_authors ORDER BY id") == [(1,), (3,)]
