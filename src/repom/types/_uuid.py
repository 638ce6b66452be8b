"""``UUIDType`` and time-ordered UUIDs (version 7, RFC 9562)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from sqlalchemy import Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from repom.types._base import InvalidValueError, RepomType, short_repr

__all__ = ["UUIDType", "coerce_uuid", "uuid7"]


def coerce_uuid(value: Any) -> uuid.UUID | None:
    """``uuid.UUID`` from a UUID or a string ``uuid.UUID()`` parses; else InvalidValueError."""
    if value is None or type(value) is uuid.UUID:
        return value
    if isinstance(value, uuid.UUID):
        return uuid.UUID(int=value.int)
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidValueError(f"invalid UUID {short_repr(value)}")


class UUIDType(RepomType, TypeDecorator[uuid.UUID]):
    """A UUID column: native ``uuid`` on PostgreSQL (and MariaDB >= 10.7, SQL Server),
    ``CHAR(32)`` (32 hex digits, no dashes) on SQLite and MySQL.

    Accepts ``uuid.UUID`` and any string ``uuid.UUID()`` parses (``"0190…"``, with or without
    dashes, braces or ``urn:uuid:``); always returns ``uuid.UUID``.  Anything else raises
    :class:`repom.types.InvalidValueError` (a :class:`repom.exceptions.DataValidationError`).
    The hex form keeps byte order, so UUIDv7 keys sort by creation time everywhere.
    """

    impl = Uuid
    cache_ok = True

    @property
    def python_type(self) -> type[uuid.UUID]:
        return uuid.UUID

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(Uuid(as_uuid=True))

    def coerce(self, value: Any) -> uuid.UUID | None:
        return coerce_uuid(value)

    def process_bind_param(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        return self.coerce(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        if value is None or type(value) is uuid.UUID:
            return value
        if isinstance(value, uuid.UUID):  # asyncpg's own subclass: same value, plain type
            return uuid.UUID(int=value.int)
        return uuid.UUID(str(value))

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        coerced = self.coerce(value)
        return "NULL" if coerced is None else f"'{coerced.hex}'"


_uuid7_lock = threading.Lock()
_uuid7_last = (0, 0)  # (unix milliseconds, 12-bit counter)


def uuid7() -> uuid.UUID:
    """A new version-7 UUID: 48-bit Unix time in milliseconds, then random bits.

    Keys made in one process are strictly increasing: within one millisecond the 12 ``rand_a``
    bits act as a counter (RFC 9562, section 6.2, method 1) seeded randomly each millisecond.
    """
    global _uuid7_last
    rand = int.from_bytes(os.urandom(10), "big")
    now_ms = time.time_ns() // 1_000_000
    with _uuid7_lock:
        last_ms, counter = _uuid7_last
        if now_ms > last_ms:
            counter = rand >> 69  # 11 random bits: leaves room to count up within the ms
        else:
            now_ms = last_ms
            counter += 1
            if counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                now_ms += 1
                counter = rand >> 69
        _uuid7_last = (now_ms, counter)
    rand_b = rand & ((1 << 62) - 1)
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)
