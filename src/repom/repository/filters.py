"""Filters and ordering from caller data, validated against a model and a whitelist.

A filter is a mapping of ``"field"`` or ``"field__op"`` to a value::

    {"status": "active", "age__gte": 18, "email__ilike": "example.com", "id__in": [1, 2]}

Operators: ``eq``, ``ne`` (alias ``not``), ``in``, ``not_in``, ``lt``, ``lte``, ``gt``, ``gte``,
``like``/``ilike`` (substring match), ``contains``/``icontains``, ``startswith``/``istartswith``,
``endswith``/``iendswith`` and ``is_null`` (``True``/``False``).  In every pattern operator the
value is *literal*: ``%`` and ``_`` in it are escaped, so a caller can never inject wildcards.
Strings are converted to the column's Python type (``"18"`` -> ``18`` for an integer column), so
query-string values can be passed as they come.

``in``/``not_in`` take a list of any length and send it as ONE bound parameter where the
database allows it (:class:`InList`): ``col = ANY(CAST(:p AS type[]))`` on PostgreSQL,
``col IN (SELECT value FROM json_each(:p))`` on SQLite; MySQL/MariaDB drivers inline the values
client-side, so a plain ``IN (...)`` has no parameter limit there.

Every name is checked: an unknown field, operator or order field raises
:class:`~repom.exceptions.InvalidFilterError` naming it and listing the allowed ones.  No SQL is
ever built from a caller's string: field names select mapped attributes, values become bound
parameters.

Which filters the whitelist (a repository's ``filterable_fields``) applies to: filters that may
come from a caller -- a ``filters=`` mapping, a positional mapping, what
``repom.fastapi.filter_params`` returns.  Keyword filters (``repo.get_one(id=i)``) and SQLAlchemy
expressions (``User.age > 18``, ``User.name.desc()``) are written in the application's code, not
taken from caller input, so any mapped column is allowed there (an unknown one is still an error).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, ColumnElement, String, all_, and_, any_, bindparam, func, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.sqltypes import JSON, Enum
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator, TypeEngine

from repom.exceptions import InvalidFilterError
from repom.repository.meta import ModelInfo, model_info

__all__ = [
    "LIKE_ESCAPE",
    "OPERATORS",
    "InList",
    "OrderItem",
    "compile_filters",
    "compile_order_by",
    "escape_like",
    "split_filter_key",
    "validate_filters",
    "validate_order_by",
]

#: the escape character used in LIKE patterns built from caller values
LIKE_ESCAPE = "/"


def escape_like(value: str, escape: str = LIKE_ESCAPE) -> str:
    """*value* with LIKE wildcards (``%``, ``_``) and the escape character escaped."""
    return (
        value.replace(escape, escape + escape).replace("%", escape + "%").replace("_", escape + "_")
    )


def _like(attr: Any, value: str, *, lead: bool, trail: bool, ci: bool) -> ColumnElement[bool]:
    pattern = ("%" if lead else "") + escape_like(value) + ("%" if trail else "")
    if ci:
        result: ColumnElement[bool] = attr.ilike(pattern, escape=LIKE_ESCAPE)
    else:
        result = attr.like(pattern, escape=LIKE_ESCAPE)
    return result


# --------------------------------------------------------------------------- IN lists


class _JSONList(TypeDecorator[list[Any]]):
    """A list bound as one JSON text parameter; each element goes through the bind processor
    of *item_type* first, so it arrives in the form the column stores (e.g. a UUID as the 32
    hex digits of ``Uuid``/``UUIDType`` on SQLite, a datetime as SQLite's text format)."""

    impl = String
    cache_ok = True

    def __init__(self, item_type: TypeEngine[Any]) -> None:
        super().__init__()
        self.item_type = item_type

    def process_bind_param(self, value: Any, dialect: Dialect) -> str:
        proc = self.item_type.dialect_impl(dialect).bind_processor(dialect)
        items = list(value) if proc is None else [proc(v) for v in value]
        return json.dumps(items, default=str)


def _base_type(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return type_


def _array_ok(type_: TypeEngine[Any]) -> bool:
    """Can values of this type travel as elements of one PostgreSQL array parameter?"""
    if getattr(type_, "_has_bind_expression", True):
        return False  # the type wraps its parameter in SQL
    base = _base_type(type_)
    if isinstance(base, (ARRAY, JSON)):
        return False
    return not (isinstance(base, Enum) and base.native_enum)


def _json_ok(type_: TypeEngine[Any]) -> bool:
    """Can values of this type travel inside one JSON text (SQLite ``json_each``)?"""
    if getattr(type_, "_has_bind_expression", True):
        return False
    try:
        py = _base_type(type_).python_type
    except NotImplementedError:
        return False
    return py in (int, float, decimal.Decimal, str, bool, uuid.UUID, dt.datetime, dt.date) or (
        isinstance(py, type) and issubclass(py, enum.Enum)
    )


class InList(ColumnElement[bool]):
    """``column IN (values)`` (``NOT IN`` when *negate*) for a list of any length.

    The statement is the same whatever the length of the list: one bound parameter, so there is
    no driver parameter limit (asyncpg: 32,767; SQLite: 32,766) and the SQL text stays cacheable.
    Each dialect renders the form it supports (see the ``@compiles`` functions below); every
    form is built here, with its own bound parameter, so statement caching extracts the values
    of whichever one is rendered.
    """

    __visit_name__ = "repom_in_list"
    inherit_cache = True
    _traverse_internals = [
        ("generic", InternalTraversal.dp_clauseelement),
        ("postgresql", InternalTraversal.dp_clauseelement),
        ("sqlite", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()
    _is_implicitly_boolean = True  # a predicate: no "= 1" around it where booleans are ints

    def __init__(self, column: Any, values: Sequence[Any], *, negate: bool = False) -> None:
        col_type: TypeEngine[Any] = column.type
        values = list(values)
        self.generic: ColumnElement[bool] = column.not_in(values) if negate else column.in_(values)
        if _array_ok(col_type):
            array = sql_cast(bindparam(None, values, type_=ARRAY(col_type)), ARRAY(col_type))
            self.postgresql: ColumnElement[bool] = (
                column != all_(array) if negate else column == any_(array)
            )
        else:
            self.postgresql = column.not_in(values) if negate else column.in_(values)
        if _json_ok(col_type):
            each = func.json_each(bindparam(None, values, type_=_JSONList(col_type)))
            source = select(each.table_valued("value").c.value)
            self.sqlite: ColumnElement[bool] = (
                column.not_in(source) if negate else column.in_(source)
            )
        else:
            self.sqlite = column.not_in(values) if negate else column.in_(values)


@compiles(InList)
def _compile_in_list(element: InList, compiler: Any, **kw: Any) -> str:
    # MySQL/MariaDB (pymysql, aiomysql, asyncmy) interpolate parameters client-side: an
    # expanding IN list has no parameter limit there, and MySQL evaluates a constant IN list
    # with a binary search over the sorted values
    return str(compiler.process(element.generic, **kw))


@compiles(InList, "postgresql")
def _compile_in_list_pg(element: InList, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.postgresql, **kw))


@compiles(InList, "sqlite")
def _compile_in_list_sqlite(element: InList, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.sqlite, **kw))


_Builder = Callable[[Any, Any], ColumnElement[bool]]

_SIMPLE: dict[str, _Builder] = {
    "eq": lambda a, v: a.is_(None) if v is None else a == v,
    "ne": lambda a, v: a.is_not(None) if v is None else a != v,
    "lt": lambda a, v: a < v,
    "lte": lambda a, v: a <= v,
    "gt": lambda a, v: a > v,
    "gte": lambda a, v: a >= v,
    "in": lambda a, v: InList(a, v),
    "not_in": lambda a, v: InList(a, v, negate=True),
    "is_null": lambda a, v: a.is_(None) if v else a.is_not(None),
    "like": lambda a, v: _like(a, v, lead=True, trail=True, ci=False),
    "ilike": lambda a, v: _like(a, v, lead=True, trail=True, ci=True),
    "contains": lambda a, v: _like(a, v, lead=True, trail=True, ci=False),
    "icontains": lambda a, v: _like(a, v, lead=True, trail=True, ci=True),
    "startswith": lambda a, v: _like(a, v, lead=False, trail=True, ci=False),
    "istartswith": lambda a, v: _like(a, v, lead=False, trail=True, ci=True),
    "endswith": lambda a, v: _like(a, v, lead=True, trail=False, ci=False),
    "iendswith": lambda a, v: _like(a, v, lead=True, trail=False, ci=True),
}
_ALIASES = {"not": "ne", "neq": "ne", "notin": "not_in", "isnull": "is_null"}
#: every operator name accepted after ``__``
OPERATORS: tuple[str, ...] = (*_SIMPLE, *_ALIASES)
_PATTERN_OPS = frozenset(
    {"like", "ilike", "contains", "icontains", "startswith", "istartswith", "endswith", "iendswith"}
)
_LIST_OPS = frozenset({"in", "not_in"})
_ORDERING_OPS = frozenset({"lt", "lte", "gt", "gte"})


def split_filter_key(key: str, fields: Collection[str] = ()) -> tuple[str, str]:
    """``"age__gte"`` -> ``("age", "gte")``; ``"age"`` -> ``("age", "eq")``.

    A key that is itself a field name (even one containing ``__``) is an equality filter.
    """
    if key in fields or "__" not in key:
        return key, "eq"
    name, _, op = key.rpartition("__")
    return name, op


def _fmt(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none)"


_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}


def coerce_value(value: Any, py: type[Any] | None, label: str, field_name: str) -> Any:
    """Check *value* against the column's Python type; convert strings (query parameters)."""
    if py is None or value is None or py is object:
        return value
    if py is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _bad_value(label, field_name, value, "a boolean")
    if isinstance(value, bool):
        raise _bad_value(label, field_name, value, _describe(py))
    if py is dt.date and isinstance(value, dt.datetime):
        raise _bad_value(label, field_name, value, "a date")
    if isinstance(value, py):
        return value
    if py in (int, float, decimal.Decimal):
        if isinstance(value, (int, float, decimal.Decimal)):
            if py is int and isinstance(value, (float, decimal.Decimal)) and value != int(value):
                raise _bad_value(label, field_name, value, "an integer")
            return py(value)
        if isinstance(value, str):
            try:
                return py(value.strip())
            except (ValueError, decimal.InvalidOperation):
                pass
        raise _bad_value(label, field_name, value, _describe(py))
    if isinstance(value, str):
        try:
            if py is dt.datetime:
                return dt.datetime.fromisoformat(value.strip())
            if py is dt.date:
                return dt.date.fromisoformat(value.strip())
            if py is dt.time:
                return dt.time.fromisoformat(value.strip())
            if py is uuid.UUID:
                return uuid.UUID(value.strip())
            if isinstance(py, type) and issubclass(py, enum.Enum):
                if value in py.__members__:
                    return py[value]
                return py(value)
        except (ValueError, KeyError):
            raise _bad_value(label, field_name, value, f"a {py.__name__}") from None
        if py is str:
            return value
    if py is str and not isinstance(value, str):
        raise _bad_value(label, field_name, value, "a string")
    if py in (dt.datetime, dt.date, dt.time, uuid.UUID):
        raise _bad_value(label, field_name, value, f"a {py.__name__}")
    return value


def _describe(py: type[Any]) -> str:
    if py is int:
        return "an integer"
    if py in (float, decimal.Decimal):
        return "a number"
    if py is str:
        return "a string"
    name = py.__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _bad_value(label: str, field_name: str, value: Any, expected: str) -> InvalidFilterError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return InvalidFilterError(
        f"invalid value for filter {label!r}: expected {expected}, got {shown}",
        field=field_name,
    )


def _compile_one(
    info: ModelInfo[Any], key: str, value: Any, allowed: Collection[str]
) -> ColumnElement[bool]:
    if not isinstance(key, str):
        raise InvalidFilterError(f"filter names must be strings, got {key!r}")
    name, op = split_filter_key(key, allowed)
    if name not in allowed:
        raise InvalidFilterError(
            f"unknown filter field {name!r} for {info.name}; allowed: {_fmt(allowed)}",
            field=name,
            allowed=sorted(allowed),
        )
    op = _ALIASES.get(op, op)
    builder = _SIMPLE.get(op)
    if builder is None:
        raise InvalidFilterError(
            f"unknown filter operator {op!r} in {key!r}; allowed operators: {', '.join(OPERATORS)}",
            field=name,
            allowed=list(OPERATORS),
        )
    attr = info.attributes[name]
    py = info.python_types[name]
    if op in _LIST_OPS:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise InvalidFilterError(
                f"filter {key!r} needs a list of values, got {type(value).__name__}", field=name
            )
        value = [coerce_value(v, py, key, name) for v in value]
        if any(v is None for v in value):
            raise InvalidFilterError(
                f"filter {key!r}: None is not allowed in a list (use {name}__is_null)",
                field=name,
            )
    elif op == "is_null":
        value = coerce_value(value, bool, key, name)
        if not isinstance(value, bool):
            raise _bad_value(key, name, value, "True or False")
    elif op in _PATTERN_OPS:
        if not isinstance(value, str):
            raise _bad_value(key, name, value, "a string")
    else:
        if value is None and op in _ORDERING_OPS:
            raise _bad_value(key, name, value, "a value (None cannot be compared)")
        if isinstance(value, (list, tuple, set, frozenset, dict)):
            raise _bad_value(key, name, value, "a single value (use __in for lists)")
        value = coerce_value(value, py, key, name)
    return builder(attr, value)


def compile_filters(
    info: ModelInfo[Any],
    filters: Mapping[str, Any] | None,
    allowed: Collection[str] | None = None,
) -> list[ColumnElement[bool]]:
    """Validated WHERE criteria for *filters* (see the module docstring)."""
    if not filters:
        return []
    if not isinstance(filters, Mapping):
        raise InvalidFilterError(
            f"filters must be a mapping of field[__op] to value, got {type(filters).__name__}"
        )
    names = info.attributes.keys() if allowed is None else allowed
    return [_compile_one(info, key, value, names) for key, value in filters.items()]


def validate_filters(
    model: type[Any],
    filters: Mapping[str, Any] | None,
    *,
    allowed: Collection[str] | None = None,
) -> ColumnElement[bool] | None:
    """Check *filters* for *model* and return them as one criterion (``None`` when empty).

    *allowed* restricts the fields (default: every column).  Raises
    :class:`~repom.exceptions.InvalidFilterError` for an unknown field or operator, or a value
    that does not fit the column.
    """
    info = model_info(model)
    if allowed is not None:
        unknown = set(allowed) - set(info.attributes)
        if unknown:
            raise InvalidFilterError(
                f"{info.name} has no column(s) {_fmt(unknown)}; columns: {_fmt(info.attributes)}"
            )
    criteria = compile_filters(info, filters, allowed)
    if not criteria:
        return None
    return criteria[0] if len(criteria) == 1 else and_(*criteria)


# --------------------------------------------------------------------------- ordering


@dataclass(frozen=True)
class OrderItem:
    """One ORDER BY term.  ``key`` is the attribute key, or ``None`` for an arbitrary expression
    (usable by ``list``/``paginate``, not by ``keyset``)."""

    expression: Any
    key: str | None
    descending: bool

    def clause(self) -> Any:
        if self.key is None:
            return self.expression
        return self.expression.desc() if self.descending else self.expression.asc()


OrderBy = str | InstrumentedAttribute[Any] | ColumnElement[Any] | UnaryExpression[Any]


def _attr_key(info: ModelInfo[Any], element: Any) -> str | None:
    if isinstance(element, InstrumentedAttribute):
        attr_key: str = element.key
        return attr_key if info.attributes.get(attr_key) is element else None
    annotations = getattr(element, "_annotations", None) or {}
    mapper = annotations.get("parentmapper")
    key = annotations.get("proxy_key")
    if mapper is not None and key in info.attributes and mapper.isa(info.mapper):
        return str(key)
    return None


def compile_order_by(
    info: ModelInfo[Any],
    order_by: OrderBy | Sequence[OrderBy] | None,
    allowed: Collection[str] | None = None,
) -> list[OrderItem]:
    """ORDER BY terms from ``"name"``, ``"-created_at"``, ``User.name``, ``User.name.desc()``
    or a list of these.  Strings are checked against *allowed* (default: every column)."""
    if order_by is None:
        return []
    items: Sequence[Any]
    if isinstance(order_by, (str, InstrumentedAttribute, ColumnElement, UnaryExpression)):
        items = [order_by]
    elif isinstance(order_by, Sequence):
        items = order_by
    else:
        raise InvalidFilterError(
            f"order_by must be a field name, a column or a list of them, got {order_by!r}"
        )
    names = info.attributes.keys() if allowed is None else allowed
    result: list[OrderItem] = []
    for item in items:
        if isinstance(item, str):
            text = item.strip()
            descending = text.startswith("-")
            name = text.lstrip("+-").strip()
            if name not in names:
                raise InvalidFilterError(
                    f"unknown order field {name!r} for {info.name}; allowed: {_fmt(names)}",
                    field=name,
                    allowed=sorted(names),
                )
            result.append(OrderItem(info.attributes[name], name, descending))
            continue
        if isinstance(item, UnaryExpression) and item.modifier in (
            operators.desc_op,
            operators.asc_op,
        ):
            key = _attr_key(info, item.element)
            if key is not None:
                descending = item.modifier is operators.desc_op
                result.append(OrderItem(info.attributes[key], key, descending))
            else:
                result.append(OrderItem(item, None, False))
            continue
        key = _attr_key(info, item)
        if key is not None:
            result.append(OrderItem(info.attributes[key], key, False))
        elif isinstance(item, ColumnElement):
            result.append(OrderItem(item, None, False))
        else:
            raise InvalidFilterError(f"cannot order by {item!r}")
    return result


def validate_order_by(
    model: type[Any],
    order_by: OrderBy | Sequence[OrderBy] | None,
    *,
    allowed: Collection[str] | None = None,
) -> list[Any]:
    """Check an ordering for *model*; return the ORDER BY clauses."""
    return [item.clause() for item in compile_order_by(model_info(model), order_by, allowed)]
