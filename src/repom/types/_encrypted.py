"""``EncryptedType``: AES-256-GCM column encryption with key ids for rotation.

Stored value (binary column)::

    0x01 | len(key_id) | key_id (ASCII) | nonce (12 random bytes) | ciphertext | tag (16 bytes)

The GCM additional data (authenticated, not stored) is, for values written now (binding
format 2)::

    header | b"repom:2\0" | "table.column" (UTF-8) | b"\0" | associated_data

so changing any byte, swapping the key id, or moving a value to another column or table (or to a
column with other ``associated_data``) fails with :class:`DecryptionError`.  The place is learnt
when the column is attached to its table (``_set_parent`` / ``after_parent_attach``, the hooks
SQLAlchemy's own ``SchemaType`` types use); an instance shared by two columns is copied, so each
column has its own.  Values written before binding existed (format 1: additional data
``header | associated_data``) have the same byte layout; they still decrypt (a value is tried as
format 2 first, then as format 1), are not bound to a place, and :func:`reencrypt` upgrades them.
A :class:`Keyring` encrypts with its primary key and decrypts with any of its keys.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeAlias

from sqlalchemy import Column, LargeBinary, String, bindparam, select, tuple_, type_coerce
from sqlalchemy import exc as sa_exc
from sqlalchemy import update as sa_update
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import QueryableAttribute
from sqlalchemy.sql import operators
from sqlalchemy.sql.base import SchemaEventTarget
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine, to_instance

from repom.exceptions import ConfigurationError, InvalidFilterError, RepomError
from repom.types._base import RepomType
from repom.types._codec import Codec, codec_for

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "ENV_VAR",
    "DecryptionError",
    "EncryptedType",
    "EncryptionKeyError",
    "KeySource",
    "Keyring",
    "UnknownKeyError",
    "generate_key",
    "reencrypt",
    "reencrypt_async",
]

#: environment variable read when an ``EncryptedType`` has no ``key=``
ENV_VAR = "REPOM_ENCRYPTION_KEYS"

_VERSION = 1  # the byte layout; the binding format is in the additional data
_BOUND = b"repom:2\x00"  # binding format 2: additional data names the column's place
_NONCE_SIZE = 12
_TAG_SIZE = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class DecryptionError(RepomError, ValueError):
    """A stored value could not be decrypted: modified, truncated, encrypted with other
    associated data, or not an ``EncryptedType`` value at all.  ``key_id`` names the key the
    value says it was encrypted with, when the header could be read."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class UnknownKeyError(DecryptionError):
    """The value was encrypted with a key id that is not in the keyring."""


class EncryptionKeyError(ConfigurationError, sa_exc.StatementError):
    """Keys are missing or malformed (no key material ever appears in the message)."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        sa_exc.StatementError.__init__(self, message, None, None, None)
        self.variable = variable

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> Any:
        return (type(self), (self.args[0],), {"variable": self.variable})


def generate_key() -> str:
    """A new random 256-bit key, URL-safe base64 encoded (put it in ``REPOM_ENCRYPTION_KEYS``)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def _decode_key(material: bytes | str, label: str) -> bytes:
    if isinstance(material, (bytes, bytearray)):
        raw = bytes(material)
    elif isinstance(material, str):
        text = material.strip()
        raw = b""
        if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
            raw = bytes.fromhex(text)
        else:
            padded = text + "=" * (-len(text) % 4)
            try:
                raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
    else:
        raise EncryptionKeyError(f"{label}: a key must be bytes or str, not {type(material)}")
    if len(raw) != 32:
        raise EncryptionKeyError(
            f"{label}: an AES-256 key must be 32 bytes (raw, 64 hex digits or base64); "
            "generate one with repom.types.generate_key()"
        )
    return raw


def _fingerprint(key: bytes) -> str:
    return "k" + hashlib.sha256(b"repom-key-id" + key).hexdigest()[:8]


