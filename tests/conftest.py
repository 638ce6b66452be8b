"""Shared test infrastructure (see tests/support/ for the helpers).

Databases: SQLite (a file per test, so a second engine can read what the first wrote) and
PostgreSQL at ``REPOM_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
With ``CI=true`` a PostgreSQL test that cannot connect fails; elsewhere it is skipped.

The suite also runs on the compatibility locks (``./run compat``).  A test module that needs a
package one of those stacks cannot install is skipped there, with the reason (``_NEEDS``).
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures", "pytester"]

# test module -> (the module it imports, why a supported stack may not have it)
_NEEDS = {
    "tests/fastapi/test_fastapi_users.py": (
        "fastapi_users_db_sqlalchemy",
        "fastapi-users-db-sqlalchemy is not installed: its 7.x releases require SQLAlchemy < 2.1",
    ),
}
_ROOT = Path(__file__).resolve().parent.parent


class _Unavailable(pytest.Module):
    reason = ""

    def collect(self) -> list[pytest.Item]:
        pytest.skip(self.reason)


def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    need = _NEEDS.get(str(module_path).removeprefix(f"{_ROOT}/"))
    if need is None or find_spec(need[0]) is not None:
        return None
    module = _Unavailable.from_parent(parent, path=module_path)
    module.reason = need[1]
    return module
