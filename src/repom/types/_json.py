"""``JSONBType`` and ``ArrayType``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm.attributes import QueryableAttribute
from sqlalchemy.types import TypeDecorator, TypeEngine, to_instance

from repom.types._base import InvalidValueError, RepomType, short_repr
from repom.types._codec import Codec, StrCodec, check_no_nul, codec_for
from repom.types._tracking import track_attribute

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext

__all__ = ["ArrayType", "JSONBType"]


class JSONBType(RepomType, TypeDecorator[Any]):
    """A JSON document: ``JSONB`` on PostgreSQL, the database's JSON type elsewhere.

    * ``None`` is stored as SQL ``NULL`` (not the JSON ``null``).
    * With ``mutable=True`` (the default) in-place changes at any depth
      (``doc["a"]["b"] = 1``, ``doc["tags"].append("x")``) mark the object dirty.
    * PostgreSQL refuses U+0000 inside JSONB strings; such a value raises
      :class:`repom.types.InvalidValueError` before anything is sent.
    """

    impl = JSON(none_as_null=True)
    cache_ok = True
    repom_codec_kind = "json"  # what repom.types._codec.codec_for needs to know

    def __init__(self, *, mutable: bool = True) -> None:
        super().__init__()
        self.mutable = mutable

    @property
    def python_type(self) -> type[Any]:
        return object

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is not None and dialect.name == "postgresql":
            check_no_nul(value, "JSONBType")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return value

    def instrument(self, attribute: QueryableAttribute[Any]) -> None:
        if self.mutable:
            track_attribute(attribute)

    def render(self, autogen_context: AutogenContext | None) -> str:
        return "JSONBType()" if self.mutable else "JSONBType(mutable=False)"


class ArrayType(RepomType, TypeDecorator[list[Any]]):
    """A one-dimensional list of *item_type* values: ``ARRAY`` on PostgreSQL, a JSON array
    elsewhere, with the same Python behaviour everywhere.

    Values are lists (tuples are accepted); items are validated against *item_type* (``String``,
    ``Integer``, ``Float``, ``Numeric``, ``Boolean``, ``Date``, ``DateTime``, ``UTCDateTime``,
    ``UUIDType``/``Uuid``, ``JSON``, ``LargeBinary``) and come back as the same Python types (in
    JSON, UUIDs, dates and decimals are stored as strings).  ``mutable=True`` (default) tracks
    ``append``/``extend``/item assignment.  Querying inside the array is database specific.
    """

    impl = JSON(none_as_null=True)
    cache_ok = True
    repom_codec_kind = "array"

    def __init__(
        self, item_type: TypeEngine[Any] | type[TypeEngine[Any]], *, mutable: bool = True
    ) -> None:
        super().__init__()
        self.item_type: TypeEngine[Any] = to_instance(item_type)
        self.mutable = mutable
        self._codec: Codec = codec_for(self.item_type, owner="ArrayType")

    @property
    def python_type(self) -> type[list[Any]]:
        return list

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(self.item_type))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def coerce(self, value: Any) -> list[Any] | None:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise InvalidValueError(
                f"expected a list, got {type(value).__name__} {short_repr(value)}"
            )
        coerce_item = self._codec.coerce
        return [None if item is None else coerce_item(item) for item in value]

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        items = self.coerce(value)
        if items is None:
            return None
        if dialect.name == "postgresql":
            if isinstance(self._codec, StrCodec):
                check_no_nul(items, "ArrayType")
            return items
        to_json = self._codec.to_json
        return [None if item is None else to_json(item) for item in items]

    def process_result_value(self, value: Any, dialect: Dialect) -> list[Any] | None:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return list(value)
        from_json = self._codec.from_json
        return [None if item is None else from_json(item) for item in value]

    def instrument(self, attribute: QueryableAttribute[Any]) -> None:
        if self.mutable:
            track_attribute(attribute)

    def render(self, autogen_context: AutogenContext | None) -> str:
        from repom.types._alembic import render_type

        inner = render_type(self.item_type, autogen_context)
        return f"ArrayType({inner})" if self.mutable else f"ArrayType({inner}, mutable=False)"
