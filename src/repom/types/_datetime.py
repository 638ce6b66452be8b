"""``UTCDateTime``, ``utcnow()`` and the SQL-side ``sql_utcnow()``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from repom.types._base import InvalidValueError, RepomType, short_repr

__all__ = ["UTCDateTime", "coerce_utc", "sql_utcnow", "utcnow"]

#: dialects whose DATETIME column has no time zone: values are stored as naive UTC there
_NAIVE_STORAGE = frozenset({"sqlite", "mysql", "mariadb"})


def coerce_utc(value: Any) -> datetime | None:
    """An aware datetime converted to UTC; naive datetimes and other types are refused."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidValueError(
            f"expected a timezone-aware datetime, got {type(value).__name__} {short_repr(value)}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValueError(
            f"naive datetime {value.isoformat()} refused: attach a time zone "
            "(e.g. datetime.now(UTC) or value.replace(tzinfo=UTC))"
        )
    if value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time as an aware UTC ``datetime`` (microsecond precision)."""
    return datetime.now(UTC)


class UTCDateTime(RepomType, TypeDecorator[datetime]):
    """A timestamp that is always an aware UTC ``datetime`` in Python, on every database.

    * Writing: the value must be timezone-aware; it is converted to UTC.  **Naive datetimes
      are refused** with :class:`repom.types.InvalidValueError` (is ``datetime(2024, 1, 1)``
      local time or UTC?  repom does not guess; use ``datetime.now(UTC)`` or
      :func:`repom.types.utcnow`).
    * Storage: ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL; naive UTC in SQLite ``DATETIME``
      (ISO text, sorts correctly) and MySQL/MariaDB ``DATETIME(6)`` (microseconds kept).
    * Reading: always ``tzinfo=UTC``, whatever the connection's time zone.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def coerce(self, value: Any) -> datetime | None:
        return coerce_utc(value)

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        coerced = self.coerce(value)
        if coerced is not None and dialect.name in _NAIVE_STORAGE:
            return coerced.replace(tzinfo=None)
        return coerced

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = (
            datetime.fromisoformat(value) if isinstance(value, str) else value
        )  # a string: e.g. a raw SQLite value read through a Core text()
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        coerced = self.coerce(value)
        if coerced is None:
            return "NULL"
        if dialect.name in _NAIVE_STORAGE:
            return f"'{coerced.replace(tzinfo=None).isoformat(sep=' ')}'"
        return f"'{coerced.isoformat(sep=' ')}'"


class sql_utcnow(FunctionElement[datetime]):
    """The database's current UTC time, for ``server_default=`` and SQL expressions.

    Renders ``CURRENT_TIMESTAMP`` (PostgreSQL, default), ``STRFTIME('%Y-%m-%d %H:%M:%f', 'now')``
    on SQLite (milliseconds, UTC) and ``UTC_TIMESTAMP(6)`` on MySQL/MariaDB (the session time
    zone does not matter).  Alembic migrations render it as ``repom.types.sql_utcnow()``, so a
    migration stays portable across databases.
    """

    type = UTCDateTime()
    name = "sql_utcnow"
    inherit_cache = True


@compiles(sql_utcnow)
def _utcnow_default(element: sql_utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(sql_utcnow, "sqlite")
def _utcnow_sqlite(element: sql_utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "(STRFTIME('%Y-%m-%d %H:%M:%f', 'now'))"


@compiles(sql_utcnow, "mysql")
@compiles(sql_utcnow, "mariadb")
def _utcnow_mysql(element: sql_utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"
