"""Declarative bases and column mixins.

* :class:`Base` (plain declarative) and :class:`DataclassBase` (``MappedAsDataclass``), with a
  constraint :data:`NAMING_CONVENTION`, repom type annotations and ``to_dict()``.
* :class:`TimestampMixin`, :class:`SoftDeleteMixin`, :class:`VersionMixin`,
  :class:`UUIDPrimaryKeyMixin`, :class:`IntegerPrimaryKeyMixin`: for both bases.
* Soft delete helpers: :func:`soft_delete`, :func:`restore`, :func:`include_deleted`, ...
* :func:`unique_live`: a unique index among rows that are not soft-deleted.
* :class:`RepomSession`: stale versions raise :class:`repom.exceptions.ConflictError` at flush.

See ``docs/models.md``.
"""

from repom.models.base import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Base,
    DataclassBase,
    ModelMixin,
    new_metadata,
)
from repom.models.mixins import (
    IntegerPrimaryKeyMixin,
    SoftDeleteMixin,
    TimestampMixin,
    UUIDPrimaryKeyMixin,
    VersionMixin,
    timestamp_update_values,
)
from repom.models.session import RepomSession
from repom.models.soft_delete import (
    INCLUDE_DELETED,
    include_deleted,
    install_soft_delete_filter,
    not_deleted,
    restore,
    restore_values,
    soft_delete,
    soft_delete_values,
)
from repom.models.unique import is_live_index, unique_live
from repom.types import sql_utcnow, utcnow, uuid7

__all__ = [
    "INCLUDE_DELETED",
    "NAMING_CONVENTION",
    "TYPE_ANNOTATION_MAP",
    "Base",
    "DataclassBase",
    "IntegerPrimaryKeyMixin",
    "ModelMixin",
    "RepomSession",
    "SoftDeleteMixin",
    "TimestampMixin",
    "UUIDPrimaryKeyMixin",
    "VersionMixin",
    "include_deleted",
    "install_soft_delete_filter",
    "is_live_index",
    "new_metadata",
    "not_deleted",
    "restore",
    "restore_values",
    "soft_delete",
    "soft_delete_values",
    "sql_utcnow",
    "timestamp_update_values",
    "unique_live",
    "utcnow",
    "uuid7",
]
