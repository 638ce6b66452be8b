"""``Base`` and ``DataclassBase``: declarative bases with a constraint naming convention."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import MetaData
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import DeclarativeBase, MappedAsDataclass, Mapper, registry

from repom.types import JSONBType, UTCDateTime, UUIDType

__all__ = [
    "NAMING_CONVENTION",
    "TYPE_ANNOTATION_MAP",
    "Base",
    "DataclassBase",
    "ModelMixin",
    "new_metadata",
]

#: Stable constraint names, so Alembic can find (and drop) what it created.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Python annotations mapped to repom types: ``Mapped[datetime]`` is an aware-UTC
#: ``UTCDateTime``, ``Mapped[uuid.UUID]`` a ``UUIDType``, ``Mapped[dict[str, Any]]`` JSONB.
TYPE_ANNOTATION_MAP: dict[Any, Any] = {
    datetime: UTCDateTime(),
    uuid.UUID: UUIDType(),
    dict[str, Any]: JSONBType(),
}


def new_metadata() -> MetaData:
    """A ``MetaData`` with :data:`NAMING_CONVENTION` (for a base class of your own)."""
    return MetaData(naming_convention=NAMING_CONVENTION)


class ModelMixin:
    """``to_dict()`` and a ``repr`` that never loads anything (``<User id=3>``; dataclass
    models keep their dataclass ``repr``); part of both bases and of bases of your own."""

    def to_dict(self, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """Column attributes as ``{attribute: value}`` (relationships are not included).

        Reads attributes normally: an expired attribute is loaded (sync), as any attribute
        access would do.
        """
        excluded = set(exclude)
        mapper = cast("Mapper[Any]", sa_inspect(type(self)))
        return {
            prop.key: getattr(self, prop.key)
            for prop in mapper.column_attrs
            if prop.key not in excluded
        }

    def __repr__(self) -> str:
        return _identity_repr(self)


def _identity_repr(obj: Any) -> str:
    """``<User id=3>`` from the identity (or the unflushed key): never triggers a load."""
    state = sa_inspect(obj)
    mapper = state.mapper
    keys = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
    values = state.identity if state.identity is not None else [state.dict.get(k) for k in keys]
    inner = " ".join(f"{k}={v!r}" for k, v in zip(keys, values, strict=False))
    return f"<{type(obj).__name__} {inner}>"


_registry = registry(metadata=new_metadata(), type_annotation_map=TYPE_ANNOTATION_MAP)


class Base(ModelMixin, DeclarativeBase):
    """Declarative base: naming convention, repom type annotations, ``to_dict()``.

    ``Base`` and :class:`DataclassBase` share one ``MetaData`` (``Base.metadata``), so a single
    Alembic ``target_metadata`` covers models of both styles.
    """

    registry = _registry


class DataclassBase(ModelMixin, MappedAsDataclass, DeclarativeBase):
    """Like :class:`Base`, and every model is also a dataclass (the original guides' ``Base``).

    repom's mixin columns are ``init=False`` (set by defaults, not by the constructor), except
    ``UUIDPrimaryKeyMixin.id``: an optional keyword-only argument.
    """

    registry = _registry
