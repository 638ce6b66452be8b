"""The tests of repom.testing: small pytest projects run with pytester (see _project.py), and
repom's own fixtures used directly, on SQLite and PostgreSQL, sync and async."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.testing import create_async_test_fixtures, create_test_fixtures
from tests.support import require_postgres


class DirectBase(DeclarativeBase):
    pass


class DirectItem(DirectBase):
    __tablename__ = "rt6_direct_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


def _fixtures(factory, name, **options):  # type: ignore[no-untyped-def]
    return factory(
        metadata=DirectBase.metadata,
        engine_fixture=f"{name}_engine",
        session_fixture=name,
        **options,
    )


# SQLite: the default file in pytest's temporary directory.  PostgreSQL: a schema of its own
# (per xdist worker); require_postgres() skips locally / fails in CI when the server is down.
rt6_sqlite_engine, rt6_sqlite = _fixtures(create_test_fixtures, "rt6_sqlite")
rt6_async_sqlite_engine, rt6_async_sqlite = _fixtures(
    create_async_test_fixtures, "rt6_async_sqlite"
)
rt6_pg_engine, rt6_pg = _fixtures(
    create_test_fixtures, "rt6_pg", db_url=require_postgres, schema="rt6_direct"
)
rt6_async_pg_engine, rt6_async_pg = _fixtures(
    create_async_test_fixtures, "rt6_async_pg", db_url=require_postgres, schema="rt6_direct_async"
)
