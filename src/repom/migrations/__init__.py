"""Alembic migrations the repom way: templates shipped in the package, settings from repom.

* :func:`init_project` writes ``alembic.ini`` and a migration folder whose ``env.py`` delegates to
  :mod:`repom.migrations.env` (URL from :func:`repom.config.get_config`, metadata from the
  configured models module).
* :class:`Migrations` runs the commands (``revision``, ``upgrade``, ``downgrade``, ``stamp``,
  ``current``, ``heads``, ``history``, ``check``) from Python; the ``repom db`` CLI uses it.
* :func:`create_database` / :func:`drop_database` for development databases.

Nothing here is imported with ``repom`` itself; Alembic is needed only once a command runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repom.migrations.admin import create_database, database_info, drop_database
    from repom.migrations.commands import (
        AppliedStep,
        Migrations,
        RevisionInfo,
        RevisionResult,
        describe_diff,
        init_project,
        template_path,
    )
    from repom.migrations.errors import (
        DatabaseNotUpToDate,
        MigrationError,
        ModelsError,
        NoMigrationFolderError,
    )
    from repom.migrations.models import LoadedModels, load_models
    from repom.migrations.project import ProjectSettings, alembic_config, find_project

_LAZY = {
    "create_database": "repom.migrations.admin",
    "database_info": "repom.migrations.admin",
    "drop_database": "repom.migrations.admin",
    "AppliedStep": "repom.migrations.commands",
    "Migrations": "repom.migrations.commands",
    "RevisionInfo": "repom.migrations.commands",
    "RevisionResult": "repom.migrations.commands",
    "describe_diff": "repom.migrations.commands",
    "init_project": "repom.migrations.commands",
    "template_path": "repom.migrations.commands",
    "DatabaseNotUpToDate": "repom.migrations.errors",
    "MigrationError": "repom.migrations.errors",
    "ModelsError": "repom.migrations.errors",
    "NoMigrationFolderError": "repom.migrations.errors",
    "LoadedModels": "repom.migrations.models",
    "load_models": "repom.migrations.models",
    "ProjectSettings": "repom.migrations.project",
    "alembic_config": "repom.migrations.project",
    "find_project": "repom.migrations.project",
}

__all__ = [
    "AppliedStep",
    "DatabaseNotUpToDate",
    "LoadedModels",
    "MigrationError",
    "Migrations",
    "ModelsError",
    "NoMigrationFolderError",
    "ProjectSettings",
    "RevisionInfo",
    "RevisionResult",
    "alembic_config",
    "create_database",
    "database_info",
    "describe_diff",
    "drop_database",
    "find_project",
    "init_project",
    "load_models",
    "template_path",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'repom.migrations' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
