"""Soft delete (repom's SoftDeleteMixin and a model with only ``deleted_at``), restore,
hard_delete, include_deleted; versions bump on soft delete."""

from __future__ import annotations

import pytest

from repom.repository import InvalidOptionError
from tests.repository.conftest import Env
from tests.repository.models import Author, Doc, Note


async def _docs(env: Env) -> None:
    async with env.session() as s:
        repo = env.repo(s, Doc)
        await env.run(repo.bulk_create([{"title": f"t{i}", "slug": f"s{i}"} for i in range(1, 5)]))
        await env.run(s.commit())


async def test_soft_delete_hides_rows_from_every_read(env: Env) -> None:
    await _docs(env)
    async with env.session() as s:
        repo = env.repo(s, Doc)
        env.reset()
        assert await env.run(repo.delete(1)) is True
        assert len(env.statements) == 1 and env.statements[0].startswith("UPDATE rp_docs SET")
        assert await env.run(repo.delete(1)) is False  # already deleted
        doc2 = await env.run(repo.get_by_id(2))
        assert await env.run(repo.delete(doc2)) is True  # by instance: flag set and flushed
        assert doc2.is_deleted and doc2.deleted_at is not None
        assert await env.run(repo.get_by_id(1)) is None
        assert await env.run(repo.get_by_id(2)) is None  # in the identity map, still hidden
        assert (await env.run(repo.get_by_id(1, include_deleted=True))).is_deleted is True
        assert await env.run(repo.count()) == 2
        assert await env.run(repo.count(include_deleted=True)) == 4
        assert await env.run(repo.exists(slug="s1")) is False
        assert await env.run(repo.exists(slug="s1", include_deleted=True)) is True
        assert [d.id for d in await env.run(repo.list())] == [3, 4]
        assert [d.id for d in await env.run(repo.get_all(include_deleted=True))] == [1, 2, 3, 4]
        assert [d.id for d in await env.run(repo.get_by_ids([1, 2, 3]))] == [3]
        page = await env.run(repo.paginate(1, 10))
        assert page.total == 2
        ks = await env.run(repo.keyset(limit=10, include_deleted=True))
        assert len(ks.items) == 4
        await env.run(s.commit())
    assert env.rows("SELECT id, is_deleted, version FROM rp_docs ORDER BY id") == [
        (1, True, 2),
        (2, True, 2),
        (3, False, 1),
        (4, False, 1),
    ]
    assert env.rows("SELECT count(*) FROM rp_docs WHERE deleted_at IS NOT NULL") == [(2,)]


async def test_restore_and_hard_delete(env: Env) -> None:
    await _docs(env)
    async with env.session() as s:
        repo = env.repo(s, Doc)
        await env.run(repo.delete_where(Doc.id.in_([1, 2, 3])))
        assert await env.run(repo.count()) == 1
        assert await env.run(repo.restore(1)) is True
        assert await env.run(repo.restore(1)) is False  # not deleted any more
        assert await env.run(repo.restore(4)) is False
        hidden = await env.run(repo.get_by_id(2, include_deleted=True))
        assert await env.run(repo.restore(hidden)) is True
        assert await env.run(repo.hard_delete(3)) is True  # a soft-deleted row, removed for good
        assert await env.run(repo.hard_delete(99)) is False
        assert await env.run(repo.delete_where(slug="s4", hard=True)) == 1
        await env.run(s.commit())
    assert env.rows("SELECT id, is_deleted, deleted_at IS NULL FROM rp_docs ORDER BY id") == [
        (1, False, True),
        (2, False, True),
    ]


async def test_own_deleted_at_column(env: Env) -> None:
    env.execute("INSERT INTO rp_notes (body) VALUES ('a'), ('b'), ('c')")
    async with env.session() as s:
        repo = env.repo(s, Note)
        assert await env.run(repo.delete(2)) is True
        env.reset()
        assert [n.body for n in await env.run(repo.list(order_by="id"))] == ["a", "c"]
        assert "rp_notes.deleted_at IS NULL" in env.statements[0]
        assert await env.run(repo.count(include_deleted=True)) == 3
        assert await env.run(repo.restore(2)) is True
        await env.run(s.commit())
    assert env.rows("SELECT count(*) FROM rp_notes WHERE deleted_at IS NULL") == [(3,)]


async def test_restore_needs_soft_delete(env: Env) -> None:
    async with env.session() as s:
        with pytest.raises(InvalidOptionError, match="Author has no soft delete"):
            await env.run(env.repo(s, Author).restore(1))
