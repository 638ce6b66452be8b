"""A health router: database ping and pool status.

``app.include_router(health_router)`` adds ``GET /health``; :func:`create_health_router` makes one
with another path, tags or ping timeout.  The report covers every database the application uses
(see :func:`repom.fastapi.databases_in_use`); the status is 200 when every ping succeeded and 503
otherwise.  Error texts are the typed error's class name only (no URL, SQL or host names).
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

__all__ = ["DatabaseHealth", "HealthReport", "create_health_router", "health_router"]


class DatabaseHealth(BaseModel):
    """One database in the health report."""

    flavour: Literal["sync", "async"]
    dialect: str
    ok: bool
    latency_ms: float | None = None
    error: str | None = Field(default=None, description="Typed error class when the ping failed")
    pool: dict[str, Any] = Field(default_factory=dict, description="PoolMonitor.status()")


class HealthReport(BaseModel):
    status: Literal["ok", "unavailable"]
    databases: list[DatabaseHealth]


async def check_database(database: AnyDatabase, limit: float) -> DatabaseHealth:
    """Ping *database* (for at most *limit* seconds) and read its pool status."""
    is_async = isinstance(database, AsyncDatabase)
    latency: float | None = None
    error: str | None = None
    try:
        with anyio.fail_after(limit):
            if isinstance(database, AsyncDatabase):
                latency = await database.ping()
            else:
                latency = await anyio.to_thread.run_sync(database.ping, abandon_on_cancel=True)
    except TimeoutError:
        error = "Timeout"
    except Exception as exc:
        error = type(translate(exc)).__name__
    return DatabaseHealth(
        flavour="async" if is_async else "sync",
        dialect=database.dialect_name,
        ok=error is None,
        latency_ms=round(latency * 1000, 3) if latency is not None else None,
        error=error,
        pool=database.pool_status(),
    )


def create_health_router(
    *,
    path: str = "/health",
    tags: Sequence[str] = ("health",),
    timeout: float = 5.0,
    metrics_path: str | None = "/metrics",
) -> APIRouter:
    """A router with ``GET <path>``: 200 and ``status="ok"`` when every database answered
    ``SELECT 1`` within *timeout* seconds, else 503 and ``status="unavailable"``.

    When ``prometheus-client`` is installed (the ``prometheus`` extra) and *metrics_path* is not
    ``None``, ``GET <metrics_path>`` serves repom's Prometheus metrics; the databases the app
    uses get a :class:`~repom.monitoring.PoolMonitor` installed on first use."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    router = APIRouter(tags=list(tags))

    @router.get(
        path,
        response_model=HealthReport,
        summary="Database ping and connection-pool status",
        responses={503: {"model": HealthReport, "description": "A database is unavailable"}},
    )
    async def health(request: Request, response: Response) -> HealthReport:
        databases = databases_in_use(request.app) or [get_async_database()]
        reports = [await check_database(db, timeout) for db in databases]
        ok = all(report.ok for report in reports)
        if not ok:
            response.status_code = 503
        return HealthReport(status="ok" if ok else "unavailable", databases=reports)

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
