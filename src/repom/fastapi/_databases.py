"""Which databases an application uses: attached explicitly, or found in its routes.

The session dependencies resolve their database per request: the one attached to the application
(:func:`use_databases`, or :class:`~repom.fastapi.Lifespan` with ``database=``/``async_database=``),
else the module default (:func:`repom.database.get_database` / :func:`get_async_database`).  The
lifespan and the health router walk the routes' dependency trees to find every database the
application really uses, so they verify, report and dispose exactly those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from repom.database import AsyncDatabase, Database, get_async_database, get_database

__all__ = ["AppDatabases", "databases_in_use", "register_dependency", "use_databases"]

_STATE_ATTR = "repom_databases"

AnyDatabase = Database | AsyncDatabase


@dataclass
class AppDatabases:
    """The databases attached to one application (``None``: use the module default)."""

    database: Database | None = None
    async_database: AsyncDatabase | None = None


# dependency callable -> (is_async, explicit database or None for "the app's / the default")
_DEPENDENCIES: dict[Callable[..., Any], tuple[bool, AnyDatabase | None]] = {}


def register_dependency(
    func: Callable[..., Any], *, is_async: bool, database: AnyDatabase | None
) -> None:
    """Record that *func* (a FastAPI dependency) opens sessions on *database*."""
    _DEPENDENCIES[func] = (is_async, database)


_module_generators_registered = False


def _register_module_generators() -> None:
    # done on first lookup, not at import: it imports the seed facades (and Starlette with them)
    global _module_generators_registered
    if _module_generators_registered:
        return
    _module_generators_registered = True
    from repom import async_session, session

    register_dependency(session.get_db_session, is_async=False, database=None)
    register_dependency(session.get_db_transaction, is_async=False, database=None)
    register_dependency(async_session.get_async_db_session, is_async=True, database=None)
    register_dependency(async_session.get_async_db_transaction, is_async=True, database=None)


def use_databases(
    app: Any, *, database: Database | None = None, async_database: AsyncDatabase | None = None
) -> AppDatabases:
    """Attach databases to *app*: its session dependencies use them instead of the defaults.

    Arguments left as ``None`` keep what was attached before (or the module default).
    """
    if database is not None and not isinstance(database, Database):
        raise TypeError(f"database must be a repom Database, got {type(database).__name__}")
    if async_database is not None and not isinstance(async_database, AsyncDatabase):
        raise TypeError(
            f"async_database must be a repom AsyncDatabase, got {type(async_database).__name__}"
        )
    current = attached_databases(app)
    merged = AppDatabases(
        database=database or current.database,
        async_database=async_database or current.async_database,
    )
    setattr(app.state, _STATE_ATTR, merged)
    return merged


def attached_databases(app: Any) -> AppDatabases:
    found = getattr(app.state, _STATE_ATTR, None)
    return found if isinstance(found, AppDatabases) else AppDatabases()


def app_database(app: Any) -> Database:
    """The sync database of *app*: attached, else the module default."""
    return attached_databases(app).database or get_database()


def app_async_database(app: Any) -> AsyncDatabase:
    """The async database of *app*: attached, else the module default."""
    return attached_databases(app).async_database or get_async_database()


def _walk(dependant: Any) -> Iterator[Callable[..., Any]]:
    stack = [dependant]
    while stack:
        node = stack.pop()
        call = getattr(node, "call", None)
        if call is not None:
            yield call
        stack.extend(getattr(node, "dependencies", ()))


def databases_in_use(app: Any) -> list[AnyDatabase]:
    """Every database *app* uses: attached ones, and those its routes' dependencies open."""
    from fastapi.routing import APIRoute, APIWebSocketRoute

    found: list[AnyDatabase] = []

    def add(db: AnyDatabase) -> None:
        if all(db is not other for other in found):
            found.append(db)

    attached = attached_databases(app)
    if attached.async_database is not None:
        add(attached.async_database)
    if attached.database is not None:
        add(attached.database)
    _register_module_generators()
    for route in getattr(app, "routes", ()):
        if not isinstance(route, APIRoute | APIWebSocketRoute):
            continue
        for call in _walk(route.dependant):
            entry = _DEPENDENCIES.get(call)
            if entry is None:
                continue
            is_async, database = entry
            if database is None:
                database = app_async_database(app) if is_async else app_database(app)
            add(database)
    return found
