"""Pool monitoring and query observability (sync and async engines alike).

* :class:`PoolMonitor` (compatibility names :class:`ConnectionPoolMonitor`,
  ``PoolMonitor.setup_listeners``, ``PoolMonitor.get_pool_status``): pool figures for every
  pool class, ``check_health()``, and opt-in listeners -- slow-statement log, long-checkout
  warning with the route or stack that held the connection, connection age,
  invalidation/disconnect counts, checkout wait.
* :class:`QueryCounter` / :func:`assert_max_queries`: count the statements a block sends (N+1).
* :func:`register_metrics` / :func:`metrics_text`: Prometheus metrics (``prometheus`` extra;
  ``prometheus-client`` is imported only when these are used).
* :func:`route_context` / :class:`RouteContextMiddleware`: name the route that holds a connection.

Loggers: ``repom.monitoring.pool`` (long checkouts, old connections, invalidations, exhaustion,
health) and ``repom.monitoring.sql`` (slow statements).  See ``docs/monitoring.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repom.monitoring._stats import callback_failure_counts, replica_skip_counts, retry_counts
    from repom.monitoring._tracker import MonitorOptions, mask_parameters
    from repom.monitoring.budget import ConnectionBudget, connection_budget, worker_count
    from repom.monitoring.context import (
        RouteContextMiddleware,
        current_route,
        reset_route,
        route_context,
        set_route,
    )
    from repom.monitoring.pool import (
        ConnectionPoolMonitor,
        PoolHealth,
        PoolMonitor,
        UnsupportedMonitorTarget,
    )
    from repom.monitoring.prometheus import RepomCollector, metrics_text, register_metrics
    from repom.monitoring.queries import QueryCounter, assert_max_queries

__all__ = [
    "ConnectionBudget",
    "ConnectionPoolMonitor",
    "MonitorOptions",
    "PoolHealth",
    "PoolMonitor",
    "QueryCounter",
    "RepomCollector",
    "RouteContextMiddleware",
    "UnsupportedMonitorTarget",
    "assert_max_queries",
    "callback_failure_counts",
    "connection_budget",
    "current_route",
    "mask_parameters",
    "metrics_available",
    "metrics_text",
    "register_metrics",
    "replica_skip_counts",
    "reset_route",
    "retry_counts",
    "route_context",
    "set_route",
    "worker_count",
]

_PROMETHEUS = ("RepomCollector", "metrics_text", "register_metrics")

# imported on first access: ``repom.monitoring._stats`` (counters the lower layers bump) must not
# pull the tracker, pool and query modules in with it
_LAZY: dict[str, str] = {
    "ConnectionBudget": "repom.monitoring.budget",
    "ConnectionPoolMonitor": "repom.monitoring.pool",
    "MonitorOptions": "repom.monitoring._tracker",
    "PoolHealth": "repom.monitoring.pool",
    "PoolMonitor": "repom.monitoring.pool",
    "QueryCounter": "repom.monitoring.queries",
    "RouteContextMiddleware": "repom.monitoring.context",
    "UnsupportedMonitorTarget": "repom.monitoring.pool",
    "assert_max_queries": "repom.monitoring.queries",
    "callback_failure_counts": "repom.monitoring._stats",
    "replica_skip_counts": "repom.monitoring._stats",
    "connection_budget": "repom.monitoring.budget",
    "current_route": "repom.monitoring.context",
    "mask_parameters": "repom.monitoring._tracker",
    "reset_route": "repom.monitoring.context",
    "retry_counts": "repom.monitoring._stats",
    "route_context": "repom.monitoring.context",
    "set_route": "repom.monitoring.context",
    "worker_count": "repom.monitoring.budget",
}


def metrics_available() -> bool:
    """True when ``prometheus-client`` is installed (the ``prometheus`` extra)."""
    return importlib.util.find_spec("prometheus_client") is not None


def __getattr__(name: str) -> Any:
    if name in _PROMETHEUS:
        from repom.monitoring import prometheus

        value = getattr(prometheus, name)
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'repom.monitoring' has no attribute {name!r}")