class Keyring:
    """Named AES-256 keys: encrypt with :attr:`primary_id`, decrypt with any key.

    ``Keyring({"2025": key_2025, "2024": key_2024})`` — the first key is the primary unless
    ``primary=`` names another.  Keys are 32 raw bytes, 64 hex digits or base64 text.
    Rotate by adding a new key first, running :func:`repom.types.reencrypt`, then dropping the
    old key.  ``repr()`` shows key ids only.
    """

    def __init__(
        self,
        keys: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]],
        *,
        primary: str | None = None,
    ) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        items = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        if not items:
            raise EncryptionKeyError("the keyring is empty: give at least one key")
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, material in items:
            if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
                raise EncryptionKeyError(
                    f"invalid key id {key_id!r}: 1-64 characters from A-Z a-z 0-9 . _ -"
                )
            if key_id in self._ciphers:
                raise EncryptionKeyError(f"duplicate key id {key_id!r}")
            self._ciphers[key_id] = AESGCM(_decode_key(material, f"key {key_id!r}"))
        primary = items[0][0] if primary is None else primary
        if primary not in self._ciphers:
            raise EncryptionKeyError(f"primary key id {primary!r} is not in the keyring")
        self.primary_id: str = primary

    @classmethod
    def parse(cls, spec: str, *, variable: str | None = None) -> Keyring:
        """``"id1:KEY1,id2:KEY2"`` (first is primary); an entry without ``id:`` gets an id
        derived from the key (a hash prefix, stable and not secret)."""
        entries = [e for e in re.split(r"[,\s]+", spec.strip()) if e]
        if not entries:
            raise EncryptionKeyError(
                f"{variable or 'key spec'} is empty: set it to 'id:base64key[,id2:key2]'",
                variable=variable,
            )
        pairs: list[tuple[str, bytes | str]] = []
        for number, entry in enumerate(entries, 1):
            key_id, sep, material = entry.partition(":")
            if not sep:
                material, key_id = key_id, _fingerprint(_decode_key(key_id, f"entry {number}"))
            pairs.append((key_id, material))
        return cls(pairs)

    @classmethod
    def from_env(cls, variable: str = ENV_VAR) -> Keyring:
        """The keyring in environment variable *variable* (``REPOM_ENCRYPTION_KEYS``)."""
        spec = os.environ.get(variable)
        if not spec:
            raise EncryptionKeyError(
                f"no encryption key: pass key= to EncryptedType or set {variable} "
                "('id:base64key,...'; make one with repom.types.generate_key())",
                variable=variable,
            )
        return _parse_cached(spec, variable)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def rotated(self, key_id: str, key: bytes | str) -> Keyring:
        """A new keyring: *key* becomes the primary key, every current key still decrypts."""
        added = Keyring({key_id: key})
        if key_id in self._ciphers:
            raise EncryptionKeyError(f"duplicate key id {key_id!r}")
        return Keyring._build({**added._ciphers, **self._ciphers}, key_id)

    def without(self, key_id: str) -> Keyring:
        """A new keyring without *key_id* (retire a key after :func:`reencrypt`)."""
        if key_id not in self._ciphers:
            raise EncryptionKeyError(f"key id {key_id!r} is not in the keyring")
        if key_id == self.primary_id:
            raise EncryptionKeyError(f"key id {key_id!r} is the primary key; rotate first")
        rest = {k: v for k, v in self._ciphers.items() if k != key_id}
        return Keyring._build(rest, self.primary_id)

    @classmethod
    def _build(cls, ciphers: dict[str, AESGCM], primary: str) -> Keyring:
        ring = cls.__new__(cls)
        ring._ciphers = ciphers
        ring.primary_id = primary
        return ring

    def encrypt(self, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        kid = self.primary_id.encode("ascii")
        header = bytes((_VERSION, len(kid))) + kid
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self._ciphers[self.primary_id].encrypt(nonce, plaintext, header + associated_data)
        return header + nonce + sealed

    def decrypt(self, token: bytes, associated_data: bytes = b"") -> bytes:
        return self._open(token, (associated_data,))[0]

    def _open(self, token: bytes, candidates: tuple[bytes, ...]) -> tuple[bytes, int]:
        """Decrypt *token* with the first of *candidates* (additional data) that authenticates;
        returns the plaintext and that candidate's index."""
        from cryptography.exceptions import InvalidTag

        key_id, body_start = _parse_header(token)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKeyError(
                f"value was encrypted with key id {key_id!r}, which is not configured "
                f"(configured: {', '.join(self._ciphers)})",
                key_id=key_id,
            )
        nonce = token[body_start : body_start + _NONCE_SIZE]
        body, header = token[body_start + _NONCE_SIZE :], token[:body_start]
        for index, associated_data in enumerate(candidates):
            try:
                return cipher.decrypt(nonce, body, header + associated_data), index
            except InvalidTag:
                continue
        raise DecryptionError(
            "authentication failed: the stored value was modified, or was encrypted for another "
            "column or table or with other associated data",
            key_id=key_id,
        )

    @staticmethod
    def key_id_of(token: bytes) -> str:
        """The key id in an encrypted value's header (no decryption)."""
        return _parse_header(token)[0]

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self._ciphers)!r}, primary={self.primary_id!r})"


