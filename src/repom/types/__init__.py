"""Portable column types: ``UUIDType``, ``UTCDateTime``, ``JSONBType``, ``ArrayType``,
``EncryptedType`` (AES-256-GCM, key rotation), plus the Alembic hook :func:`render_item`.

Each type uses the native type where the database has one (``uuid``, ``timestamptz``,
``JSONB``, ``ARRAY`` on PostgreSQL) and a compact portable one elsewhere, with the same Python
behaviour everywhere.  Values are validated when assigned to a mapped attribute and when a
statement runs; a bad value raises :class:`InvalidValueError`
(a :class:`repom.exceptions.DataValidationError`) and nothing is written.

``cryptography`` is imported only when an encryption key is first used; Alembic only by the hook.
See ``docs/models.md``.
"""

from repom.types._alembic import render_item, render_type
from repom.types._base import InvalidValueError, RepomType
from repom.types._datetime import UTCDateTime, sql_utcnow, utcnow
from repom.types._encrypted import (
    ENV_VAR,
    DecryptionError,
    EncryptedType,
    EncryptionKeyError,
    Keyring,
    KeySource,
    UnknownKeyError,
    generate_key,
    reencrypt,
    reencrypt_async,
    resolve_keyring,
)
from repom.types._json import ArrayType, JSONBType
from repom.types._tracking import TrackedDict, TrackedList
from repom.types._uuid import UUIDType, uuid7

__all__ = [
    "ENV_VAR",
    "ArrayType",
    "DecryptionError",
    "EncryptedType",
    "EncryptionKeyError",
    "InvalidValueError",
    "JSONBType",
    "KeySource",
    "Keyring",
    "RepomType",
    "TrackedDict",
    "TrackedList",
    "UTCDateTime",
    "UUIDType",
    "UnknownKeyError",
    "generate_key",
    "reencrypt",
    "reencrypt_async",
    "render_item",
    "render_type",
    "resolve_keyring",
    "sql_utcnow",
    "utcnow",
    "uuid7",
]
