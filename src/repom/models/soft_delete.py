"""The soft-delete helpers that flip the flag, and the filter for every ORM ``SELECT`` (the
filter lives beside :class:`~repom.models.mixins.SoftDeleteMixin`, which installs it).

One ``do_orm_execute`` listener on the ``Session`` class (so sessions from
:mod:`repom.database`, ``AsyncSession`` and plain sessions alike) adds
``with_loader_criteria(SoftDeleteMixin, is_deleted = false, include_aliases=True)`` to every ORM
``SELECT``.  The criteria reach joined and aliased entities, eager loads and lazy loads.  Not
filtered: attribute refreshes (reloading an object you hold), statements with
``execution_options(include_deleted=True)`` (their eager loads too), and sessions with
``session.info["include_deleted"] = True``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import false
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.base import Executable

from repom.models.mixins import INCLUDE_DELETED, SoftDeleteMixin, install_soft_delete_filter
from repom.types import utcnow

__all__ = [
    "INCLUDE_DELETED",
    "include_deleted",
    "install_soft_delete_filter",
    "not_deleted",
    "restore",
    "restore_values",
    "soft_delete",
    "soft_delete_values",
]

E = TypeVar("E", bound=Executable)


def include_deleted(statement: E) -> E:
    """*statement* with soft-deleted rows included (``execution_options(include_deleted=True)``)."""
    return statement.execution_options(**{INCLUDE_DELETED: True})


def not_deleted(model: type[SoftDeleteMixin]) -> ColumnElement[bool]:
    """``model.is_deleted = false`` for Core statements (``update``/``delete`` are not filtered)."""
    return model.is_deleted == false()


def _check(obj: Any, action: str) -> SoftDeleteMixin:
    if not isinstance(obj, SoftDeleteMixin):
        raise TypeError(f"{action}() needs a SoftDeleteMixin model instance, got {type(obj)!r}")
    return obj


def soft_delete(obj: Any, *, at: datetime | None = None) -> None:
    """Mark *obj* deleted (``is_deleted=True``, ``deleted_at=at or now``).

    Only sets attributes: flushing and committing are the caller's (transaction owner's) job.
    Deleting an already deleted object keeps its first ``deleted_at``.
    """
    target = _check(obj, "soft_delete")
    if target.is_deleted:
        return
    target.is_deleted = True
    target.deleted_at = at if at is not None else utcnow()


def restore(obj: Any) -> None:
    """Undo :func:`soft_delete` (``is_deleted=False``, ``deleted_at=None``); no flush."""
    target = _check(obj, "restore")
    target.is_deleted = False
    target.deleted_at = None


def soft_delete_values() -> dict[str, Any]:
    """``SET`` values for a bulk soft delete: ``update(Model).values(**soft_delete_values())``."""
    return {"is_deleted": True, "deleted_at": utcnow()}


def restore_values() -> dict[str, Any]:
    """``SET`` values for a bulk restore."""
    return {"is_deleted": False, "deleted_at": None}
