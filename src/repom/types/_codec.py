"""Value codecs: how a Python value of a given SQLAlchemy type is validated, turned into JSON
(``ArrayType`` items outside PostgreSQL) and into bytes (``EncryptedType`` plaintext).

One codec per kind of value, chosen from the column type once, when the repom type is built.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.types import TypeEngine

from repom.exceptions import ConfigurationError
from repom.types._base import InvalidValueError, short_repr
from repom.types._datetime import UTCDateTime, coerce_utc
from repom.types._uuid import UUIDType, coerce_uuid

__all__ = ["Codec", "check_no_nul", "codec_for", "json_dumps"]


def json_dumps(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"value is not JSON serializable: {exc}") from None


class Codec:
    """Identity codec for JSON-native values; subclasses override what they need."""

    kind = "value"

    def coerce(self, value: Any) -> Any:
        return value

    def to_json(self, value: Any) -> Any:
        return value

    def from_json(self, value: Any) -> Any:
        return value

    def to_bytes(self, value: Any) -> bytes:
        return json_dumps(self.to_json(value)).encode("utf-8")

    def from_bytes(self, data: bytes) -> Any:
        return self.from_json(json.loads(data))

    def _refuse(self, value: Any) -> InvalidValueError:
        return InvalidValueError(
            f"expected {self.kind}, got {type(value).__name__} {short_repr(value)}"
        )


class StrCodec(Codec):
    kind = "str"

    def __init__(self, length: int | None) -> None:
        self.length = length

    def coerce(self, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._refuse(value)
        if self.length is not None and len(value) > self.length:
            raise InvalidValueError(
                f"string of {len(value)} characters is longer than the column's {self.length}"
            )
        return value

    def to_bytes(self, value: Any) -> bytes:
        return str(value).encode("utf-8")

    def from_bytes(self, data: bytes) -> Any:
        return data.decode("utf-8")


class BytesCodec(Codec):
    kind = "bytes"

    def coerce(self, value: Any) -> Any:
        if value is None or isinstance(value, bytes):
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise self._refuse(value)

    def to_json(self, value: Any) -> Any:
        return base64.b64encode(value).decode("ascii")

    def from_json(self, value: Any) -> Any:
        return base64.b64decode(value)

    def to_bytes(self, value: Any) -> bytes:
        return bytes(value)

    def from_bytes(self, data: bytes) -> Any:
        return bytes(data)


class IntCodec(Codec):
    kind = "int"

    def coerce(self, value: Any) -> Any:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise self._refuse(value)


class FloatCodec(Codec):
    kind = "float"

    def coerce(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise self._refuse(value)


class DecimalCodec(Codec):
    kind = "Decimal"

    def coerce(self, value: Any) -> Any:
        if value is None or isinstance(value, Decimal):
            return value
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return Decimal(str(value))
            except InvalidOperation:
                pass
        raise self._refuse(value)

    def to_json(self, value: Any) -> Any:
        return str(value)

    def from_json(self, value: Any) -> Any:
        return Decimal(value)


class BoolCodec(Codec):
    kind = "bool"

    def coerce(self, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        raise self._refuse(value)


class UUIDCodec(Codec):
    kind = "UUID"

    def coerce(self, value: Any) -> Any:
        return coerce_uuid(value)

    def to_json(self, value: Any) -> Any:
        return str(value)

    def from_json(self, value: Any) -> Any:
        return uuid.UUID(value)

    def to_bytes(self, value: Any) -> bytes:
        return bytes(value.bytes)

    def from_bytes(self, data: bytes) -> Any:
        return uuid.UUID(bytes=bytes(data))


class DateTimeCodec(Codec):
    kind = "datetime"

    def __init__(self, aware: bool) -> None:
        self.aware = aware

    def coerce(self, value: Any) -> Any:
        if self.aware:
            return coerce_utc(value)
        if value is None or isinstance(value, datetime):
            return value
        raise self._refuse(value)

    def to_json(self, value: Any) -> Any:
        return value.isoformat()

    def from_json(self, value: Any) -> Any:
        parsed = datetime.fromisoformat(value)
        if self.aware and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed


class DateCodec(Codec):
    kind = "date"

    def coerce(self, value: Any) -> Any:
        if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
            return value
        raise self._refuse(value)

    def to_json(self, value: Any) -> Any:
        return value.isoformat()

    def from_json(self, value: Any) -> Any:
        return date.fromisoformat(value)


class JSONCodec(Codec):
    kind = "JSON value"

    def coerce(self, value: Any) -> Any:
        return value


def codec_for(type_: TypeEngine[Any] | type[TypeEngine[Any]], *, owner: str) -> Codec:
    """The codec for values of *type_*; :class:`ConfigurationError` for unsupported types."""
    instance = type_() if isinstance(type_, type) else type_
    if isinstance(instance, (UUIDType, sqltypes.Uuid)):
        return UUIDCodec()
    if isinstance(instance, UTCDateTime):
        return DateTimeCodec(aware=True)
    # repom's JSONBType and ArrayType (defined on top of this module) say what they hold
    held = getattr(instance, "repom_codec_kind", None)
    if held == "json" or isinstance(instance, sqltypes.JSON):
        return JSONCodec()
    if held == "array":
        raise ConfigurationError(f"{owner}: ArrayType is not supported here")
    if isinstance(instance, sqltypes.Enum):
        raise ConfigurationError(f"{owner}: Enum is not supported; use String")
    if isinstance(instance, sqltypes.String):
        return StrCodec(instance.length)
    if isinstance(instance, sqltypes.LargeBinary):
        return BytesCodec()
    if isinstance(instance, sqltypes.Boolean):
        return BoolCodec()
    if isinstance(instance, sqltypes.Integer):
        return IntCodec()
    if isinstance(instance, sqltypes.Float) or (
        isinstance(instance, sqltypes.Numeric) and not instance.asdecimal
    ):
        return FloatCodec()
    if isinstance(instance, sqltypes.Numeric):
        return DecimalCodec()
    if isinstance(instance, sqltypes.DateTime):
        return DateTimeCodec(aware=bool(instance.timezone))
    if isinstance(instance, sqltypes.Date):
        return DateCodec()
    raise ConfigurationError(
        f"{owner}: unsupported value type {type(instance).__name__}; supported: String/Text, "
        "LargeBinary, Integer, Float, Numeric, Boolean, Date, DateTime, UTCDateTime, "
        "Uuid/UUIDType, JSON/JSONBType"
    )


def check_no_nul(value: Any, what: str) -> None:
    """PostgreSQL text and JSONB cannot hold U+0000: refuse it before the database does."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidValueError(
                    f"{what}: PostgreSQL cannot store the NUL character (U+0000) in text; "
                    "remove it or store the data as bytes"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
