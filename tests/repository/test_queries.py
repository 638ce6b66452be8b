"""Reads: list/get_all/count/exists, filter operators, ordering, limits and every bad input."""

from __future__ import annotations

import pytest
from sqlalchemy import true

from repom.config import RepomConfig, set_config
from repom.exceptions import InvalidFilterError
from repom.repository import (
    AsyncRepository,
    InvalidOptionError,
    Repository,
    escape_like,
    split_filter_key,
    validate_filters,
    validate_order_by,
)
from tests.repository.conftest import Env
from tests.repository.models import Author


class Whitelisted(Repository[Author]):
    filterable_fields = ("name", "age")
    orderable_fields = ("age",)
    max_page_size = 3


class AsyncWhitelisted(AsyncRepository[Author]):
    filterable_fields = ("name", "age")
    orderable_fields = ("age",)
    max_page_size = 3


async def _seed(env: Env) -> None:
    rows = [
        ("ann", "ann@x.io", 31, True, "high"),
        ("bob", "bob@x.io", 25, False, "low"),
        ("cat_1", "cat@x.io", None, True, "low"),
        ("dan%", "dan@y.io", 40, True, "high"),
        ("Eve", "eve@y.io", 25, True, "low"),
    ]
    values = ", ".join(
        f"('{n}', '{e}', {'NULL' if a is None else a}, {str(ac).lower()}, '{lv}', "
        "'2024-01-01 00:00:00')"
        for n, e, a, ac, lv in rows
    )
    env.execute(f"INSERT INTO rp_authors (name, email, age, active, level, joined) VALUES {values}")


async def _names(env: Env, coro: object) -> list[str]:
    return [a.name for a in await env.run(coro)]


async def test_filter_operators(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)

        async def names(**filters: object) -> list[str]:
            return sorted(a.name for a in await env.run(repo.list(**filters)))

        assert await names(age=25) == ["Eve", "bob"]
        assert await names(age__ne=25) == ["ann", "dan%"]  # NULL is neither equal nor unequal
        assert await names(age__not=25) == ["ann", "dan%"]
        assert await names(age__in=[31, 40]) == ["ann", "dan%"]
        assert await names(age__not_in=[31, 40]) == ["Eve", "bob"]
        assert await names(age__lt=31) == ["Eve", "bob"]
        assert await names(age__lte=31) == ["Eve", "ann", "bob"]
        assert await names(age__gt=31) == ["dan%"]
        assert await names(age__gte="31") == ["ann", "dan%"]  # query-string value converted
        assert await names(age__is_null=True) == ["cat_1"]
        assert await names(age__is_null="false") == ["Eve", "ann", "bob", "dan%"]
        assert await names(age=None) == ["cat_1"]
        assert await names(active=False) == ["bob"]
        assert await names(level="high") == ["ann", "dan%"]
        # pattern values are literal: % and _ match themselves only
        assert await names(name__like="%") == ["dan%"]
        assert await names(name__like="_") == ["cat_1"]
        assert await names(name__ilike="EV") == ["Eve"]
        assert await names(name__icontains="a") == ["ann", "cat_1", "dan%"]
        assert await names(email__endswith="@y.io") == ["Eve", "dan%"]
        assert await names(name__startswith="b") == ["bob"]
        assert await names(name__istartswith="E") == ["Eve"]
        assert await names(name__iendswith="N%") == ["dan%"]
        assert await names(name__contains="a") == ["ann", "cat_1", "dan%"]
        # expressions and dicts combine with keyword filters
        both = await env.run(repo.list(Author.age > 20, {"active": True}, name__startswith="a"))
        assert [a.name for a in both] == ["ann"]


