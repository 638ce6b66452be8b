"""Health endpoints for orchestrators: liveness, readiness, and (opt-in) pool details.

``app.include_router(health_router)`` adds:

* ``GET /health/live`` -- liveness: 200 while the process can answer HTTP.  It never touches a
  database: a slow or busy database must not get a healthy process restarted.
* ``GET /health/ready`` -- readiness: ``SELECT 1`` on every database the application uses, each
  on a connection of its own (never waiting behind a full pool: a busy pool is not an unavailable
  database) and within a short timeout; 200 when all answered, else 503.
* ``GET /health`` -- the same report as ``/health/ready`` (kept for existing probes).

Each database is labelled by name, role and host; error texts are the typed error's class name
only (no URL, SQL or credentials).  Pool figures are included only with
``create_health_router(details=True)`` (they describe the service's internals: keep them behind
your own access control).  :func:`create_health_router` makes one with other paths, tags or
timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from repom.database import AsyncDatabase, get_async_database
from repom.exceptions import translate
from repom.fastapi._databases import AnyDatabase, databases_in_use

__all__ = [
    "DatabaseHealth",
    "HealthReport",
    "LivenessReport",
    "create_health_router",
    "health_router",
]


class DatabaseHealth(BaseModel):
    """One database in the readiness report."""

    name: str = Field(description="The database's name (Database(name=...), else its URL's)")
    role: str = Field(description='"primary" (or "replica")')
    host: str
    flavour: Literal["sync", "async"]
    dialect: str
    ok: bool
    latency_ms: float | None = None
    error: str | None = Field(default=None, description="Typed error class when the ping failed")
    lag_seconds: float | None = Field(
        default=None, description="Replicas: how far replay is behind the primary"
    )
    pool: dict[str, Any] | None = Field(
        default=None, description="PoolMonitor.status(), only with details=True"
    )


class HealthReport(BaseModel):
    status: Literal["ok", "unavailable"]
    databases: list[DatabaseHealth]


class LivenessReport(BaseModel):
    status: Literal["alive"] = "alive"


async def check_database(
    database: AnyDatabase, limit: float, *, details: bool = False
) -> DatabaseHealth:
    """Ping *database* on a connection of its own, for at most *limit* seconds."""
    is_async = isinstance(database, AsyncDatabase)
    latency: float | None = None
    error: str | None = None
    try:
        with anyio.fail_after(limit):
            if isinstance(database, AsyncDatabase):
                latency = await database.ping(bypass_pool=True)
            else:
                latency = await anyio.to_thread.run_sync(
                    lambda: database.ping(bypass_pool=True), abandon_on_cancel=True
                )
    except TimeoutError:
        error = "Timeout"
    except Exception as exc:
        error = type(translate(exc)).__name__
    return DatabaseHealth(
        name=database.name,
        role=database.role,
        host=database.host,
        flavour="async" if is_async else "sync",
        dialect=database.dialect_name,
        ok=error is None,
        latency_ms=round(latency * 1000, 3) if latency is not None else None,
        error=error,
        pool=database.pool_status() if details else None,
    )


async def check_replicas(database: AnyDatabase, limit: float) -> list[DatabaseHealth]:
    """The replicas of *database*: role (``replica``, or ``promoted``), lag and latency.  A
    replica that is down is reported, but does not make the service unready: reads fall back to
    the primary."""
    if not database.replica_urls or database.bound_connection is not None:
        return []
    try:
        with anyio.fail_after(limit):
            if isinstance(database, AsyncDatabase):
                statuses = await database.check_replicas()
            else:
                statuses = await anyio.to_thread.run_sync(
                    database.check_replicas, abandon_on_cancel=True
                )
    except TimeoutError:
        statuses = []
    reports = []
    for status in statuses:
        host, _, _port = status.name.rpartition(":")
        reports.append(
            DatabaseHealth(
                name=f"{database.name} replica {status.name}",
                role=status.role,
                host=host or status.name,
                flavour="async" if isinstance(database, AsyncDatabase) else "sync",
                dialect=database.dialect_name,
                ok=status.error is None and status.role == "replica",
                latency_ms=round(status.latency * 1000, 3) if status.latency is not None else None,
                error=status.error,
                lag_seconds=status.lag_seconds,
            )
        )
    return reports


def _labelled(reports: list[DatabaseHealth]) -> list[DatabaseHealth]:
    """Two databases with the same name get ``#2``, ``#3``... so every entry is distinct."""
    seen: dict[str, int] = {}
    for report in reports:
        count = seen.get(report.name, 0) + 1
        seen[report.name] = count
        if count > 1:
            report.name = f"{report.name}#{count}"
    return reports


def create_health_router(
    *,
    path: str = "/health",
    tags: Sequence[str] = ("health",),
    timeout: float = 2.0,
    details: bool = False,
    metrics_path: str | None = "/metrics",
) -> APIRouter:
    """A router with ``GET <path>/live``, ``GET <path>/ready`` and ``GET <path>`` (see the
    module docstring).  *timeout* bounds each database's ping (seconds); *details* adds the
    pool figures to the readiness report.

    When ``prometheus-client`` is installed (the ``prometheus`` extra) and *metrics_path* is not
    ``None``, ``GET <metrics_path>`` serves repom's Prometheus metrics; the databases the app
    uses get a :class:`~repom.monitoring.PoolMonitor` installed on first use."""
    if not timeout > 0 or timeout == float("inf"):
        raise ValueError("timeout must be a positive, finite number of seconds")
    router = APIRouter(tags=list(tags))
    base = path.rstrip("/")

    @router.get(f"{base}/live", response_model=LivenessReport, summary="Liveness (no database)")
    async def live() -> LivenessReport:
        return LivenessReport()

    async def ready(request: Request, response: Response) -> HealthReport:
        databases = databases_in_use(request.app) or [get_async_database()]
        primaries = [await check_database(db, timeout, details=details) for db in databases]
        ok = all(report.ok for report in primaries)
        replicas = [entry for db in databases for entry in await check_replicas(db, timeout)]
        reports = _labelled(primaries + replicas)
        if not ok:
            response.status_code = 503
        return HealthReport(status="ok" if ok else "unavailable", databases=reports)

    responses: dict[int | str, dict[str, Any]] = {
        503: {"model": HealthReport, "description": "A database is unavailable"}
    }
    for route_path in (f"{base}/ready", path):
        router.add_api_route(
            route_path,
            ready,
            methods=["GET"],
            response_model=HealthReport,
            summary="Readiness: every database answers SELECT 1",
            responses=responses,
        )

    from repom.monitoring import metrics_available

    if metrics_path is not None and metrics_available():

        @router.get(metrics_path, summary="Prometheus metrics (pools, statements, retries)")
        async def metrics(request: Request) -> Response:
            from repom.monitoring import PoolMonitor, metrics_text

            for database in databases_in_use(request.app) or [get_async_database()]:
                monitor = PoolMonitor(database)
                if not monitor.installed:
                    monitor.install()
            body, content_type = metrics_text()
            return Response(content=body, media_type=content_type)

    return router


#: ``app.include_router(health_router)``: ``GET /health``.
health_router = create_health_router()
