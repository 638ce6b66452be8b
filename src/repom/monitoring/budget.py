"""The connection budget: how many server connections a service may open, against what the
PostgreSQL server and the role allow.

Every worker process has its own pool, so a service may open up to
``(pool_size + max_overflow) x workers`` connections (per database).  :func:`connection_budget`
reads the server's ``max_connections`` (minus the slots reserved for superusers) and the role's
``CONNECTION LIMIT`` and says whether that fits.  ``repom info`` prints it and
:class:`repom.fastapi.Lifespan` logs it at startup (a warning when it cannot fit).  The worker
count comes from ``workers=``, else ``REPOM_WORKERS``, else ``WEB_CONCURRENCY`` (the variable
gunicorn and uvicorn read), else 1.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

__all__ = ["ConnectionBudget", "budget_for", "connection_budget", "worker_count"]


def worker_count(workers: int | None = None) -> int:
    """``workers``, else ``REPOM_WORKERS``, else ``WEB_CONCURRENCY``, else 1."""
    if workers is not None:
        return max(int(workers), 1)
    for name in ("REPOM_WORKERS", "WEB_CONCURRENCY"):
        raw = os.environ.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return 1


@dataclass(frozen=True)
class ConnectionBudget:
    per_process: int | None  # None: unbounded (NullPool / overflow -1)
    workers: int
    needed: int | None
    max_connections: int | None
    reserved: int | None
    role_limit: int | None  # None: no CONNECTION LIMIT on the role
    available: int | None  # what this role may open at most on this server
    fits: bool | None  # None when it cannot be told (unbounded pool, not PostgreSQL)

    def describe(self) -> str:
        per = "unbounded" if self.per_process is None else str(self.per_process)
        need = "unbounded" if self.needed is None else str(self.needed)
        text_ = f"pool {per} x {self.workers} worker(s) = {need} connection(s)"
        if self.available is not None:
            text_ += f"; the server allows this role {self.available}"
            parts = []
            if self.max_connections is not None:
                if self.reserved and self.available < self.max_connections:
                    parts.append(
                        f"max_connections {self.max_connections} - reserved {self.reserved}"
                    )
                else:
                    parts.append(f"max_connections {self.max_connections}")
            if self.role_limit is not None:
                parts.append(f"role limit {self.role_limit}")
            text_ += f" ({', '.join(parts)})"
        if self.fits is False:
            text_ += ": DOES NOT FIT -- lower pool_size/max_overflow, or use a pooler"
        return text_

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool_capacity(engine: Engine) -> int | None:
    pool = engine.pool
    if isinstance(pool, StaticPool):
        return 1
    if isinstance(pool, NullPool):
        return None
    if isinstance(pool, QueuePool):
        overflow = pool._max_overflow
        if overflow < 0:
            return None
        return int(pool.size() + overflow)
    return None


_LIMITS = text(
    "SELECT CAST(current_setting('max_connections') AS integer), "
    "CAST(current_setting('superuser_reserved_connections') AS integer), "
    "(SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user), "
    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
)


def connection_budget(
    engine: Engine, *, workers: int | None = None, connection: Connection | None = None
) -> ConnectionBudget:
    """The budget of *engine*'s pool across *workers* processes (one round trip on PostgreSQL,
    on *connection* when given -- e.g. inside ``AsyncConnection.run_sync`` -- none elsewhere)."""
    if engine.dialect.name != "postgresql":
        return budget_for(_pool_capacity(engine), workers=workers, connection=None)
    if connection is not None:
        return budget_for(_pool_capacity(engine), workers=workers, connection=connection)
    with engine.connect() as conn:
        return budget_for(_pool_capacity(engine), workers=workers, connection=conn)


def budget_for(
    per_process: int | None, *, workers: int | None = None, connection: Connection | None
) -> ConnectionBudget:
    """The budget of a pool of *per_process* connections (None: unbounded) across *workers*
    processes, with the limits read on *connection* (PostgreSQL; None: limits unknown)."""
    count = worker_count(workers)
    needed = per_process * count if per_process is not None else None
    max_connections = reserved = role_limit = available = None
    if connection is not None and connection.dialect.name == "postgresql":
        row = connection.execute(_LIMITS).one()
        max_connections, reserved = int(row[0]), int(row[1])
        limit = int(row[2]) if row[2] is not None else -1
        role_limit = limit if limit >= 0 else None
        available = max_connections if row[3] else max_connections - reserved
        if role_limit is not None:
            available = min(available, role_limit)
    fits = None if needed is None or available is None else needed <= available
    return ConnectionBudget(
        per_process=per_process,
        workers=count,
        needed=needed,
        max_connections=max_connections,
        reserved=reserved,
        role_limit=role_limit,
        available=available,
        fits=fits,
    )
