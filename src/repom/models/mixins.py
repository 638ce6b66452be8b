"""Column mixins that work with both ``Base`` (plain declarative) and ``DataclassBase``.

A mixin adds its columns to each concrete model when the model class is created
(``__init_subclass__``), as ``mapped_column()`` objects of the model itself: plain models get
plain columns, dataclass models get ``init=False`` fields.  List the mixins *before* the base
(``class User(TimestampMixin, Base)``), as usual for declarative mixins.  A column the model (or a
mapped parent class) already defines is left alone, so any column can be overridden.

All defaults are computed in Python (and also declared as server defaults for rows written by
other clients): after a flush every value is known, and no refresh ``SELECT`` is ever needed.
"""

from __future__ import annotations

import inspect
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import BigInteger, Boolean, Identity, Integer, event, false, text
from sqlalchemy import column as sql_column
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import (
    DeclarativeBase,
    DeclarativeBaseNoMeta,
    Mapped,
    MappedAsDataclass,
    ORMExecuteState,
    Session,
    configure_mappers,
    mapped_column,
    with_loader_criteria,
)
from sqlalchemy.orm.properties import MappedColumn

from repom.types import UTCDateTime, UUIDType, sql_utcnow, utcnow, uuid7

__all__ = [
    "IntegerPrimaryKeyMixin",
    "SoftDeleteMixin",
    "TimestampMixin",
    "UUIDPrimaryKeyMixin",
    "VersionMixin",
    "timestamp_update_values",
]

#: ``factory(is_dataclass) -> (annotation, mapped_column)``
ColumnFactory = Callable[[bool], tuple[Any, MappedColumn[Any]]]

# column order in CREATE TABLE: key first, the model's own columns, then bookkeeping columns
_ORDER_PK = -100
_ORDER_TAIL = 100
_LEADING = frozenset({"id"})  # annotation (dataclass field) order follows the same rule


class _Placeholder:
    """A class-level stand-in for a mixin column, seen only on the mixin class itself.

    ``with_loader_criteria(SoftDeleteMixin, lambda cls: cls.is_deleted == false())`` inspects
    the lambda against the mixin; models get real mapped attributes that shadow this.
    """

    def __init__(self, name: str, type_: Any) -> None:
        self.expression = sql_column(name, type_)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self.expression


