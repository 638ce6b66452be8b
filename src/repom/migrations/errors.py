"""Errors raised by :mod:`repom.migrations` (all are :class:`repom.exceptions.RepomError`)."""

from __future__ import annotations

from collections.abc import Sequence

from repom.exceptions import ConfigurationError, RepomError

__all__ = [
    "DatabaseNotUpToDate",
    "MigrationError",
    "ModelsError",
    "NoMigrationFolderError",
]


class MigrationError(RepomError):
    """A migration command could not do what was asked (unknown revision, bad state, ...)."""


class NoMigrationFolderError(MigrationError, ConfigurationError):
    """There is no Alembic configuration or migration folder where repom looked."""


class ModelsError(ConfigurationError):
    """The models module is not configured, cannot be imported, or has no unique MetaData."""


class DatabaseNotUpToDate(MigrationError):
    """The database is not at the head revision, so models and schema cannot be compared."""

    def __init__(self, message: str, *, current: Sequence[str], heads: Sequence[str]) -> None:
        super().__init__(message)
        self.current = tuple(current)
        self.heads = tuple(heads)
