"""Retrying a whole transaction after serialization failures, deadlocks and lost connections.

Only the *whole* unit of work can be retried: the function that opened the transaction runs
again from the start.  That is why a retry refuses to run inside a transaction it did not open.

What is retried (:func:`is_retryable`): SQLSTATE 40001 (serialization failure), 40P01 (deadlock),
lock-not-available (55P03, MySQL 1205, SQLite BUSY), too many connections (53300) and a lost
connection (including 25P03, the server ending a session idle in a transaction: that transaction
was rolled back).  A connection lost *during COMMIT* leaves the outcome unknown -- the commit may
have happened -- and is raised as :class:`~repom.exceptions.CommitOutcomeUnknown`, which is
retried only when the caller declares the work idempotent (``idempotent=True``).  Integrity
errors, a missing database and refused credentials are never retried.

The wait before attempt *n* (n = 1, 2, ...) is ``uniform(0, min(max_delay, delay *
backoff_factor ** (n - 1)))`` ("full jitter"), or exactly that cap with ``jitter=False``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from repom.exceptions import (
    CommitOutcomeUnknown,
    IllegalTransactionStateError,
    IntegrityViolation,
    InvalidTransactionOption,
    RetryableError,
    translate,
)
from repom.monitoring._stats import count_retry

__all__ = [
    "RetryPolicy",
    "is_retryable",
    "retry_on_database_error",
    "run_async_with_retry",
    "run_with_retry",
]

logger = logging.getLogger("repom.retry")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# observers (e.g. Prometheus counters) called with (attempt, error) before each retry
retry_listeners: list[Callable[[int, BaseException], None]] = []


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    delay: float = 0.05
    backoff_factor: float = 2.0
    max_delay: float = 2.0
    jitter: bool = True
    idempotent: bool = False

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise InvalidTransactionOption("max_retries must be >= 0", option="max_retries")
        if self.delay < 0 or self.max_delay < 0 or self.backoff_factor < 1:
            raise InvalidTransactionOption(
                "delay and max_delay must be >= 0 and backoff_factor >= 1", option="delay"
            )

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before retry number *attempt* (1-based)."""
        cap = min(self.max_delay, self.delay * self.backoff_factor ** (attempt - 1))
        return random.uniform(0, cap) if self.jitter else cap


def is_retryable(error: BaseException, *, idempotent: bool = False) -> bool:
    """True when running the whole transaction again may succeed.

    :class:`~repom.exceptions.CommitOutcomeUnknown` (the connection was lost during COMMIT, so
    the transaction may have been committed) is retryable only with ``idempotent=True``; a
    :class:`~repom.exceptions.ConnectionLost` marked ``during_commit`` (a session on an engine
    repom did not build) is translated to it first.
    """
    error = translate(error)
    if isinstance(error, CommitOutcomeUnknown):
        return idempotent
    if isinstance(error, IntegrityViolation):
        return False
    return isinstance(error, RetryableError)


def _note(attempt: int, error: BaseException, wait: float) -> None:
    logger.info("retrying transaction (attempt %d) after %s; waiting %.3fs", attempt, error, wait)
    count_retry(error)
    for listener in retry_listeners:
        try:
            listener(attempt, error)
        except Exception:  # pragma: no cover - observers must not break retries
            logger.exception("retry listener failed")


def run_with_retry(func: Callable[[], T], policy: RetryPolicy) -> T:
    attempt = 0
    while True:
        try:
            return func()
        except Exception as exc:
            if attempt >= policy.max_retries or not is_retryable(exc, idempotent=policy.idempotent):
                raise
            attempt += 1
            wait = policy.wait_before(attempt)
            _note(attempt, exc, wait)
            time.sleep(wait)


async def run_async_with_retry(func: Callable[[], Awaitable[T]], policy: RetryPolicy) -> T:
    attempt = 0
    while True:
        try:
            return await func()
        except Exception as exc:
            if attempt >= policy.max_retries or not is_retryable(exc, idempotent=policy.idempotent):
                raise
            attempt += 1
            wait = policy.wait_before(attempt)
            _note(attempt, exc, wait)
            await asyncio.sleep(wait)


# Is a repom transaction active in this thread/task?  Registered by repom.transactions, the
# layer above: no transaction can be active before that module is imported.
def _no_transaction() -> bool:
    return False


_transaction_probe: Callable[[], bool] = _no_transaction


def register_transaction_probe(probe: Callable[[], bool]) -> None:
    """Tell :func:`retry_on_database_error` how to see an active transaction."""
    global _transaction_probe
    _transaction_probe = probe


def _refuse_inside_transaction(func: Callable[..., Any]) -> None:
    if _transaction_probe():
        raise IllegalTransactionStateError(
            f"retry_on_database_error: {getattr(func, '__qualname__', func)!r} was called inside "
            "a transaction it did not open; only the outermost transaction can be retried"
        )


def retry_on_database_error(
    max_retries: int = 3,
    delay: float = 0.05,
    backoff_factor: float = 2.0,
    jitter: bool = True,
    max_delay: float = 2.0,
    idempotent: bool = False,
) -> Callable[[F], F]:
    """Compatibility decorator: retry the decorated function (sync or async) as a whole.

    The function must open its own transaction (``async with tm.transaction()``,
    ``@transactional``...).  Calling it while a transaction is already active raises
    :class:`~repom.exceptions.IllegalTransactionStateError`: retrying only the inner part of
    someone else's transaction would repeat work the outer transaction has already lost.
    """
    policy = RetryPolicy(
        max_retries=max_retries,
        delay=delay,
        backoff_factor=backoff_factor,
        max_delay=max_delay,
        jitter=jitter,
        idempotent=idempotent,
    )

    def decorator(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                _refuse_inside_transaction(func)
                return await run_async_with_retry(lambda: func(*args, **kwargs), policy)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            _refuse_inside_transaction(func)
            return run_with_retry(lambda: func(*args, **kwargs), policy)

        return cast(F, sync_wrapper)

    return decorator