class ColumnMixin:
    """Base of repom's column mixins: injects ``_repom_columns`` into each concrete model."""

    #: ``{attribute: factory}``; a factory receives whether the model is a dataclass and
    #: returns ``(annotation, mapped_column)``.
    _repom_columns: ClassVar[dict[str, ColumnFactory]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        _inject_columns(cls)
        super().__init_subclass__(**kwargs)

    @classmethod
    def _repom_mapper_args(cls, columns: dict[str, MappedColumn[Any]]) -> dict[str, Any]:
        return {}


def _is_model(cls: type) -> bool:
    """A class declarative will map (not a base, not abstract, not a plain mixin)."""
    if getattr(cls, "_sa_registry", None) is None:  # a mixin, or a base being created
        return False
    if DeclarativeBase in cls.__bases__ or DeclarativeBaseNoMeta in cls.__bases__:
        return False
    return not cls.__dict__.get("__abstract__", False)


def _inject_columns(cls: type[ColumnMixin]) -> None:
    if not _is_model(cls):
        return
    if "__mapper__" in cls.__dict__ or "_sa_class_manager" in cls.__dict__:
        raise TypeError(  # declarative already mapped it: the mixin was listed after the base
            f"{cls.__name__}: list repom mixins before the declarative base "
            f"(class {cls.__name__}(TimestampMixin, Base): ...)"
        )
    is_dataclass = issubclass(cls, MappedAsDataclass)
    own = dict(inspect.get_annotations(cls))
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    created: dict[str, MappedColumn[Any]] = {}
    for klass in reversed(cls.__mro__):
        factories = klass.__dict__.get("_repom_columns")
        if not factories:
            continue
        for name, factory in factories.items():
            if name in own or name in created or _defined(cls, name):
                continue  # defined by the model or a mapped parent: theirs wins
            annotation, column = factory(is_dataclass)
            setattr(cls, name, column)
            created[name] = column
            (first if name in _LEADING else last)[name] = annotation
    if not created:
        return
    cls.__annotations__ = {**first, **own, **last}
    extra: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        hook = klass.__dict__.get("_repom_mapper_args")  # a classmethod object
        if hook is not None:
            extra.update(hook.__func__(cls, created))
    if extra:
        args = _find_mapper_args(cls)
        for key, value in extra.items():
            args.setdefault(key, value)
        cls.__mapper_args__ = args  # type: ignore[attr-defined]


def _defined(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return not isinstance(klass.__dict__[name], _Placeholder)
    return False


def _find_mapper_args(cls: type) -> dict[str, Any]:
    for klass in cls.__mro__:
        if "__mapper_args__" in klass.__dict__:
            found = klass.__dict__["__mapper_args__"]
            if isinstance(found, dict):
                return dict(found)
            raise TypeError(
                f"{cls.__name__}: repom mixins need __mapper_args__ to be a dict; merge "
                "VersionMixin's {'version_id_col': ...} into your declared_attr yourself"
            )
    return {}


def _column(*args: Any, dataclass: bool, sort_order: int, **kwargs: Any) -> MappedColumn[Any]:
    """``mapped_column()``; dataclass models get ``init=False`` unless *kwargs* say otherwise."""
    if dataclass and "kw_only" not in kwargs:
        kwargs["init"] = False
    elif not dataclass:
        for name in ("default_factory", "kw_only"):
            kwargs.pop(name, None)
    return mapped_column(*args, sort_order=sort_order, **kwargs)


# --------------------------------------------------------------------------- timestamps


def _updated_at_default(context: DefaultExecutionContext) -> datetime:
    """On INSERT ``updated_at`` equals ``created_at`` (same statement, same instant)."""
    parameters: dict[str, Any] = context.get_current_parameters()  # type: ignore[no-untyped-call]
    created = parameters.get("created_at")
    return created if isinstance(created, datetime) else utcnow()


class TimestampMixin(ColumnMixin):
    """``created_at`` / ``updated_at``: aware UTC (:class:`repom.types.UTCDateTime`), not null.

    Set in Python on INSERT (``updated_at == created_at``) and on every ORM UPDATE of the row
    (``onupdate``; Core/bulk ``update()`` statements get it too, or use
    :func:`timestamp_update_values`); server default ``sql_utcnow()`` for other writers.
    """

    if TYPE_CHECKING:
        created_at: Mapped[datetime]
        updated_at: Mapped[datetime]

    _repom_columns: ClassVar[dict[str, ColumnFactory]] = {
        "created_at": lambda dc: (
            Mapped[datetime],
            _column(
                UTCDateTime(),
                nullable=False,
                insert_default=utcnow,
                server_default=sql_utcnow(),
                sort_order=_ORDER_TAIL,
                dataclass=dc,
            ),
        ),
        "updated_at": lambda dc: (
            Mapped[datetime],
            _column(
                UTCDateTime(),
                nullable=False,
                insert_default=_updated_at_default,
                onupdate=utcnow,
                server_default=sql_utcnow(),
                sort_order=_ORDER_TAIL + 1,
                dataclass=dc,
            ),
        ),
    }


def timestamp_update_values(model: type[Any]) -> dict[str, Any]:
    """``{"updated_at": now}`` for a :class:`TimestampMixin` model, else ``{}``.

    For bulk ``UPDATE`` statements built by hand (``update(Model).values(**data,
    **timestamp_update_values(Model))``); one timestamp for the whole statement.
    """
    if isinstance(model, type) and issubclass(model, TimestampMixin):
        return {"updated_at": utcnow()}
    return {}


# --------------------------------------------------------------------------- soft delete


class SoftDeleteMixin(ColumnMixin):
    """``is_deleted`` (bool, indexed, default false) and ``deleted_at`` (aware UTC or None).

    Every ORM ``SELECT`` hides deleted rows (joins, relationship loads and ``session.get``
    included) unless the statement has ``execution_options(include_deleted=True)`` (see
    :func:`repom.models.include_deleted`) or ``session.info["include_deleted"]`` is true.
    Use :func:`repom.models.soft_delete` / :func:`repom.models.restore` to change the flag.
    """

    if TYPE_CHECKING:
        is_deleted: Mapped[bool]
        deleted_at: Mapped[datetime | None]
    else:
        is_deleted = _Placeholder("is_deleted", Boolean())

    _repom_columns: ClassVar[dict[str, ColumnFactory]] = {
        "is_deleted": lambda dc: (
            Mapped[bool],
            _column(
                Boolean(),
                nullable=False,
                insert_default=False,
                server_default=false(),
                index=True,
                sort_order=_ORDER_TAIL + 2,
                dataclass=dc,
            ),
        ),
        "deleted_at": lambda dc: (
            Mapped[datetime | None],
            _column(UTCDateTime(), nullable=True, sort_order=_ORDER_TAIL + 3, dataclass=dc),
        ),
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_soft_delete_filter()


def _ready(target: Any) -> None:
    """Our ``init`` listeners can run before the mapper's own one (which configures mappers on
    the first construction): configure first so attribute assignment works."""
    if not sa_inspect(type(target)).configured:
        configure_mappers()


@event.listens_for(SoftDeleteMixin, "init", propagate=True)
def _soft_delete_init(target: Any, args: Any, kwargs: dict[str, Any]) -> None:
    if "is_deleted" not in kwargs:
        _ready(target)
        target.is_deleted = False


# --------------------------------------------------------------------------- optimistic locking


class VersionMixin(ColumnMixin):
    """``version`` (int, starts at 1) wired as the mapper's ``version_id_col``.

    Every ORM UPDATE/DELETE of the row adds ``WHERE version = <read version>`` and bumps it; a row
    changed by someone else since it was read raises :class:`repom.exceptions.ConflictError`
    (through :class:`repom.models.RepomSession`; a plain ``Session`` raises SQLAlchemy's
    ``StaleDataError``, the base class of ``ConflictError``).  A model that defines its own
    ``__mapper_args__`` dict keeps it; ``version_id_col`` is merged in.
    """

    if TYPE_CHECKING:
        version: Mapped[int]

    _repom_columns: ClassVar[dict[str, ColumnFactory]] = {
        "version": lambda dc: (
            Mapped[int],
            _column(
                Integer(),
                nullable=False,
                server_default=text("1"),
                sort_order=_ORDER_TAIL + 4,
                dataclass=dc,
            ),
        ),
    }

    @classmethod
    def _repom_mapper_args(cls, columns: dict[str, MappedColumn[Any]]) -> dict[str, Any]:
        column = columns.get("version")
        return {"version_id_col": column.column} if column is not None else {}


# --------------------------------------------------------------------------- primary keys


class UUIDPrimaryKeyMixin(ColumnMixin):
    """``id``: a time-ordered UUID (version 7) primary key made in Python.

    The key exists as soon as the object is constructed (before any flush), so it can be used
    in links, events and related objects right away; it is also the column's insert default for
    Core/bulk inserts.  Pass ``id=`` to the constructor (keyword-only on dataclass models) or
    assign it to choose one.
    """

    if TYPE_CHECKING:
        id: Mapped[uuid.UUID]

    _repom_columns: ClassVar[dict[str, ColumnFactory]] = {
        "id": lambda dc: (
            Mapped[uuid.UUID],
            _column(
                UUIDType(),
                primary_key=True,
                insert_default=uuid7,
                default_factory=uuid7,  # dataclass models: ``id`` is an optional keyword
                kw_only=True,
                sort_order=_ORDER_PK,
                dataclass=dc,
            ),
        ),
    }


@event.listens_for(UUIDPrimaryKeyMixin, "init", propagate=True)
def _uuid_init(target: Any, args: Any, kwargs: dict[str, Any]) -> None:
    if isinstance(target, MappedAsDataclass):
        return  # the dataclass ``__init__`` calls ``default_factory=uuid7``
    if kwargs.get("id") is None:
        kwargs.pop("id", None)
        _ready(target)
        target.id = uuid7()


class IntegerPrimaryKeyMixin(ColumnMixin):
    """``id``: a 64-bit identity primary key (``BIGINT GENERATED BY DEFAULT AS IDENTITY`` on
    PostgreSQL, ``BIGINT AUTO_INCREMENT`` on MySQL, ``INTEGER PRIMARY KEY`` on SQLite)."""

    if TYPE_CHECKING:
        id: Mapped[int]

    _repom_columns: ClassVar[dict[str, ColumnFactory]] = {
        "id": lambda dc: (
            Mapped[int],
            _column(
                BigInteger().with_variant(Integer(), "sqlite"),
                Identity(),
                primary_key=True,
                sort_order=_ORDER_PK,
                dataclass=dc,
            ),
        ),
    }


# --------------------------------------------------------------------------- soft-delete filter

#: the execution option / ``session.info`` key that turns the filter off
INCLUDE_DELETED = "include_deleted"

_CRITERIA = with_loader_criteria(
    SoftDeleteMixin,
    lambda cls: cls.is_deleted == false(),
    include_aliases=True,
    track_closure_variables=False,
)

_lock = threading.Lock()


def _filter_deleted(state: ORMExecuteState) -> None:
    if not state.is_select or state.is_column_load:
        return
    if state.execution_options.get(INCLUDE_DELETED) or state.session.info.get(INCLUDE_DELETED):
        return
    statement = state.statement
    if _CRITERIA in getattr(statement, "_with_options", ()):
        return  # a lazy load that inherited the criteria from the query that loaded its parent
    state.statement = statement.options(_CRITERIA)


def install_soft_delete_filter() -> None:
    """Install the listener on ``Session`` (idempotent; done when a soft-delete model is
    defined)."""
    if event.contains(Session, "do_orm_execute", _filter_deleted):
        return
    with _lock:
        if not event.contains(Session, "do_orm_execute", _filter_deleted):
            event.listen(Session, "do_orm_execute", _filter_deleted)
