"""EncryptedType: ciphertext at rest, tamper detection, key ids and rotation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Enum,
    Integer,
    Interval,
    LargeBinary,
    Numeric,
    String,
    Text,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from repom.exceptions import ConfigurationError, DataValidationError, InvalidFilterError
from repom.models import SoftDeleteMixin, TimestampMixin, VersionMixin, soft_delete
from repom.types import (
    ENV_VAR,
    DecryptionError,
    EncryptedType,
    EncryptionKeyError,
    JSONBType,
    Keyring,
    UnknownKeyError,
    UTCDateTime,
    UUIDType,
    generate_key,
    reencrypt,
    reencrypt_async,
)
from tests.models.conftest import Harness, make_bases
from tests.support import enter, maybe_await

Base, _ = make_bases()
OLD_KEY, NEW_KEY = generate_key(), generate_key()
KEYS: dict[str, Keyring] = {}


def current_keys() -> Keyring:
    return KEYS["current"]


class Secret(TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
    __tablename__ = "rm_secret"

    id: Mapped[int] = mapped_column(primary_key=True)
    ssn: Mapped[str | None] = mapped_column(
        EncryptedType(String(50), key=current_keys, associated_data="rm_secret.ssn")
    )
    note: Mapped[str | None] = mapped_column(EncryptedType(Text, key=current_keys))
    from_env: Mapped[str | None] = mapped_column(EncryptedType(String(20)))


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    KEYS["current"] = Keyring({"old": OLD_KEY})
    monkeypatch.delenv(ENV_VAR, raising=False)
    yield
    KEYS.clear()


async def test_ciphertext_at_rest_is_not_the_plaintext(harness: Harness) -> None:
    harness.create(Secret)
    plaintext = "123-45-6789 número 😀"
    async with enter(harness.session()) as session:
        session.add_all([Secret(id=1, ssn=plaintext), Secret(id=2, ssn=plaintext)])
        await maybe_await(session.commit())

    stored = {
        row[0]: bytes(row[1])
        for row in harness.raw(f"SELECT id, ssn FROM {harness.table('rm_secret')} ORDER BY id")
    }
    encoded = plaintext.encode()
    for token in stored.values():
        assert encoded not in token and b"123-45" not in token
        assert token[:5] == b"\x01\x03old"  # format version, key id length, key id
        assert len(token) == 5 + 12 + len(encoded) + 16  # header, nonce, ciphertext, tag
    assert stored[1] != stored[2]  # a fresh nonce per value

    async with enter(harness.session()) as session:
        rows = (await maybe_await(session.scalars(select(Secret).order_by(Secret.id)))).all()
        assert [r.ssn for r in rows] == [plaintext, plaintext]


async def test_tampered_truncated_and_unknown_values_raise(harness: Harness) -> None:
    harness.create(Secret)
    async with enter(harness.session()) as session:
        session.add(Secret(id=1, ssn="secret"))
        await maybe_await(session.commit())
    t = harness.table("rm_secret")
    token = bytes(harness.raw(f"SELECT ssn FROM {t} WHERE id = 1")[0][0])
    other = Keyring({"elsewhere": generate_key()})

    flipped = bytearray(token)
    flipped[-1] ^= 0x01
    cases: list[tuple[bytes, type[Exception], str]] = [
        (bytes(flipped), DecryptionError, "authentication failed"),
        (token[:20], DecryptionError, "truncated encrypted value"),
        (b"\x01", DecryptionError, "truncated encrypted value"),
        (b"plain text, not encrypted", DecryptionError, "not an EncryptedType value"),
        (token.replace(b"old", b"olt"), UnknownKeyError, "key id 'olt', which is not configured"),
        (other.encrypt(b"secret", b"rm_secret.ssn"), UnknownKeyError, "'elsewhere'"),
        # moved from a column with other associated data
        (Keyring({"old": OLD_KEY}).encrypt(b"secret"), DecryptionError, "associated data"),
    ]
    for bad, error, message in cases:
        harness.raw_exec(f"UPDATE {t} SET ssn = :v WHERE id = 1", v=bad)
        async with enter(harness.session()) as session:
            with pytest.raises(error, match=message):
                (await maybe_await(session.scalars(select(Secret)))).all()


async def test_missing_keys_fail_before_anything_is_written(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.create(Secret)
    async with enter(harness.session()) as session:
        session.add(Secret(id=1, from_env="x"))
        with pytest.raises(EncryptionKeyError, match=f"set {ENV_VAR}") as info:
            await maybe_await(session.commit())
        assert isinstance(info.value, ConfigurationError)
        await maybe_await(session.rollback())
    assert harness.raw(f"SELECT count(*) FROM {harness.table('rm_secret')}")[0][0] == 0

    key = generate_key()
    monkeypatch.setenv(ENV_VAR, f"env1:{key}")
    async with enter(harness.session()) as session:
        session.add(Secret(id=1, from_env="from the environment"))
        await maybe_await(session.commit())
    async with enter(harness.session()) as session:
        assert (await maybe_await(session.get(Secret, 1))).from_env == "from the environment"
    token = bytes(harness.raw(f"SELECT from_env FROM {harness.table('rm_secret')}")[0][0])
    assert Keyring.key_id_of(token) == "env1"


async def test_key_rotation_reencrypts_in_batches_without_committing(harness: Harness) -> None:
    harness.create(Secret)
    async with enter(harness.session()) as session:
        session.add_all(
            [Secret(id=i, ssn=f"ssn-{i}", note=None if i % 3 else f"n{i}") for i in range(1, 8)]
        )
        await maybe_await(session.commit())
        soft_delete(await maybe_await(session.get(Secret, 7)))  # deleted rows are rotated too
        await maybe_await(session.commit())
    t = harness.table("rm_secret")
    before = {r[0]: tuple(r[1:]) for r in harness.raw(f"SELECT id, updated_at, version FROM {t}")}

    # rotate: the new key becomes primary, the old one stays for decryption
    KEYS["current"] = Keyring({"new": NEW_KEY, "old": OLD_KEY})
    async with enter(harness.session()) as session:
        assert (await maybe_await(session.get(Secret, 2))).ssn == "ssn-2"  # old values readable
        harness.capture()
        rotate = reencrypt_async if harness.is_async else reencrypt
        assert await maybe_await(rotate(session, Secret.ssn, batch_size=3)) == 7
        assert len(harness.sql("SELECT")) == 3  # 3 + 3 + 1 rows
        assert len(harness.sql("UPDATE")) == 3  # one executemany per batch
        # not committed: another connection still sees the old key
        ids = {Keyring.key_id_of(bytes(r[0])) for r in harness.raw(f"SELECT ssn FROM {t}")}
        assert ids == {"old"}
        await maybe_await(session.commit())

    rows = harness.raw(f"SELECT id, ssn, note, updated_at, version FROM {t} ORDER BY id")
    assert {Keyring.key_id_of(bytes(r[1])) for r in rows} == {"new"}
    assert {Keyring.key_id_of(bytes(r[2])) for r in rows if r[2] is not None} == {"old"}
    assert {r[0]: tuple(r[3:]) for r in rows} == before  # updated_at and version untouched

    async with enter(harness.session()) as session:
        rotate = reencrypt_async if harness.is_async else reencrypt
        assert await maybe_await(rotate(session, Secret.ssn)) == 0  # nothing left on old key
        assert await maybe_await(rotate(session, Secret.note, batch_size=2)) == 2  # ids 3, 6
        await maybe_await(session.commit())

    KEYS["current"] = Keyring({"new": NEW_KEY})  # old key retired
    async with enter(harness.session()) as session:
        secrets = (
            await maybe_await(
                session.scalars(
                    select(Secret).order_by(Secret.id).execution_options(include_deleted=True)
                )
            )
        ).all()
        assert [s.ssn for s in secrets] == [f"ssn-{i}" for i in range(1, 8)]
        assert [s.note for s in secrets] == [None if i % 3 else f"n{i}" for i in range(1, 8)]


def test_reencrypt_refuses_other_columns() -> None:
    from sqlalchemy.orm import Session

    with pytest.raises(ConfigurationError, match="not an EncryptedType column"):
        reencrypt(Session(), Secret.version)
    with pytest.raises(ConfigurationError, match="batch_size"):
        reencrypt(Session(), Secret.ssn, batch_size=0)


def test_encrypted_columns_cannot_be_compared_in_sql() -> None:
    for make in (
        lambda: Secret.ssn == "x",
        lambda: Secret.ssn != "x",
        lambda: Secret.ssn.in_(["x"]),
        lambda: Secret.ssn.like("x%"),
        lambda: Secret.ssn > "a",
        lambda: "x" + Secret.ssn,  # reversed operators too
    ):
        with pytest.raises(InvalidFilterError, match="ssn is encrypted") as info:
            make()
        assert info.value.field == "ssn"
    # IS NULL / IS NOT NULL and ordering stay available
    assert "IS NULL" in str(select(Secret.id).where(Secret.ssn.is_(None)))
    assert "IS NOT NULL" in str(select(Secret.id).where(Secret.ssn != None))  # noqa: E711
    assert "ORDER BY" in str(select(Secret.id).order_by(Secret.ssn.desc()))


@pytest.mark.parametrize(
    ("inner", "value"),
    [
        (Integer, -(2**62)),
        (Boolean, True),
        (Numeric(10, 2), Decimal("12.34")),
        (Date, date(2024, 2, 29)),
        (UTCDateTime, datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=UTC)),
        (UUIDType, uuid.UUID(int=7)),
        (JSON, {"a": [1, "ü", None]}),
        (JSONBType, ["x", {"y": 1}]),
        (LargeBinary, b"\x00\xff"),
        (Text, ""),
    ],
)
def test_inner_types_round_trip(inner: Any, value: Any) -> None:
    type_ = EncryptedType(inner, key=OLD_KEY)
    token = type_.encrypt_value(value)
    assert token is not None and token != type_.encrypt_value(value)
    assert type_.decrypt_value(token) == value
    assert type_.encrypt_value(None) is None and type_.decrypt_value(None) is None


def test_inner_type_validation_and_unsupported_types() -> None:
    with pytest.raises(DataValidationError, match="expected str, got int"):
        Secret(id=1, ssn=123)
    with pytest.raises(DataValidationError, match="longer than the column's 50"):
        Secret(id=1, ssn="x" * 51)
    with pytest.raises(ConfigurationError, match="unsupported value type Interval"):
        EncryptedType(Interval)
    with pytest.raises(ConfigurationError, match="Enum is not supported"):
        EncryptedType(Enum("a", "b"))


def test_keyring_parsing_never_leaks_key_material() -> None:
    key = generate_key()
    ring = Keyring.parse(f"  new:{key}, old:{OLD_KEY}\n")
    assert ring.primary_id == "new" and ring.key_ids == ("new", "old")
    assert key not in repr(ring) and "new" in repr(ring)
    derived = Keyring.parse(key)  # no id: derived from the key, stable
    assert derived.key_ids == Keyring.parse(key).key_ids and derived.key_ids[0].startswith("k")
    hex_key = bytes(range(32)).hex()
    assert Keyring({"h": hex_key}).decrypt(Keyring({"h": bytes(range(32))}).encrypt(b"x")) == b"x"
    assert Keyring({"a": key, "b": OLD_KEY}, primary="b").primary_id == "b"

    secret_looking = "c2VjcmV0LWtleS10aGF0LWlzLXRvby1zaG9ydA"
    for bad, message in [
        ({"a": secret_looking}, "must be 32 bytes"),
        ({"a": b"short"}, "must be 32 bytes"),
        ({"bad id!": key}, "invalid key id"),
        ({}, "keyring is empty"),
    ]:
        with pytest.raises(EncryptionKeyError, match=message) as info:
            Keyring(bad)
        assert secret_looking not in str(info.value) and key not in str(info.value)
    with pytest.raises(EncryptionKeyError, match="primary key id 'zz'"):
        Keyring({"a": key}, primary="zz")
    with pytest.raises(EncryptionKeyError, match="duplicate key id"):
        Keyring([("a", key), ("a", OLD_KEY)])


def test_keys_are_in_the_statement_cache_key_but_never_rendered() -> None:
    """Two columns with different keys must not share compiled bind processors."""
    from sqlalchemy import bindparam, select

    one, two = EncryptedType(String(10), key=OLD_KEY), EncryptedType(String(10), key=NEW_KEY)
    first = select(bindparam("v", type_=one))
    second = select(bindparam("v", type_=two))
    assert first._generate_cache_key() != second._generate_cache_key()
    mapping = EncryptedType(String(10), key={"a": OLD_KEY})
    assert mapping.keyring().key_ids == ("a",)
    for type_ in (one, two, mapping):
        assert OLD_KEY not in repr(type_) and NEW_KEY not in repr(type_)
