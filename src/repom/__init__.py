"""repom: a SQLAlchemy 2.x data-access toolkit for Python services (sync and async).

Importing ``repom`` has no side effects: no ``.env`` is read, nothing connects, no file or
directory is created and greenlet is not needed until async code runs.  The submodules hold the
API (``repom.config``, ``repom.database``, ``repom.session``, ``repom.async_session``,
``repom.transactions``, ``repom.repository``, ``repom.models``, ``repom.types``, ...); the most used
names are also reachable here, imported on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RepomConfig": "repom.config",
    "get_config": "repom.config",
    "set_config": "repom.config",
    "Database": "repom.database",
    "AsyncDatabase": "repom.database",
    "get_database": "repom.database",
    "get_async_database": "repom.database",
    "transaction": "repom.transactions",
    "transactional": "repom.transactions",
    "Propagation": "repom.transactions",
    "IsolationLevel": "repom.transactions",
    "current_session": "repom.transactions",
    "on_commit": "repom.transactions",
    "Repository": "repom.repository",
    "PoolMonitor": "repom.monitoring",
    "QueryCounter": "repom.monitoring",
    "AsyncRepository": "repom.repository",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'repom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
