"""Ordered isolation scenarios, run as a real pytest session: every test of the inner project
starts empty, and nothing it commits, rolls back, nests, fails or requests survives it."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from tests.testing._project import INI, SCENARIO_COUNT, scenario_files, unique_schema


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_ordered_scenarios_leave_nothing_behind(
    pytester: pytest.Pytester, db_url: str, flavour: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(**scenario_files(flavour))
    args = ["-p", "no:randomly", "-q"]
    schema = None
    if db_url.startswith("postgresql"):
        schema = unique_schema("rt6_scen")
        args += ["--repom-db-url", db_url, "--repom-schema", schema]
    else:
        args += ["--repom-db-url", db_url]
    result = pytester.runpytest_subprocess(*args)  # a fresh process, as a user runs it
    result.assert_outcomes(passed=SCENARIO_COUNT)

    # the session's teardown dropped what it created
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if schema is not None:
                found = conn.scalar(
                    text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": schema}
                )
                assert found == 0
            else:
                assert "rt6_item" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()
