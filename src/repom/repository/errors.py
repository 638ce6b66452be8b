"""Errors specific to repositories (all are :class:`repom.exceptions.RepomError` subclasses).

Filter, order, paging and cursor problems raise :class:`repom.exceptions.InvalidFilterError` /
:class:`repom.exceptions.InvalidCursorError`; a missing row raises
:class:`repom.exceptions.NotFoundError`; a stale version raises
:class:`repom.exceptions.ConflictError`.  The two classes below cover what is left: data that
names a field the model does not have, and an option with a value that is not allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from repom.exceptions import DataValidationError, RepomError

__all__ = ["InvalidOptionError", "UnknownFieldError"]


class UnknownFieldError(DataValidationError):
    """Data for ``create``/``update``/``bulk_*``/``upsert`` names a field the model does not have
    (or one that may not be written).  ``field`` names it, ``allowed`` lists the accepted ones."""

    def __init__(
        self, message: str, *, field: str | None = None, allowed: Sequence[str] | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.allowed = list(allowed) if allowed is not None else None


class InvalidOptionError(RepomError, ValueError):
    """A repository method got an option value it does not accept (``option`` names it)."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option
