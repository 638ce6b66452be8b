"""paginate(count="exact" | "estimated" | "none"): what each mode sends and what the Page says.

Every scenario runs four times (sqlite|postgresql x sync|async) through the ``env`` fixture.
"""

from __future__ import annotations

import pytest

from repom.exceptions import RepomError
from repom.repository import InvalidOptionError, Page
from tests.repository.conftest import Env
from tests.repository.models import Author


async def _seed(env: Env, n: int) -> None:
    values = ", ".join(
        f"('u{i}', 'u{i}@x.io', {i}, {i % 3}, true, 'low', '2024-01-01 10:00:00.000000')"
        for i in range(1, n + 1)
    )
    env.execute(
        f"INSERT INTO rp_authors (name, email, age, score, active, level, joined) VALUES {values}"
    )


def _counts(env: Env) -> list[str]:
    return [s for s in env.statements if "count(" in s.lower()]


async def test_exact_is_the_default_and_unchanged(env: Env) -> None:
    await _seed(env, 7)
    async with env.session() as s:
        repo = env.repo(s, Author)
        for kwargs in ({}, {"count": "exact"}):
            env.reset()
            page = await env.run(repo.paginate(1, 3, **kwargs))
            assert isinstance(page, Page)
            assert (page.total, page.pages, page.total_is_estimate) == (7, 3, False)
            assert page.has_next and not page.has_prev
            assert len(env.statements) == 2 and len(_counts(env)) == 1
            env.reset()
            last = await env.run(repo.paginate(3, 3, **kwargs))
            assert [a.name for a in last] == ["u7"] and last.total == 7 and not last.has_next
            assert len(env.statements) == 1


@pytest.mark.parametrize("rows", [6, 7, 9])
async def test_none_tells_has_next_with_one_statement(env: Env, rows: int) -> None:
    # 6 rows: page 2 has exactly `limit` rows left; 7: page 2 has limit+1 left; 9: full last page
    await _seed(env, rows)
    async with env.session() as s:
        repo = env.repo(s, Author)
        seen: list[int] = []
        number = 1
        while True:
            env.reset()
            page = await env.run(repo.paginate(number, 3, count="none", order_by="age"))
            assert len(env.statements) == 1 and not _counts(env)
            assert "LIMIT" in env.statements[0].upper()
            assert page.total is None and page.pages is None and not page.total_is_estimate
            seen.extend(a.age for a in page.items)
            assert page.has_next == (len(seen) < rows)
            if not page.has_next:
                break
            number += 1
        assert seen == list(range(1, rows + 1))
        assert number == (rows + 2) // 3
        env.reset()
        beyond = await env.run(repo.paginate(number + 2, 3, count="none"))
        assert beyond.items == [] and not beyond.has_next and beyond.has_prev
        assert len(env.statements) == 1
        mapped = page.map(lambda a: a.id)
        assert mapped.has_next is False and mapped.total is None


async def test_estimated_stays_exact_for_small_results(env: Env) -> None:
    await _seed(env, 7)
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        page = await env.run(repo.paginate(1, 3, count="estimated"))
        assert (page.total, page.pages, page.total_is_estimate) == (7, 3, False)
        assert page.has_next
        assert len(_counts(env)) == 1
        explains = [x for x in env.statements if x.upper().startswith("EXPLAIN")]
        assert len(explains) == (1 if env.backend == "postgresql" else 0)
        env.reset()
        last = await env.run(repo.paginate(3, 3, count="estimated"))
        assert (last.total, last.total_is_estimate, last.has_next) == (7, False, False)
        assert len(env.statements) == 1  # the page itself told the total
        env.reset()
        exact_fit = await env.run(repo.paginate(1, 7, count="estimated"))
        assert (exact_fit.total, exact_fit.has_next) == (7, False)
        assert len(env.statements) == 1  # 7 rows asked for 8: no total query at all


async def test_estimated_uses_the_planner_on_large_results(env: Env) -> None:
    if env.backend != "postgresql":
        pytest.skip("the planner estimate is PostgreSQL's; other backends count exactly")
    n = 200_000
    env.execute(
        "INSERT INTO rp_authors (name, email, age, score, active, level, joined) "
        "SELECT 'u' || i, 'u' || i || '@x.io', i, i % 3, true, 'low', now() "
        f"FROM generate_series(1, {n}) AS i"
    )
    env.execute("ANALYZE rp_authors")
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        page = await env.run(repo.paginate(1, 20, count="estimated"))
        assert page.total_is_estimate and page.has_next and len(page) == 20
        assert page.total is not None and n / 2 <= page.total <= n * 2
        assert page.pages == (page.total + 19) // 20
        assert len(env.statements) == 2 and not _counts(env)
        assert env.statements[1].upper().startswith("EXPLAIN (FORMAT JSON) SELECT")
        # a filtered result that the planner thinks is large is estimated too
        env.reset()
        half = await env.run(repo.paginate(2, 20, count="estimated", score=1))
        assert half.total_is_estimate and half.total is not None
        assert n / 3 / 2 <= half.total <= n / 3 * 2
        # a small filtered result (under the threshold) is counted exactly
        env.reset()
        small = await env.run(repo.paginate(1, 5, Author.age <= 12, count="estimated"))
        assert (small.total, small.pages, small.total_is_estimate) == (12, 3, False)
        assert len(_counts(env)) == 1
        small_f = await env.run(repo.paginate(1, 5, count="estimated", age__lte=12))
        assert (small_f.total, small_f.total_is_estimate) == (12, False)
        # the cached EXPLAIN statement takes each call's own parameters
        env.reset()
        wide = await env.run(repo.paginate(1, 5, count="estimated", age__lte=150_000))
        assert wide.total_is_estimate and wide.total is not None
        assert 75_000 <= wide.total <= 300_000
        assert "count(" not in " ".join(env.statements).lower()
        # exact over the same large table still counts
        exact = await env.run(repo.paginate(1, 20))
        assert (exact.total, exact.total_is_estimate) == (n, False)


@pytest.mark.parametrize("bad", ["approx", "EXACT", None, True, 1])
async def test_bad_count_option_is_refused_before_any_sql(env: Env, bad: object) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        with pytest.raises(InvalidOptionError, match="count must be one of") as info:
            await env.run(repo.paginate(1, 10, count=bad))
        assert info.value.option == "count"
        assert isinstance(info.value, RepomError) and isinstance(info.value, ValueError)
        assert env.statements == []


async def test_pagination_benchmark_runs_with_tiny_sizes() -> None:
    import argparse

    from bench import pagination as bench
    from tests.support import require_postgres

    args = argparse.Namespace(rows=2_000, rounds=1, calls=1, per_page=20, url=require_postgres())
    report = await bench.main_async(args)
    assert '| repom paginate count="estimated" |' in report
    assert "2,000 (exact)" in report