async def test_bad_filters_name_the_problem(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        with pytest.raises(InvalidFilterError, match="unknown filter field 'nope'") as info:
            await env.run(repo.list(nope=1))
        assert info.value.field == "nope" and "email" in (info.value.allowed or [])
        with pytest.raises(InvalidFilterError, match="unknown filter operator 'between'"):
            await env.run(repo.list(age__between=1))
        with pytest.raises(InvalidFilterError, match="expected an integer, got 'old'"):
            await env.run(repo.count(age="old"))
        with pytest.raises(InvalidFilterError, match="needs a list of values"):
            await env.run(repo.list(age__in="1,2"))
        with pytest.raises(InvalidFilterError, match="None is not allowed in a list"):
            await env.run(repo.list(age__in=[1, None]))
        with pytest.raises(InvalidFilterError, match="expected a boolean, got 'maybe'"):
            await env.run(repo.list(age__is_null="maybe"))
        with pytest.raises(InvalidFilterError, match="expected an integer, got True"):
            await env.run(repo.list(age=True))
        with pytest.raises(InvalidFilterError, match="expected a string"):
            await env.run(repo.list(name__like=5))
        with pytest.raises(InvalidFilterError, match="None cannot be compared"):
            await env.run(repo.list(age__gt=None))
        with pytest.raises(InvalidFilterError, match="use __in for lists"):
            await env.run(repo.list(age=[1, 2]))
        with pytest.raises(InvalidFilterError, match="expected a Level"):
            await env.run(repo.list(level="medium"))
        with pytest.raises(InvalidFilterError, match="unknown order field 'nope'"):
            await env.run(repo.list(order_by="-nope"))
        with pytest.raises(InvalidFilterError, match="positional criteria must be"):
            await env.run(repo.list("name = 'x'"))
        with pytest.raises(InvalidFilterError, match="limit must be >= 0, got -1"):
            await env.run(repo.list(limit=-1))
        with pytest.raises(InvalidFilterError, match="offset must be >= 0"):
            await env.run(repo.get_all(offset=-5))
        with pytest.raises(InvalidFilterError, match="limit must be an integer"):
            await env.run(repo.get_all(limit="10"))
        with pytest.raises(InvalidFilterError, match="unknown relationship 'comments'"):
            await env.run(repo.list(options=["comments"]))
        with pytest.raises(InvalidOptionError, match="unknown for_update option"):
            await env.run(repo.list(for_update={"wait": True}))
        assert env.statements == []  # nothing reached the database


async def test_whitelist_and_cap(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = (AsyncWhitelisted if env.is_async else Whitelisted)(s)
        with pytest.raises(
            InvalidFilterError, match=r"unknown filter field 'email'.*allowed: age, name"
        ):
            await env.run(repo.list(filters={"email": "ann@x.io"}))  # caller-supplied
        with pytest.raises(InvalidFilterError, match=r"unknown order field 'name'.*allowed: age"):
            await env.run(repo.list(order_by="name"))
        # code may still use any column through expressions
        assert len(await env.run(repo.list(Author.email == "ann@x.io"))) == 1
        # the cap: limit=100 asks too much and gets max_page_size rows
        env.reset()
        assert len(await env.run(repo.get_all(limit=100))) == 3
    assert Whitelisted.allowed_filter_fields() == ["age", "name"]
    assert Whitelisted.allowed_order_fields() == ["age"]


async def test_config_caps_limits(env: Env) -> None:
    await _seed(env)
    set_config(RepomConfig(max_page_size=2))
    async with env.session() as s:
        repo = env.repo(s, Author)
        assert len(await env.run(repo.list(limit=50))) == 2
        page = await env.run(repo.paginate(1, 50))
        assert page.per_page == 2 and page.pages == 3


async def test_get_all_count_exists_sql(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        page = await env.run(repo.get_all(limit=2, skip=1))
        assert [a.name for a in page] == ["bob", "cat_1"]  # primary-key order
        assert await _names(env, repo.get_all(2, 3, {"active": True})) == ["Eve"]
        assert await env.run(repo.count()) == 5
        assert await env.run(repo.count({"active": True})) == 4  # seed style: count(filters)
        assert await env.run(repo.count(Author.age > 30, active=True)) == 2
        env.reset()
        assert await env.run(repo.exists(email="eve@y.io")) is True
        assert await env.run(repo.exists(email="zed@y.io")) is False
        assert len(env.statements) == 2
        assert all(
            st.startswith("SELECT EXISTS (SELECT 1 FROM rp_authors WHERE") for st in env.statements
        )
        env.reset()
        await env.run(repo.count(active=True))
        assert env.statements[0].startswith("SELECT count(*) AS count_1 FROM rp_authors WHERE")


async def test_ordering(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)
        assert await _names(env, repo.list(order_by=["-age", "name"], age__is_null=False)) == [
            "dan%",
            "ann",
            "Eve",
            "bob",
        ]
        assert await _names(env, repo.list(order_by=Author.email.desc(), limit=2)) == [
            "Eve",
            "dan%",
        ]


async def test_delete_where(env: Env) -> None:
    await _seed(env)
    async with env.session() as s:
        repo = env.repo(s, Author)
        with pytest.raises(InvalidFilterError, match="needs at least one criterion"):
            await env.run(repo.delete_where())
        env.reset()
        assert await env.run(repo.delete_where(age=25)) == 2
        assert len(env.statements) in (1, 2)
        assert env.statements[0].startswith("DELETE FROM rp_authors WHERE")
        assert await env.run(repo.delete_where(Author.name.like("zz%"))) == 0
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_authors") == [(3,)]
    async with env.session() as s:
        assert await env.run(env.repo(s, Author).delete_where(true())) == 3
        await env.run(s.commit())


def test_helpers() -> None:
    assert escape_like("50%_off/") == "50/%/_off//"
    assert split_filter_key("age__gte") == ("age", "gte")
    assert split_filter_key("age") == ("age", "eq")
    criterion = validate_filters(Author, {"age__gte": "18", "name": "x"})
    assert criterion is not None and "rp_authors.age >=" in str(criterion)
    assert validate_filters(Author, {}) is None
    with pytest.raises(InvalidFilterError, match="unknown filter field 'email'"):
        validate_filters(Author, {"email": "x"}, allowed=["name"])
    assert [str(c) for c in validate_order_by(Author, "-age")] == ["rp_authors.age DESC"]
