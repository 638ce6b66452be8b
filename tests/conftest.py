"""Shared test infrastructure (see tests/support/ for the helpers).

Databases: SQLite (a file per test, so a second engine can read what the first wrote) and
PostgreSQL at ``REPOM_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
With ``CI=true`` a PostgreSQL test that cannot connect fails; elsewhere it is skipped.
"""

pytest_plugins = ["tests.support.fixtures", "pytester"]
