"""Thread-safe counters and fixed-bucket histograms kept by the monitoring listeners.

They hold the figures ``PoolMonitor.status()`` reports and the Prometheus collector exposes, so
monitoring works (and costs the same) with or without ``prometheus-client``.  Recording takes no
lock (atomic ``itertools.count``/``deque`` operations); reading does the bookkeeping.
"""

from __future__ import annotations

import itertools
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence

__all__ = [
    "FOLD_AT",
    "STATEMENT_BUCKETS",
    "WAIT_BUCKETS",
    "Counter",
    "Histogram",
    "callback_failure_counts",
    "count_callback_failure",
    "count_replica_skip",
    "count_retry",
    "replica_skip_counts",
    "retry_counts",
]

#: pending observations a recorder folds itself (bounds the memory between two reads)
FOLD_AT = 4096

#: upper bounds (seconds) of the checkout-wait histogram
WAIT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: upper bounds (seconds) of the statement-duration histogram
STATEMENT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Counter:
    """A counter that hot paths bump without a lock: :attr:`tick` is ``next`` of an
    ``itertools.count`` (atomic in CPython).  Reading calls ``next`` too, so reads are counted
    (under a lock) and subtracted."""

    __slots__ = ("_count", "_lock", "_reads", "tick")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.tick: Callable[[], int] = self._count.__next__
        self._lock = threading.Lock()
        self._reads = 0

    @property
    def value(self) -> int:
        with self._lock:
            seen = next(self._count)  # = ticks + earlier reads
            value = seen - self._reads
            self._reads += 1
            return value


class Histogram:
    """Observations in fixed buckets (Prometheus semantics: a value lands in the first bucket
    whose upper bound is >= the value), with count, sum and maximum.

    Hot paths call :attr:`record` -- ``deque.append``, atomic, no lock -- and the observations
    are folded into the buckets when the figures are read, or by the recorder once
    :data:`FOLD_AT` are pending (``record(v); if len(pending) > FOLD_AT: fold()``)."""

    __slots__ = ("_count", "_counts", "_lock", "_max", "_total", "bounds", "pending", "record")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self._lock = threading.Lock()
        self._count = 0
        self._total = 0.0
        self._max = 0.0
        self.pending: deque[float] = deque()
        self.record: Callable[[float], None] = self.pending.append

    def observe(self, value: float) -> None:
        self.record(value)
        if len(self.pending) > FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move the pending observations into the buckets."""
        pop = self.pending.popleft
        bounds = self.bounds
        with self._lock:
            counts = self._counts
            while True:
                try:
                    value = pop()
                except IndexError:
                    break
                counts[bisect_left(bounds, value)] += 1
                self._count += 1
                self._total += value
                if value > self._max:
                    self._max = value

    @property
    def count(self) -> int:
        self.fold()
        return self._count

    @property
    def total(self) -> float:
        self.fold()
        return self._total

    @property
    def maximum(self) -> float:
        self.fold()
        return self._max

    @property
    def mean(self) -> float:
        self.fold()
        return self._total / self._count if self._count else 0.0

    def cumulative(self) -> tuple[list[tuple[float, int]], int, float]:
        """``([(upper_bound, cumulative_count), ...], count, sum)``; +Inf is ``float('inf')``."""
        self.fold()
        with self._lock:
            counts = list(self._counts)
            total = self._total
        running = 0
        buckets: list[tuple[float, int]] = []
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            buckets.append((bound, running))
        return buckets, running, total


# --------------------------------------------------------------------------- retries

_retry_lock = threading.Lock()
_retries: dict[str, int] = {}


def count_retry(error: BaseException) -> None:
    """Count one whole-transaction retry (called by :mod:`repom.retry`), by error type."""
    key = type(error).__name__
    with _retry_lock:
        _retries[key] = _retries.get(key, 0) + 1


def retry_counts() -> dict[str, int]:
    """Whole-transaction retries since the process started, by error."""
    with _retry_lock:
        return dict(_retries)


# --------------------------------------------------------------------------- on_commit failures

_callback_failures: dict[str, int] = {}


def count_callback_failure(name: str) -> None:
    """Count an ``on_commit`` callback that failed after COMMIT (by callback name)."""
    with _retry_lock:
        _callback_failures[name] = _callback_failures.get(name, 0) + 1


def callback_failure_counts() -> dict[str, int]:
    """``on_commit`` callbacks that failed since the process started, by callback name."""
    with _retry_lock:
        return dict(_callback_failures)


# --------------------------------------------------------------------------- replica skips

_replica_skips: dict[tuple[str, str, str], int] = {}


def count_replica_skip(database: str, replica: str, reason: str) -> None:
    """Count a read that did not use *replica* (down, lagging, behind the context's writes)."""
    key = (database, replica, reason)
    with _retry_lock:
        _replica_skips[key] = _replica_skips.get(key, 0) + 1


def replica_skip_counts() -> dict[tuple[str, str, str], int]:
    """Skipped replica reads since the process started, by (database, replica, reason)."""
    with _retry_lock:
        return dict(_replica_skips)