def _parse_header(token: bytes) -> tuple[str, int]:
    if len(token) < 2:
        raise DecryptionError("truncated encrypted value (no header)")
    if token[0] != _VERSION:
        raise DecryptionError(f"not an EncryptedType value (format version {token[0]})")
    body_start = 2 + token[1]
    if len(token) < body_start + _NONCE_SIZE + _TAG_SIZE:
        raise DecryptionError(f"truncated encrypted value ({len(token)} bytes)")
    try:
        key_id = token[2:body_start].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("corrupt encrypted value (key id is not ASCII)") from None
    return key_id, body_start


@functools.lru_cache(maxsize=32)
def _parse_cached(spec: str, variable: str | None) -> Keyring:
    return Keyring.parse(spec, variable=variable)


@functools.lru_cache(maxsize=32)
def _keyring_from_bytes(material: bytes) -> Keyring:
    return Keyring([(_fingerprint(_decode_key(material, "key")), material)])


@functools.lru_cache(maxsize=32)
def _keyring_from_items(items: tuple[tuple[str, bytes | str], ...]) -> Keyring:
    return Keyring(items)


KeyMaterial: TypeAlias = (
    "Keyring | bytes | str | Mapping[str, bytes | str] | tuple[tuple[str, bytes | str], ...]"
)
KeySource: TypeAlias = "KeyMaterial | Callable[[], KeyMaterial] | None"


def resolve_keyring(source: KeySource) -> Keyring:
    """The keyring for a ``key=`` value: a :class:`Keyring`, raw key bytes, a key spec string
    (``"id:key,..."`` or one key), a mapping ``{id: key}``, a callable returning any of these
    (called at each use, so it can follow rotation), or ``None`` (``REPOM_ENCRYPTION_KEYS``)."""
    if source is None:
        return Keyring.from_env()
    if callable(source) and not isinstance(source, Keyring):
        source = source()
    if isinstance(source, Keyring):
        return source
    if isinstance(source, (bytes, bytearray)):
        return _keyring_from_bytes(bytes(source))
    if isinstance(source, str):
        return _parse_cached(source, None)
    if isinstance(source, Mapping):
        return _keyring_from_items(tuple(source.items()))
    if isinstance(source, tuple):
        return _keyring_from_items(source)
    raise EncryptionKeyError(f"unsupported key source {type(source).__name__}")


_COMPARISONS_ALLOWED = frozenset(
    {
        operators.is_,
        operators.is_not,
        operators.asc_op,
        operators.desc_op,
        operators.nulls_first_op,
        operators.nulls_last_op,
        operators.distinct_op,
    }
)


