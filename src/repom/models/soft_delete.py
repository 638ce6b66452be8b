"""Soft-delete filtering for every ORM ``SELECT``, and the helpers that flip the flag.

One ``do_orm_execute`` listener on the ``Session`` class (so sessions from
:mod:`repom.database`, ``AsyncSession`` and plain sessions alike) adds
``with_loader_criteria(SoftDeleteMixin, is_deleted = false, include_aliases=True)`` to every ORM
``SELECT``.  The criteria reach joined and aliased entities, eager loads and lazy loads.  Not
filtered: attribute refreshes (reloading an object you hold), statements with
``execution_options(include_deleted=True)`` (their eager loads too), and sessions with
``session.info["include_deleted"] = True``.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import event, false
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.base import Executable

from repom.models.mixins import SoftDeleteMixin
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

#: the execution option / ``session.info`` key that turns the filter off
INCLUDE_DELETED = "include_deleted"

E = TypeVar("E", bound=Executable)

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
