"""Soft delete meets uniqueness: ``upsert()``/``bulk_upsert()`` restore a soft-deleted row,
``create()`` says when its conflict is with a soft-deleted row, and with ``unique_live`` a
deleted row's value can be used again (sync and async, SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.exceptions import DeletedRowConflict, DuplicateKeyError
from repom.fastapi.errors import error_mapping
from repom.models import SoftDeleteMixin, VersionMixin, new_metadata, unique_live
from tests.repository.conftest import Env


class ConflictBase(DeclarativeBase):
    metadata = new_metadata()


class Member(SoftDeleteMixin, VersionMixin, ConflictBase):
    """The docs' Customer shape: soft delete and a plain unique email."""

    __tablename__ = "sdc_members"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(50))


class LiveMember(SoftDeleteMixin, ConflictBase):
    """The email is unique among live rows only."""

    __tablename__ = "sdc_live_members"
    __table_args__ = (unique_live("email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
async def cenv(env: Env) -> AsyncIterator[Env]:
    ConflictBase.metadata.create_all(env.verify)
    for table in ConflictBase.metadata.sorted_tables:
        env.execute(f"DELETE FROM {table.name}")
    yield env


async def _deleted_alice(env: Env, model: type[Member] | type[LiveMember]) -> int:
    async with env.session() as s:
        repo = env.repo(s, model)
        alice = await env.run(repo.create({"email": "alice@example.com", "name": "Alice"}))
        assert await env.run(repo.delete(alice.id)) is True
        await env.run(s.commit())
        return int(alice.id)


async def test_upsert_restores_a_soft_deleted_row(cenv: Env) -> None:
    env = cenv
    ident = await _deleted_alice(env, Member)
    async with env.session() as s:
        repo = env.repo(s, Member)
        row = await env.run(
            repo.upsert({"email": "alice@example.com", "name": "Alice B."}, conflict_on="email")
        )
        assert (row.id, row.name, row.is_deleted, row.deleted_at) == (
            ident,
            "Alice B.",
            False,
            None,
        )
        await env.run(s.commit())
    async with env.session() as s:  # every later read shows it
        found = await env.run(env.repo(s, Member).get_by_id(ident))
        assert found is not None and found.name == "Alice B."
    assert env.rows("SELECT id, name, is_deleted, deleted_at, version FROM sdc_members") == [
        (ident, "Alice B.", False, None, 3)
    ]


async def test_upsert_without_updates_restores_only_deleted_rows(cenv: Env) -> None:
    """``update_fields=[]`` leaves a live row alone; a deleted row counts as absent and gets the
    inserted values."""
    env = cenv
    ident = await _deleted_alice(env, Member)
    async with env.session() as s:
        repo = env.repo(s, Member)
        await env.run(repo.create({"email": "bob@example.com", "name": "Bob"}))
        await env.run(s.commit())
    async with env.session() as s:
        repo = env.repo(s, Member)
        for email in ("alice@example.com", "bob@example.com"):
            await env.run(
                repo.upsert(
                    {"email": email, "name": "Changed"}, conflict_on="email", update_fields=[]
                )
            )
        await env.run(s.commit())
    assert env.rows("SELECT email, name, is_deleted, version FROM sdc_members ORDER BY email") == [
        ("alice@example.com", "Changed", False, 3),
        ("bob@example.com", "Bob", False, 1),
    ]
    assert env.rows("SELECT id FROM sdc_members WHERE email = 'alice@example.com'") == [(ident,)]


async def test_bulk_upsert_restores_soft_deleted_rows(cenv: Env) -> None:
    env = cenv
    await _deleted_alice(env, Member)
    async with env.session() as s:
        repo = env.repo(s, Member)
        rows = [
            {"email": "alice@example.com", "name": "Alice C."},
            {"email": "carol@example.com", "name": "Carol"},
        ]
        assert await env.run(repo.bulk_upsert(rows, conflict_on="email")) == 2
        await env.run(s.commit())
    async with env.session() as s:
        assert await env.run(env.repo(s, Member).count()) == 2
    assert env.rows("SELECT email, name, is_deleted FROM sdc_members ORDER BY email") == [
        ("alice@example.com", "Alice C.", False),
        ("carol@example.com", "Carol", False),
    ]
    assert env.rows("SELECT count(*) FROM sdc_members WHERE deleted_at IS NOT NULL") == [(0,)]


async def test_create_names_a_conflict_with_a_soft_deleted_row(cenv: Env) -> None:
    env = cenv
    await _deleted_alice(env, Member)
    async with env.session() as s:
        repo = env.repo(s, Member)
        with pytest.raises(DeletedRowConflict) as caught:
            await env.run(repo.create({"email": "alice@example.com", "name": "Again"}))
        await env.run(s.rollback())
    error = caught.value
    assert isinstance(error, DuplicateKeyError)
    assert "soft-deleted Member row" in str(error) and "unique_live" in str(error)
    assert "alice@example.com" not in str(error) and "alice" not in repr(error)
    mapping = error_mapping(error)
    assert (mapping.status, mapping.code) == (409, "duplicate_key_deleted")
    assert env.rows("SELECT count(*) FROM sdc_members") == [(1,)]


async def test_create_against_a_live_row_stays_a_plain_duplicate(cenv: Env) -> None:
    env = cenv
    async with env.session() as s:
        repo = env.repo(s, Member)
        await env.run(repo.create({"email": "dan@example.com", "name": "Dan"}))
        await env.run(s.commit())
    async with env.session() as s:
        repo = env.repo(s, Member)
        with pytest.raises(DuplicateKeyError) as caught:
            await env.run(repo.create({"email": "dan@example.com", "name": "Dan 2"}))
        await env.run(s.rollback())
    assert not isinstance(caught.value, DeletedRowConflict)
    assert error_mapping(caught.value).code == "duplicate_key"


async def test_unique_live_lets_a_deleted_value_be_used_again(cenv: Env) -> None:
    """With ``unique_live``, create() of a deleted row's email makes a new row, and upsert()
    on that email targets the live row only (the deleted one stays deleted)."""
    env = cenv
    old = await _deleted_alice(env, LiveMember)
    async with env.session() as s:
        repo = env.repo(s, LiveMember)
        new = await env.run(repo.create({"email": "alice@example.com", "name": "New Alice"}))
        assert new.id != old
        await env.run(s.commit())
    async with env.session() as s:
        repo = env.repo(s, LiveMember)
        row = await env.run(
            repo.upsert({"email": "alice@example.com", "name": "Newest"}, conflict_on="email")
        )
        assert (row.id, row.name, row.is_deleted) == (new.id, "Newest", False)
        with pytest.raises(DuplicateKeyError):
            await env.run(repo.create({"email": "alice@example.com", "name": "Twin"}))
        await env.run(s.rollback())
    assert env.rows("SELECT id, name, is_deleted FROM sdc_live_members ORDER BY id") == [
        (old, "Alice", True),
        (new.id, "New Alice", False),  # the upsert was rolled back with the failed create
    ]
    async with env.session() as s:
        repo = env.repo(s, LiveMember)
        await env.run(
            repo.bulk_upsert([{"email": "alice@example.com", "name": "Bulk"}], conflict_on="email")
        )
        await env.run(s.commit())
    assert env.rows(
        "SELECT name FROM sdc_live_members WHERE is_deleted = :f ORDER BY id", f=False
    ) == [("Bulk",)]