class EncryptedType(RepomType, TypeDecorator[Any]):
    """A column whose values are encrypted in Python with AES-256-GCM before they are sent.

    ``EncryptedType(String(200), key=...)``: *inner_type* says what the Python values are
    (``String``/``Text``, ``LargeBinary``, ``Integer``, ``Numeric``, ``Boolean``, ``Date``,
    ``DateTime``/``UTCDateTime``, ``UUIDType``, ``JSON``/``JSONBType``); the column itself is
    binary (``BYTEA``, ``BLOB``, ``LONGBLOB`` on MySQL).  *key* is anything
    :func:`resolve_keyring` accepts; by default ``REPOM_ENCRYPTION_KEYS`` is read when the first
    value is encrypted or decrypted (never at import, never rendered into migrations).

    Every write uses a fresh random nonce, so equal plaintexts give different ciphertexts: the
    column cannot be searched, compared, sorted meaningfully or indexed; only ``IS NULL`` works
    (other comparisons raise :class:`repom.exceptions.InvalidFilterError`).

    Values are bound to their place, ``"table.column"``, learnt when the column is attached to
    its table (schema not included); *location* pins another place (the old name after a table
    or column rename keeps the stored values readable).  A type used outside any column is bound
    to the empty place.
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(
        self,
        inner_type: TypeEngine[Any] | type[TypeEngine[Any]] = String,
        key: KeySource = None,
        *,
        associated_data: str | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__()
        if associated_data is not None and "\x00" in associated_data:
            raise ConfigurationError("EncryptedType: associated_data must not contain NUL")
        self.inner_type: TypeEngine[Any] = to_instance(inner_type)
        self.associated_data = associated_data
        self.location = location
        self._aad = associated_data.encode("utf-8") if associated_data else b""
        self._column: Column[Any] | None = None
        self._bind_place(location or "")
        # ``key`` takes part in SQLAlchemy's statement cache key (it changes what the type
        # does), so it is kept hashable; it is never part of repr() or migrations
        if isinstance(key, Mapping):
            key = tuple(key.items())
        elif isinstance(key, bytearray):
            key = bytes(key)
        self.key: KeySource = key
        self._codec: Codec = codec_for(self.inner_type, owner="EncryptedType")

    @property
    def python_type(self) -> type[Any]:
        return self.inner_type.python_type

    @property
    def place(self) -> str:
        """The place values are bound to: ``"table.column"``, *location*, or ``""``."""
        return self._place

    def _bind_place(self, place: str) -> None:
        self._place = place
        self._bound_aad = _BOUND + place.encode("utf-8") + b"\x00" + self._aad

    # -- binding to the column: SQLAlchemy calls _set_parent when the type is given to a
    # Column (also for each copy the ORM makes for mixins and Table.to_metadata), and the
    # column announces its table through after_parent_attach.

    def _set_parent(self, parent: SchemaEventTarget, outer: bool = False, **kw: Any) -> None:
        if isinstance(parent, Column) and self._column is not None and self._column is not parent:
            # one instance given to two columns: the second column gets its own copy
            clone = self.copy()
            parent.type = clone
            clone._set_parent(parent, outer=outer, **kw)
            return
        super()._set_parent(parent, outer=outer, **kw)
        if isinstance(parent, Column):
            self._column = parent
            parent._on_table_attach(self._attach_table)

    def _attach_table(self, column: Column[Any], table: Any) -> None:
        if self.location is None and column is self._column:
            self._bind_place(f"{table.name}.{column.name}")

    def copy(self, **kw: Any) -> Self:
        clone = super().copy(**kw)
        clone._column = None  # free to be attached to another column
        return clone

    @property
    def _static_cache_key(self) -> Any:
        # the place changes what the bind/result processors do, so it is part of the key
        key = super()._static_cache_key
        return key if not isinstance(key, tuple) else (*key, ("_place", self._place))

    def keyring(self) -> Keyring:
        """The keyring in use now (resolved from ``key=`` or the environment)."""
        return resolve_keyring(self.key)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.LONGBLOB())
        return dialect.type_descriptor(LargeBinary())

    def coerce(self, value: Any) -> Any:
        return self._codec.coerce(value)

    def encrypt_value(self, value: Any) -> bytes | None:
        """The stored form of *value* (what the column will hold)."""
        coerced = self._codec.coerce(value)
        if coerced is None:
            return None
        return self.keyring().encrypt(self._codec.to_bytes(coerced), self._bound_aad)

    def decrypt_value(self, token: bytes | None) -> Any:
        if token is None:
            return None
        plaintext, _ = self._open(self.keyring(), bytes(token))
        return self._codec.from_bytes(plaintext)

    def _open(self, keyring: Keyring, token: bytes) -> tuple[bytes, bool]:
        """The plaintext, and whether *token* is an unbound format-1 value."""
        plaintext, index = keyring._open(token, (self._bound_aad, self._aad))
        return plaintext, index == 1

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        return self.encrypt_value(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return self.decrypt_value(value)

    class Comparator(TypeDecorator.Comparator[Any]):
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> ColumnElement[Any]:
            _check_comparison(self.expr, op, other)
            return super().operate(op, *other, **kwargs)

        def reverse_operate(self, op: Any, other: Any, **kwargs: Any) -> ColumnElement[Any]:
            _check_comparison(self.expr, op, (other,))
            return super().reverse_operate(op, other, **kwargs)

    @property
    def comparator_factory(self) -> type[TypeDecorator.Comparator[Any]]:  # type: ignore[override]
        return EncryptedType.Comparator

    def render(self, autogen_context: AutogenContext | None) -> str:
        from repom.types._alembic import render_type

        args = [render_type(self.inner_type, autogen_context)]
        if self.associated_data:
            args.append(f"associated_data={self.associated_data!r}")
        if self.location is not None:
            args.append(f"location={self.location!r}")
        return f"EncryptedType({', '.join(args)})"


def _check_comparison(expr: Any, op: Any, other: tuple[Any, ...]) -> None:
    if op in _COMPARISONS_ALLOWED:
        return
    if op in (operators.eq, operators.ne) and len(other) == 1 and other[0] is None:
        return
    name = next(
        (
            candidate.name
            for candidate in (expr, *other)
            if type(getattr(candidate, "name", None)) is str  # not an anonymous bind label
        ),
        None,
    )
    raise InvalidFilterError(
        f"{name or 'the column'} is encrypted (random nonce per value): it cannot be compared, "
        "searched or filtered in SQL except with IS NULL / IS NOT NULL",
        field=name,
    )


# --------------------------------------------------------------------------- key rotation


def _encrypted_column(target: QueryableAttribute[Any] | Column[Any]) -> Column[Any]:
    column: Any = target
    if isinstance(target, QueryableAttribute):
        columns = getattr(target.property, "columns", None)
        column = columns[0] if columns and len(columns) == 1 else None
    if not isinstance(column, Column) or not isinstance(column.type, EncryptedType):
        raise ConfigurationError(f"reencrypt(): {target!r} is not an EncryptedType column")
    if column.table is None or not column.table.primary_key.columns:
        raise ConfigurationError(f"reencrypt(): the table of {target!r} has no primary key")
    return column


def reencrypt(
    session: Session,
    column: QueryableAttribute[Any] | Column[Any],
    *,
    batch_size: int = 500,
    force: bool = False,
) -> int:
    """Re-encrypt every value of an ``EncryptedType`` column with the keyring's primary key.

    Rows are read in primary-key order, *batch_size* at a time (keyset pagination, raw bytes,
    soft-deleted rows included); every value is decrypted (a value that fails raises
    :class:`DecryptionError`, nothing is skipped silently) and written back when its key id is
    not the primary one or it is an unbound format-1 value (all values with ``force=True``),
    bound to the column's place, one ``executemany`` UPDATE per batch.
    Columns with an ``onupdate`` (``updated_at``) keep their values.  Runs in the session's
    transaction and **does not commit**.  Returns the number of rows rewritten.
    """
    if batch_size < 1:
        raise ConfigurationError("reencrypt(): batch_size must be >= 1")
    col = _encrypted_column(column)
    type_ = col.type
    assert isinstance(type_, EncryptedType)
    keyring = type_.keyring()
    table = col.table
    pk = list(table.primary_key.columns)
    raw = type_coerce(col, LargeBinary())
    stmt_base = (
        select(*pk, raw)
        .where(col.is_not(None))
        .order_by(*pk)
        .limit(batch_size)
        .execution_options(include_deleted=True)
    )
    keep = {c.key: c for c in table.c if c.onupdate is not None and c is not col}
    upd = (
        sa_update(table)
        .where(*[c == bindparam(f"rm_pk_{i}", type_=c.type) for i, c in enumerate(pk)])
        .values({col.key: bindparam("rm_value", type_=LargeBinary()), **keep})
    )
    rewritten = 0
    last: tuple[Any, ...] | None = None
    while True:
        stmt = stmt_base
        if last is not None:
            stmt = stmt.where(tuple_(*pk) > tuple_(*last) if len(pk) > 1 else pk[0] > last[0])
        rows = session.execute(stmt).all()
        if not rows:
            break
        params = []
        for row in rows:
            token = bytes(row[-1])
            plaintext, unbound = type_._open(keyring, token)
            if not force and not unbound and Keyring.key_id_of(token) == keyring.primary_id:
                continue
            values = {f"rm_pk_{i}": row[i] for i in range(len(pk))}
            values["rm_value"] = keyring.encrypt(plaintext, type_._bound_aad)
            params.append(values)
        if params:
            session.execute(upd, params)
            rewritten += len(params)
        last = tuple(rows[-1][: len(pk)])
        if len(rows) < batch_size:
            break
    return rewritten


async def reencrypt_async(
    session: AsyncSession,
    column: QueryableAttribute[Any] | Column[Any],
    *,
    batch_size: int = 500,
    force: bool = False,
) -> int:
    """:func:`reencrypt` for an ``AsyncSession`` (same code, run through ``run_sync``)."""
    return await session.run_sync(
        lambda sync_session: reencrypt(sync_session, column, batch_size=batch_size, force=force)
    )
