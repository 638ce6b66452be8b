"""Values checked against the column types before a repository writes them.

SQLite stores ``'abc'`` in an INTEGER column and 5,000 characters in a ``VARCHAR(50)``;
PostgreSQL and MariaDB refuse them, each with its own error, and some values (a lone UTF-16
surrogate, an integer beyond 64 bits) make the *driver* fail with ``UnicodeEncodeError`` or
``OverflowError``.  Repository writes (``create``, ``update``, ``bulk_create``, ``bulk_update``,
``upsert``, ``bulk_upsert``) check every value here first, so every backend refuses the same
values with one error, :class:`ColumnValueError` (a
:class:`~repom.exceptions.DataValidationError`), which names the model and the field, before any
statement is sent.

Rules (the column's declared type decides, whatever the backend):

* ``Integer`` -32 bit, ``SmallInteger`` 16 bit, ``BigInteger`` 64 bit signed ranges; only ``int``
  (``True``/``False`` and numeric strings such as ``'12'`` are refused, not coerced);
* ``String(n)``/``Text``/``Unicode``: only ``str``, at most *n* characters (``Text``: no limit),
  no NUL character (U+0000) and no lone surrogate (U+D800..U+DFFF);
* ``Numeric(p, s)``: ``Decimal``, ``int`` or ``float``, finite, and at most ``p - s`` digits
  before the point once rounded to *s* places (more decimal places are rounded by the database);
* ``Float``: ``int``, ``float`` or ``Decimal``; ``Boolean``: only ``True``/``False``;
* ``JSON``: no lone surrogate in any string inside.

``None`` always passes (NOT NULL is the database's business), and so do SQL expressions.  Other
types (dates, UUIDs, enums, binary, repom's own types, user ``TypeDecorator``) validate
themselves and are not checked here.

A validator is built once per mapped class; checking a value is one dictionary lookup and one
call, with a type test as the fast path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql.elements import ClauseElement

from repom.exceptions import DataValidationError
from repom.repository.meta import ModelInfo

__all__ = ["ColumnValueError", "ModelValidator", "validator"]

_Check = Callable[[Any], None]


class ColumnValueError(DataValidationError):
    """A value that the column's type does not allow; ``model`` and ``field`` name the column.
    The message never repeats the value (it may be a secret)."""

    def __init__(self, message: str, *, model: str, field: str) -> None:
        super().__init__(message)
        self.model = model
        self.field = field


class _Refused(Exception):
    """Internal: a checker's refusal, turned into :class:`ColumnValueError` with the names."""


def _is_sql(value: Any) -> bool:
    return isinstance(value, ClauseElement) or hasattr(value, "__clause_element__")


def _wrong_type(expected: str, value: Any) -> _Refused:
    return _Refused(f"expected {expected}, got {type(value).__name__}")


def _bad_text(value: str) -> str | None:
    """Why *value* cannot be stored as text (``None``: it can)."""
    if "\x00" in value:
        return "text cannot hold the NUL character (U+0000)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"text contains a lone surrogate (U+{ord(value[exc.start]):04X}) at "
                f"position {exc.start}, which is not valid Unicode"
            )
    return None


def _int_check(bits: int) -> _Check:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: Any) -> None:
        if type(value) is int:
            if low <= value <= high:
                return
        elif value is None or _is_sql(value):
            return
        elif isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type("an integer", value)
        elif low <= value <= high:
            return
        raise _Refused(f"integer out of the {bits}-bit range {low}..{high}")

    return check


def _str_check(length: int | None) -> _Check:
    def check(value: Any) -> None:
        if not isinstance(value, str):
            if value is None or _is_sql(value):
                return
            raise _wrong_type("a string", value)
        if length is not None and len(value) > length:
            raise _Refused(
                f"string of {len(value)} characters is longer than the column's {length}"
            )
        problem = _bad_text(value)
        if problem is not None:
            raise _Refused(problem)

    return check


def _bool_check(value: Any) -> None:
    if value is True or value is False or value is None or _is_sql(value):
        return
    raise _wrong_type("True or False", value)


def _float_check(value: Any) -> None:
    kind = type(value)
    if kind is float or kind is int or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        if _is_sql(value):
            return
        raise _wrong_type("a number", value)


