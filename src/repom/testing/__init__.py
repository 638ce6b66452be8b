"""Testing support: every test runs in a transaction that is rolled back, app sessions included.

In a ``conftest.py``::

    from repom.testing import create_async_test_fixtures, create_test_fixtures

    db_engine, db_test = create_test_fixtures()
    async_db_engine, async_db_test = create_async_test_fixtures()

repom's pytest plugin (loaded automatically) already provides these fixtures, plus
``repom_client``, ``repom_async_client``, ``query_counter`` and ``assert_max_queries``; see
``docs/testing.md``.  :class:`IsolatedDatabase` / :class:`AsyncIsolatedDatabase` do the same
without pytest, and :func:`capture_on_commit_callbacks` collects ``on_commit`` callbacks.

Importing this package is cheap (pytest imports it at start-up): the pieces that need SQLAlchemy
are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repom.testing.fixtures import (
        create_async_test_fixtures,
        create_test_fixtures,
        resolve_metadata,
    )
    from repom.testing.isolation import AsyncIsolatedDatabase, IsolatedDatabase, SchemaPlan
    from repom.testing.on_commit import OnCommitCapture, capture_on_commit_callbacks

_LAZY = {
    "create_test_fixtures": "repom.testing.fixtures",
    "create_async_test_fixtures": "repom.testing.fixtures",
    "resolve_metadata": "repom.testing.fixtures",
    "IsolatedDatabase": "repom.testing.isolation",
    "AsyncIsolatedDatabase": "repom.testing.isolation",
    "SchemaPlan": "repom.testing.isolation",
    "capture_on_commit_callbacks": "repom.testing.on_commit",
    "OnCommitCapture": "repom.testing.on_commit",
}

__all__ = [
    "AsyncIsolatedDatabase",
    "IsolatedDatabase",
    "OnCommitCapture",
    "SchemaPlan",
    "capture_on_commit_callbacks",
    "create_async_test_fixtures",
    "create_test_fixtures",
    "resolve_metadata",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'repom.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
