"""An invalid keyset cursor names the parameter it came from: ``after`` for a plain string, the
parameter a :class:`CursorToken` carries otherwise (``cursor`` from ``repom.fastapi``)."""

from __future__ import annotations

import pytest

from repom.exceptions import InvalidCursorError
from repom.repository.cursor import CursorToken
from tests.repository.conftest import Env
from tests.repository.models import Author


async def test_cursor_errors_name_the_parameter(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Author)
        env.reset()
        with pytest.raises(
            InvalidCursorError, match=r"^invalid cursor \('after'\): malformed$"
        ) as plain:
            await env.run(repo.keyset(after="garbage"))
        assert plain.value.field == "after"
        token = CursorToken("garbage", parameter="page_token")
        assert token == "garbage" and isinstance(token, str)
        with pytest.raises(InvalidCursorError, match=r"\('page_token'\): malformed") as named:
            await env.run(repo.keyset(after=token))
        assert named.value.field == "page_token"
        other = repo.cursor_for(Author(id=1, name="a", email="e"), order_by="name")
        with pytest.raises(InvalidCursorError, match="start again without 'page_token'"):
            await env.run(repo.keyset(after=CursorToken(other, "page_token"), order_by="email"))
        assert env.statements == []  # nothing was queried with a bad cursor
