"""EncryptedType binds each value to its place (table and column): a value moved to another
column or table fails to decrypt, whichever way it was written; old unbound values still read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from repom.exceptions import ConfigurationError
from repom.repository import AsyncRepository, Repository
from repom.types import DecryptionError, EncryptedType, Keyring, reencrypt, reencrypt_async
from tests.models.conftest import Harness, make_bases
from tests.support import enter, maybe_await

Base, _ = make_bases()
KEY_1 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
KEY_2 = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
# written by repom before values were bound to their place (format 1):
# EncryptedType(String(50), key=Keyring({"k1": KEY_1})).encrypt_value("written before binding")
LEGACY_TOKEN = bytes.fromhex(
    "01026b3149da0b066d982f556e2c72e0c3e0c4a302f5fba0d04d2189c78fa42b"
    "76f948b247c9493667550c0ad0f96b11cb7aa72e379b"
)
LEGACY_PLAINTEXT = "written before binding"
KEYS: dict[str, Keyring] = {}


def current_keys() -> Keyring:
    return KEYS["current"]


_shared = EncryptedType(String(50), key=current_keys)  # one instance, two columns


class Vault(Base):
    __tablename__ = "rm_vault"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    a: Mapped[str | None] = mapped_column(_shared)
    b: Mapped[str | None] = mapped_column(_shared)


class Locker(Base):
    __tablename__ = "rm_locker"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    a: Mapped[str | None] = mapped_column(EncryptedType(String(50), key=current_keys))


@pytest.fixture(autouse=True)
def _keys() -> Iterator[None]:
    KEYS["current"] = Keyring({"k1": KEY_1})
    yield
    KEYS.clear()


async def read(harness: Harness, model: Any, id_: int) -> Any:
    async with enter(harness.session()) as session:
        stmt = select(model.a, *([model.b] if model is Vault else [])).where(model.id == id_)
        return tuple((await maybe_await(session.execute(stmt))).one())


async def assert_undecryptable(harness: Harness, model: Any, id_: int, secret: str) -> None:
    with pytest.raises(DecryptionError, match="another column or table") as info:
        await read(harness, model, id_)
    assert secret not in str(info.value)


async def test_values_moved_to_another_column_or_table_fail_whatever_wrote_them(
    harness: Harness,
) -> None:
    harness.create(Vault, Locker)
    vault, locker = harness.table("rm_vault"), harness.table("rm_locker")
    async with enter(harness.session()) as session:
        session.add(Vault(id=1, a="orm-a", b="orm-b"))  # ORM unit of work
        await maybe_await(session.flush())
        await maybe_await(session.execute(insert(Vault).values(id=2, a="core-a", b="core-b")))
        repo = (AsyncRepository if harness.is_async else Repository)(session, Vault)
        method = "copy" if harness.backend == "postgresql" else "auto"  # COPY on PostgreSQL
        rows = [{"id": 3, "a": "bulk-a", "b": "bulk-b"}]
        assert await maybe_await(repo.bulk_create(rows, method=method, returning=None)) == 1
        session.add(Locker(id=1, a="locker"))
        await maybe_await(session.commit())

    for id_, origin in [(1, "orm"), (2, "core"), (3, "bulk")]:
        assert await read(harness, Vault, id_) == (f"{origin}-a", f"{origin}-b")

    # column a -> column b of the same row, over a separate connection
    for id_, origin in [(1, "orm"), (2, "core"), (3, "bulk")]:
        harness.raw_exec(f"UPDATE {vault} SET b = a WHERE id = :id", id=id_)
        await assert_undecryptable(harness, Vault, id_, f"{origin}-a")

    # table rm_vault -> table rm_locker, same column name
    for id_, origin in [(1, "orm"), (2, "core"), (3, "bulk")]:
        harness.raw_exec(
            f"UPDATE {locker} SET a = (SELECT a FROM {vault} WHERE id = :id) WHERE id = 1", id=id_
        )
        await assert_undecryptable(harness, Locker, 1, f"{origin}-a")


async def test_old_unbound_values_still_decrypt_and_reencrypt_binds_them(
    harness: Harness,
) -> None:
    harness.create(Vault, Locker)
    vault, locker = harness.table("rm_vault"), harness.table("rm_locker")
    harness.raw_exec(f"INSERT INTO {vault} (id, a, b) VALUES (1, :t, :t)", t=LEGACY_TOKEN)
    harness.raw_exec(f"INSERT INTO {locker} (id, a) VALUES (1, :t)", t=LEGACY_TOKEN)
    assert await read(harness, Vault, 1) == (LEGACY_PLAINTEXT, LEGACY_PLAINTEXT)
    assert await read(harness, Locker, 1) == (LEGACY_PLAINTEXT,)  # old values are not bound

    rotate = reencrypt_async if harness.is_async else reencrypt
    async with enter(harness.session()) as session:
        # k1 is already the primary key: the value is rewritten because it is unbound
        assert await maybe_await(rotate(session, Vault.a)) == 1
        assert await maybe_await(rotate(session, Vault.a)) == 0  # now bound: nothing to do
        await maybe_await(session.commit())

    (stored,) = harness.raw(f"SELECT a FROM {vault} WHERE id = 1")[0]
    assert bytes(stored) != LEGACY_TOKEN and Keyring.key_id_of(bytes(stored)) == "k1"
    assert await read(harness, Vault, 1) == (LEGACY_PLAINTEXT, LEGACY_PLAINTEXT)
    harness.raw_exec(f"UPDATE {locker} SET a = (SELECT a FROM {vault} WHERE id = 1)")
    await assert_undecryptable(harness, Locker, 1, LEGACY_PLAINTEXT)


async def test_rotated_values_stay_bound(harness: Harness) -> None:
    harness.create(Vault)
    vault = harness.table("rm_vault")
    async with enter(harness.session()) as session:
        session.add_all([Vault(id=i, a=f"a{i}", b=f"b{i}") for i in (1, 2, 3)])
        await maybe_await(session.commit())

    KEYS["current"] = Keyring({"k1": KEY_1}).rotated("k2", KEY_2)
    rotate = reencrypt_async if harness.is_async else reencrypt
    async with enter(harness.session()) as session:
        assert await maybe_await(rotate(session, Vault.a, batch_size=2)) == 3
        assert await maybe_await(rotate(session, Vault.b)) == 3
        await maybe_await(session.commit())
    KEYS["current"] = KEYS["current"].without("k1")

    rows = harness.raw(f"SELECT a, b FROM {vault}")
    assert {Keyring.key_id_of(bytes(v)) for row in rows for v in row} == {"k2"}
    for i in (1, 2, 3):
        assert await read(harness, Vault, i) == (f"a{i}", f"b{i}")
    harness.raw_exec(f"UPDATE {vault} SET a = b WHERE id = 2")
    await assert_undecryptable(harness, Vault, 2, "b2")


def test_each_column_gets_its_own_place() -> None:
    assert Vault.__table__.c.a.type is not Vault.__table__.c.b.type  # shared instance copied
    places = [Vault.__table__.c.a.type, Vault.__table__.c.b.type, Locker.__table__.c.a.type]
    assert [t.place for t in places] == ["rm_vault.a", "rm_vault.b", "rm_locker.a"]

    # Core tables and Table.to_metadata() bind too; location= pins the place (renames)
    pinned = EncryptedType(String(50), key=current_keys, location="rm_vault.a")
    old = Table("t_old", MetaData(), Column("id", Integer, primary_key=True), Column("x", pinned))
    new = old.to_metadata(MetaData(), name="t_new")
    core = Table("t_core", MetaData(), Column("x", EncryptedType(String(50), key=current_keys)))
    assert [old.c.x.type.place, new.c.x.type.place] == ["rm_vault.a", "rm_vault.a"]
    assert core.c.x.type.place == "t_core.x"
    assert "location='rm_vault.a'" in pinned.render(None)

    token = Vault.__table__.c.a.type.encrypt_value("s")
    assert old.c.x.type.decrypt_value(token) == "s"  # same place, same key
    for elsewhere in (Vault.__table__.c.b.type, Locker.__table__.c.a.type, core.c.x.type):
        with pytest.raises(DecryptionError, match="another column or table"):
            elsewhere.decrypt_value(token)
    # statements compiled for one column are never reused for another (cache key)
    keys = [select(bindparam("v", type_=t))._generate_cache_key() for t in places]
    assert keys[0] != keys[1] and keys[0] != keys[2] and keys[1] != keys[2]

    with pytest.raises(ConfigurationError, match="must not contain NUL"):
        EncryptedType(String(5), associated_data="a\x00b")
