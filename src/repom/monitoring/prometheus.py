"""Prometheus metrics for monitored engines (needs the ``prometheus`` extra: prometheus-client).

Nothing here sits on the hot path: the listeners of :meth:`PoolMonitor.install` keep their own
counters and histograms, and :class:`RepomCollector` turns them into metric families when the
registry is scraped.  Pool gauges are read from the pool at that moment.

Every series carries a ``pool`` label (the monitor's name; pass ``name=`` to ``install()``):

Gauges: ``repom_pool_size``, ``repom_pool_capacity`` (most connections handed out before callers
wait; absent when unbounded), ``repom_pool_checked_out``, ``repom_pool_checked_in``,
``repom_pool_overflow``, ``repom_pool_connections`` (open), ``repom_pool_utilization_ratio``
(checked out / capacity, 0..1), ``repom_pool_waiting`` (callers waiting for a connection).

Histograms: ``repom_pool_checkout_wait_seconds`` (time to get a connection),
``repom_statement_duration_seconds`` (cursor execution time).

Counters: ``repom_pool_checkout_timeouts_total`` (``PoolExhausted``), ``repom_pool_connects_total``,
``repom_pool_recycles_total``, ``repom_pool_invalidations_total``,
``repom_pool_disconnects_total``, ``repom_pool_long_checkouts_total``,
``repom_slow_statements_total``, ``repom_commits_total``, ``repom_rollbacks_total``, and
``repom_transaction_retries_total`` (label ``error`` instead of ``pool``) and
``repom_on_commit_failures_total`` (label ``callback``), ``repom_replica_skips_total``
(labels ``database``, ``replica``, ``reason``).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from repom.monitoring._stats import (
    Histogram,
    callback_failure_counts,
    replica_skip_counts,
    retry_counts,
)
from repom.monitoring._tracker import Tracker, installed_trackers
from repom.monitoring.pool import PoolMonitor

__all__ = ["RepomCollector", "metrics_text", "register_metrics"]

_GAUGES = (
    ("pool_size", "pool_size", "Configured size of the connection pool"),
    ("pool_capacity", "capacity", "Most connections the pool hands out before callers wait"),
    ("pool_checked_out", "checked_out", "Connections checked out of the pool"),
    ("pool_checked_in", "checked_in", "Idle connections kept in the pool"),
    ("pool_overflow", "overflow", "Connections open beyond pool_size"),
    ("pool_connections", "total", "Connections currently open"),
    ("pool_utilization_ratio", "utilization", "Checked-out connections / capacity"),
    ("pool_waiting", "waiting", "Callers waiting for a connection"),
)
_COUNTERS = (
    ("pool_checkout_timeouts", "timeouts", "Checkouts that timed out (pool exhausted)"),
    ("pool_connects", "connects", "Database connections opened"),
    ("pool_recycles", "recycles", "Connections replaced because of age or pool invalidation"),
    ("pool_invalidations", "invalidations", "Connections invalidated"),
    ("pool_disconnects", "disconnects", "Errors recognised as a lost connection"),
    ("pool_long_checkouts", "long_checkouts", "Checkouts held longer than the threshold"),
    ("slow_statements", "slow_statements", "Statements slower than the threshold"),
    ("commits", "commits", "Transactions committed"),
    ("rollbacks", "rollbacks", "Transactions rolled back"),
)


def _histogram(name: str, doc: str, items: list[tuple[str, Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["pool"])
    for label, histogram in items:
        buckets, _count, total = histogram.cumulative()
        family.add_metric(
            [label],
            [("+Inf" if math.isinf(b) else repr(float(b)), float(n)) for b, n in buckets],
            total,
        )
    return family


class RepomCollector(Collector):
    """Metric families for the given monitors (default: every engine with an installed
    monitor, as it is at scrape time) and for whole-transaction retries."""

    def __init__(
        self,
        monitors: Iterable[PoolMonitor] | None = None,
        *,
        namespace: str = "repom",
        retries: bool = True,
    ) -> None:
        self._monitors = list(monitors) if monitors is not None else None
        self.namespace = namespace
        self.retries = retries

    def _trackers(self) -> list[Tracker]:
        if self._monitors is None:
            return installed_trackers()
        found = []
        for monitor in self._monitors:
            tracker = monitor.tracker
            if tracker is not None and tracker.installed:
                found.append(tracker)
        return found

    def describe(self) -> Iterator[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families(self._trackers())

    def _families(self, trackers: list[Tracker]) -> Iterator[Metric]:
        ns = self.namespace
        rows: list[tuple[Tracker, dict[str, Any]]] = []
        for tracker in trackers:
            engine = tracker.engine
            if engine is not None:
                rows.append((tracker, PoolMonitor(engine).status()))
        for suffix, key, doc in _GAUGES:
            gauge = GaugeMetricFamily(f"{ns}_{suffix}", doc, labels=["pool"])
            for tracker, status in rows:
                value = status[key]
                if value is None:
                    continue
                if key == "utilization":
                    value = value / 100.0
                gauge.add_metric([tracker.name], float(value))
            yield gauge
        yield _histogram(
            f"{ns}_pool_checkout_wait_seconds",
            "Time to get a connection from the pool",
            [(t.name, t.wait) for t, _ in rows],
        )
        yield _histogram(
            f"{ns}_statement_duration_seconds",
            "Cursor execution time",
            [(t.name, t.statements) for t, _ in rows],
        )
        for suffix, key, doc in _COUNTERS:
            counter = CounterMetricFamily(f"{ns}_{suffix}", doc, labels=["pool"])
            for tracker, status in rows:
                counter.add_metric([tracker.name], float(status[key]))
            yield counter
        if self.retries:
            retries = CounterMetricFamily(
                f"{ns}_transaction_retries", "Whole-transaction retries", labels=["error"]
            )
            for error, n in sorted(retry_counts().items()):
                retries.add_metric([error], float(n))
            yield retries
        failures = CounterMetricFamily(
            f"{ns}_on_commit_failures",
            "on_commit callbacks that raised after the transaction was committed",
            labels=["callback"],
        )
        for callback, n in sorted(callback_failure_counts().items()):
            failures.add_metric([callback], float(n))
        yield failures
        skips = CounterMetricFamily(
            f"{ns}_replica_skips",
            "Read-only transactions a replica did not serve (down, lagging, behind, promoted)",
            labels=["database", "replica", "reason"],
        )
        for (database, replica, reason), n in sorted(replica_skip_counts().items()):
            skips.add_metric([database, replica, reason], float(n))
        yield skips


_registered: weakref.WeakKeyDictionary[CollectorRegistry, RepomCollector] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def register_metrics(registry: CollectorRegistry | None = None) -> RepomCollector:
    """Register the collector of every monitored engine on *registry* (default: the global
    ``prometheus_client.REGISTRY``) once; later calls return the same collector."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = RepomCollector()
            registry.register(collector)
            _registered[registry] = collector
    return collector


def metrics_text(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """``(body, content_type)`` of a Prometheus scrape of *registry* (default: the global one,
    with repom's collector registered on it).  A FastAPI endpoint returns
    ``Response(content=body, media_type=content_type)``."""
    registry = REGISTRY if registry is None else registry
    register_metrics(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
