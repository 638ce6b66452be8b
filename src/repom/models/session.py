"""``RepomSession``: a ``Session`` that raises ``ConflictError`` for stale versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from repom.exceptions import ConflictError, translate

__all__ = ["RepomSession"]


class RepomSession(Session):
    """A ``Session`` that reports optimistic-lock conflicts as
    :class:`repom.exceptions.ConflictError` instead of SQLAlchemy's ``StaleDataError`` (its base
    class, so existing ``except StaleDataError`` clauses still match).

    Covers ``flush()`` (explicit, autoflush, and the flush inside ``commit()``) and ORM bulk
    ``UPDATE`` by primary key through ``execute()``.  Use it as
    ``sessionmaker(class_=RepomSession)`` or
    ``async_sessionmaker(sync_session_class=RepomSession)``.
    """

    def flush(self, objects: Sequence[Any] | None = None) -> None:
        try:
            super().flush(objects)
        except StaleDataError as exc:
            raise _conflict(exc) from exc

    if not TYPE_CHECKING:  # keep Session.execute's precise overloads for type checkers

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().execute(*args, **kwargs)
            except StaleDataError as exc:
                raise _conflict(exc) from exc


def _conflict(exc: StaleDataError) -> BaseException:
    return exc if isinstance(exc, ConflictError) else translate(exc)
