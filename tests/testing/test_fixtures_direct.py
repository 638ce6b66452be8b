"""repom's fixtures used by this project's own suite (created in conftest.py): a test commits
through the test session and the application's transaction API; the next one starts empty."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from repom import database as databases
from repom.transactions import transaction
from tests.support import maybe_await
from tests.testing.conftest import DirectItem

# the fixture is picked at run time (getfixturevalue), so the session loop is asked for here
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["rt6_sqlite", "rt6_async_sqlite", "rt6_pg", "rt6_async_pg"])
def direct(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


async def count(session: Any) -> int:
    return int(await maybe_await(session.scalar(select(func.count(DirectItem.id)))))


async def test_1_commits(direct: Any) -> None:
    assert await count(direct) == 0
    direct.add(DirectItem(name="test"))
    await maybe_await(direct.commit())
    if hasattr(direct, "sync_session"):
        assert databases.get_async_database().bound_connection is direct.bind
        async with transaction() as app_session:
            app_session.add(DirectItem(name="app"))
    else:
        assert databases.get_database().bound_connection is direct.bind
        with transaction() as app_session:
            app_session.add(DirectItem(name="app"))
    assert await count(direct) == 2


async def test_2_starts_empty(direct: Any) -> None:
    assert await count(direct) == 0