def _numeric_check(precision: int | None, scale: int | None) -> _Check:
    places = scale or 0
    # the smallest magnitude that no longer fits once rounded (half away from zero) to *places*
    limit = (
        Decimal(10) ** (precision - places) - Decimal(1).scaleb(-places) / 2
        if precision is not None
        else None
    )

    def check(value: Any) -> None:
        if value is None:
            return
        if type(value) is Decimal and limit is not None and value.is_finite():
            if -limit < value < limit:  # the common case
                return
        elif isinstance(value, Decimal):
            if not value.is_finite():
                raise _Refused("number must be finite (no NaN or Infinity)")
        elif isinstance(value, float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Refused("number must be finite (no NaN or Infinity)")
        elif not isinstance(value, int) or isinstance(value, bool):
            if _is_sql(value):
                return
            raise _wrong_type("a Decimal or a number", value)
        if limit is not None and abs(value) >= limit:
            raise _Refused(
                f"number has more than {(precision or 0) - places} digit(s) before the decimal "
                f"point (column precision {precision}, scale {places})"
            )

    return check


def _json_check(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                problem = _bad_text(item)
                if problem is not None and "surrogate" in problem:
                    raise _Refused(problem)
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _checker(type_: sqltypes.TypeEngine[Any]) -> _Check | None:
    """The check for values of *type_*; ``None`` when values of the type are not checked."""
    if isinstance(type_, (sqltypes.TypeDecorator, sqltypes.Enum)):
        return None  # validate themselves
    if isinstance(type_, sqltypes.String):
        return _str_check(type_.length)
    if isinstance(type_, sqltypes.Boolean):
        return _bool_check
    if isinstance(type_, sqltypes.BigInteger):
        return _int_check(64)
    if isinstance(type_, sqltypes.SmallInteger):
        return _int_check(16)
    if isinstance(type_, sqltypes.Integer):
        return _int_check(32)
    if isinstance(type_, sqltypes.Float):
        return _float_check
    if isinstance(type_, sqltypes.Numeric):
        return _numeric_check(type_.precision, type_.scale)
    if isinstance(type_, sqltypes.JSON):
        return _json_check
    return None


# --------------------------------------------------------------------------- whole columns
# A column check answers "do all these values pass?" in a few C-level passes (types, min/max,
# one joined string).  ``False`` means "not sure": the per-value check then runs and reports the
# first bad value with its row.

_ColumnCheck = Callable[[Sequence[Any]], bool]
_NONE = type(None)


def _present(values: Sequence[Any], types: set[type], allowed: frozenset[type]) -> Any:
    """The non-``None`` values when every value's type is in *allowed* (or ``None``)."""
    if not types <= allowed:
        return None
    return [v for v in values if v is not None] if _NONE in types else values


def _int_column(bits: int) -> _ColumnCheck:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    allowed: frozenset[type] = frozenset({int, _NONE})

    def check(values: Sequence[Any]) -> bool:
        ints = _present(values, set(map(type, values)), allowed)
        return ints is not None and (not ints or (low <= min(ints) and max(ints) <= high))

    return check


def _str_column(length: int | None) -> _ColumnCheck:
    allowed: frozenset[type] = frozenset({str, _NONE})

    def check(values: Sequence[Any]) -> bool:
        joined = None
        if length is not None and length * len(values) <= _JOIN_LIMIT:
            try:  # the common case, in one pass: only strings (any str type) join
                joined = "".join(values)
            except TypeError:  # None among them (allowed), or a value of another type
                joined = None
        strs = values if joined is not None else _present(values, set(map(type, values)), allowed)
        if strs is None:
            return False
        if not strs:
            return True
        longest = max(map(len, strs))
        if length is not None and longest > length:
            return False
        if joined is None:
            if longest * len(strs) > _JOIN_LIMIT and sum(map(len, strs)) > _JOIN_LIMIT:
                return False  # long texts: checked one by one, not copied into one string
            joined = "".join(strs)
        if "\x00" in joined:
            return False
        if not joined.isascii():
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                return False
        return True

    return check


#: the most characters a column check joins into one string
_JOIN_LIMIT = 1 << 22


def _types_column(*types: type) -> _ColumnCheck:
    allowed: frozenset[type] = frozenset({*types, _NONE})

    def check(values: Sequence[Any]) -> bool:
        return set(map(type, values)) <= allowed

    return check


def _column_checker(type_: sqltypes.TypeEngine[Any]) -> _ColumnCheck | None:
    """The whole-column form of :func:`_checker` (``None``: values are checked one by one)."""
    if isinstance(type_, (sqltypes.TypeDecorator, sqltypes.Enum)):
        return None
    if isinstance(type_, sqltypes.String):
        return _str_column(type_.length)
    if isinstance(type_, sqltypes.Boolean):
        return _types_column(bool)
    if isinstance(type_, sqltypes.BigInteger):
        return _int_column(64)
    if isinstance(type_, sqltypes.SmallInteger):
        return _int_column(16)
    if isinstance(type_, sqltypes.Integer):
        return _int_column(32)
    if isinstance(type_, sqltypes.Float):
        return _types_column(float, int)
    return None


class ModelValidator:
    """The checks of one mapped class (attribute key -> check), built once."""

    __slots__ = ("checks", "column_checks", "name")

    def __init__(self, info: ModelInfo[Any]) -> None:
        self.name = info.name
        self.checks: dict[str, _Check] = {}
        self.column_checks: dict[str, _ColumnCheck] = {}
        for key, column in info.columns.items():
            check = _checker(column.type)
            if check is not None:
                self.checks[key] = check
                column_check = _column_checker(column.type)
                if column_check is not None:
                    self.column_checks[key] = column_check

    def _error(self, key: str, refused: _Refused, row: int | None) -> ColumnValueError:
        where = f" (row {row})" if row is not None else ""
        return ColumnValueError(f"{self.name}.{key}{where}: {refused}", model=self.name, field=key)

    def check_row(self, row: Mapping[str, Any]) -> None:
        """Check the values of one row (attribute key -> value); unknown keys are ignored."""
        checks = self.checks
        key = ""
        try:
            for key, value in row.items():
                check = checks.get(key)
                if check is not None:
                    check(value)
        except _Refused as refused:
            raise self._error(key, refused, None) from None

    def check_rows(self, rows: Iterable[Mapping[str, Any]], first: int = 0) -> None:
        """Check many rows in one pass; the error names the row's position as well (*first*:
        the first row's)."""
        checks = self.checks
        if not checks:
            return
        get = checks.get
        position, key = 0, ""
        try:
            for position, row in enumerate(rows, first):  # noqa: B007 - read in the handler
                for key, value in row.items():
                    check = get(key)
                    if check is not None:
                        check(value)
        except _Refused as refused:
            raise self._error(key, refused, position) from None

    def check_columns(
        self, keys: Sequence[str], columns: Sequence[Sequence[Any]], first: int = 0
    ) -> None:
        """Check column-major values (``columns[i]`` holds the values of ``keys[i]``, one per
        row): the rules of :meth:`check_rows`, a whole column at a time where the values allow
        it; the error names the row's position as well (*first*: the first row's)."""
        checks = self.checks
        for key, values in zip(keys, columns, strict=True):
            check = checks.get(key)
            if check is None:
                continue
            column_check = self.column_checks.get(key)
            if column_check is not None and column_check(values):
                continue
            position = first
            try:
                for position, value in enumerate(values, first):  # noqa: B007 - in the handler
                    check(value)
            except _Refused as refused:
                raise self._error(key, refused, position) from None

    def check_object(self, obj: Any) -> None:
        """Check the column values held by a model instance (those it has loaded or been given)."""
        self.check_row(instance_state(obj).dict)

    def check_objects(self, objects: Iterable[Any], first: int = 0) -> None:
        self.check_rows((instance_state(obj).dict for obj in objects), first)


_validators: dict[Mapper[Any], ModelValidator] = {}
_lock = threading.Lock()


def validator(info: ModelInfo[Any]) -> ModelValidator:
    """The cached :class:`ModelValidator` of *info*'s mapped class."""
    found = _validators.get(info.mapper)
    if found is None:
        with _lock:
            found = _validators.get(info.mapper)
            if found is None:
                found = _validators[info.mapper] = ModelValidator(info)
    return found
