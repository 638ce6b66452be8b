"""What a repository needs to know about a mapped class, computed once per class.

Features are detected from the mapping itself, so a model works whether or not it uses repom's
mixins: soft delete when it has an ``is_deleted`` (or only a ``deleted_at``) column, optimistic
locking when the mapper has a ``version_id_col``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Column, Table, inspect
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import ColumnProperty, InstrumentedAttribute, Mapper, RelationshipProperty
from sqlalchemy.sql.elements import ColumnElement

from repom.exceptions import ConfigurationError

__all__ = ["ModelInfo", "model_info"]

M = TypeVar("M")


@dataclass(eq=False)
class ModelInfo(Generic[M]):
    """Introspection results for one mapped class (cached; see :func:`model_info`)."""

    model: type[M]
    mapper: Mapper[M]
    name: str
    #: attribute key -> the mapped attribute (``User.email``) for every single-column attribute
    attributes: dict[str, InstrumentedAttribute[Any]]
    #: attribute key -> its table column
    columns: dict[str, Column[Any]]
    #: primary-key attribute keys, in key order
    pk_keys: tuple[str, ...]
    pk_attrs: tuple[InstrumentedAttribute[Any], ...]
    #: relationship name -> relationship property
    relationships: dict[str, RelationshipProperty[Any]]
    #: the one table of a single-table mapping (``None`` for joined inheritance etc.)
    table: Table | None
    soft_delete_key: str | None  # ``is_deleted`` (bool flag)
    deleted_at_key: str | None  # ``deleted_at`` (timestamp)
    version_key: str | None
    #: attribute keys that may be written by create/update (columns and relationships)
    writable: frozenset[str]
    #: attribute keys of dataclass ``init=False`` fields (set after construction)
    no_init: frozenset[str]
    #: sets of attribute keys that a unique constraint/index/primary key covers
    unique_sets: tuple[frozenset[str], ...]
    #: the column attribute keys, as a set
    column_keys: frozenset[str]
    #: attribute key -> the column type's Python type (``None`` when the type does not say)
    python_types: dict[str, type[Any] | None]
    #: reads are already filtered by repom.models' soft-delete listener (SoftDeleteMixin)
    filtered_by_listener: bool
    _col_to_key: dict[Any, str] = field(default_factory=dict)

    @property
    def soft_delete(self) -> bool:
        return self.soft_delete_key is not None or self.deleted_at_key is not None

    @property
    def single_pk(self) -> bool:
        return len(self.pk_keys) == 1

    def key_for_column(self, column: Any) -> str | None:
        return self._col_to_key.get(column)

    def not_deleted(self) -> ColumnElement[bool] | None:
        """The criterion that hides soft-deleted rows (``None`` without soft delete)."""
        if self.soft_delete_key is not None:
            return self.attributes[self.soft_delete_key].is_(False)
        if self.deleted_at_key is not None:
            return self.attributes[self.deleted_at_key].is_(None)
        return None

    def identity_of(self, obj: Any) -> tuple[Any, ...]:
        return tuple(getattr(obj, key) for key in self.pk_keys)

    def pk_value(self, identity: tuple[Any, ...]) -> Any:
        """What ``get_by_id`` accepts for *identity* (scalar for a one-column key)."""
        return identity[0] if len(identity) == 1 else identity


_cache: dict[type[Any], ModelInfo[Any]] = {}
_lock = threading.Lock()


def model_info(model: type[M]) -> ModelInfo[M]:
    """The cached :class:`ModelInfo` of *model*; ``ConfigurationError`` when it is not mapped."""
    info = _cache.get(model)
    if info is None:
        with _lock:
            info = _cache.get(model)
            if info is None:
                info = _build(model)
                _cache[model] = info
    return info


def _build(model: type[M]) -> ModelInfo[M]:
    if not isinstance(model, type):
        raise ConfigurationError(f"a repository needs a mapped class, got {model!r}")
    try:
        mapper = cast("Mapper[M]", inspect(model))
    except NoInspectionAvailable:
        raise ConfigurationError(
            f"{model.__name__} is not a mapped class (declare it with a DeclarativeBase)"
        ) from None
    attributes: dict[str, InstrumentedAttribute[Any]] = {}
    columns: dict[str, Column[Any]] = {}
    col_to_key: dict[Any, str] = {}
    for prop in mapper.column_attrs:
        if len(prop.columns) != 1 or not isinstance(prop, ColumnProperty):
            continue
        col = prop.columns[0]
        if not isinstance(col, Column):
            continue  # column_property(select ...) and other expressions: read-only
        attributes[prop.key] = getattr(model, prop.key)
        columns[prop.key] = col
        col_to_key[col] = prop.key
    pk_keys = tuple(mapper.get_property_by_column(col).key for col in mapper.primary_key)
    relationships = {rel.key: rel for rel in mapper.relationships}
    tables = [t for t in mapper.tables if isinstance(t, Table)]
    table = tables[0] if len(tables) == 1 and len(mapper.tables) == 1 else None

    def _flag(key: str) -> str | None:
        return key if key in columns else None

    soft_delete_key = _flag("is_deleted")
    deleted_at_key = _flag("deleted_at")
    version_key = None
    if mapper.version_id_col is not None:
        version_key = col_to_key.get(mapper.version_id_col)
    writable = frozenset(columns) | frozenset(relationships)
    no_init = frozenset(_dataclass_no_init(model))
    unique_sets = _unique_sets(mapper, col_to_key, pk_keys)
    return ModelInfo(
        model=model,
        mapper=mapper,
        name=model.__name__,
        attributes=attributes,
        columns=columns,
        pk_keys=pk_keys,
        pk_attrs=tuple(attributes[key] for key in pk_keys),
        relationships=relationships,
        table=table,
        soft_delete_key=soft_delete_key,
        deleted_at_key=deleted_at_key,
        version_key=version_key,
        writable=writable,
        no_init=no_init,
        unique_sets=unique_sets,
        column_keys=frozenset(columns),
        python_types={key: _python_type(col) for key, col in columns.items()},
        filtered_by_listener=_uses_soft_delete_mixin(model),
        _col_to_key=col_to_key,
    )


def _python_type(column: Column[Any]) -> type[Any] | None:
    try:
        py: type[Any] = column.type.python_type
    except (NotImplementedError, AttributeError):
        return None
    return py


def _uses_soft_delete_mixin(model: type[Any]) -> bool:
    """True for subclasses of ``repom.models.SoftDeleteMixin`` (whose ``do_orm_execute``
    listener hides deleted rows from every ORM SELECT).  Looked up in ``sys.modules`` only: a
    model that uses the mixin has imported it."""
    module = sys.modules.get("repom.models.mixins")
    mixin = getattr(module, "SoftDeleteMixin", None) if module is not None else None
    return isinstance(mixin, type) and issubclass(model, mixin)


def _dataclass_no_init(model: type[Any]) -> list[str]:
    fields: Mapping[str, Any] | None = getattr(model, "__dataclass_fields__", None)
    if not fields:
        return []
    return [name for name, f in fields.items() if not getattr(f, "init", True)]


def _unique_sets(
    mapper: Mapper[Any], col_to_key: dict[Any, str], pk_keys: Sequence[str]
) -> tuple[frozenset[str], ...]:
    found: list[frozenset[str]] = [frozenset(pk_keys)]
    for table in mapper.tables:
        if not isinstance(table, Table):
            continue
        for constraint in table.constraints:
            if constraint.__class__.__name__ == "UniqueConstraint":
                keys = [col_to_key.get(c) for c in constraint.columns]  # type: ignore[attr-defined]
                if all(keys):
                    found.append(frozenset(k for k in keys if k))
        for index in table.indexes:
            if index.unique:
                keys = [col_to_key.get(c) for c in index.columns]
                if keys and all(keys):
                    found.append(frozenset(k for k in keys if k))
        for col in table.columns:
            if col.unique and col in col_to_key:
                found.append(frozenset([col_to_key[col]]))
    unique: list[frozenset[str]] = []
    for item in found:
        if item and item not in unique:
            unique.append(item)
    return tuple(unique)
