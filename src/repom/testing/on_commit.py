"""``capture_on_commit_callbacks()``: collect the ``on_commit`` callbacks a block registers.

While a test runs, the application's transactions really commit as far as they can tell (into the
test's savepoint), so their ``on_commit`` callbacks run right after, as in production.  To assert
on them instead of running them, capture them (Django's ``captureOnCommitCallbacks``)::

    with capture_on_commit_callbacks() as callbacks:
        create_user(...)             # commits and registers send_welcome_mail
    assert len(callbacks) == 1
    callbacks[0]()                   # run it yourself

    with capture_on_commit_callbacks(execute=True) as callbacks:
        create_user(...)             # the callbacks run when the block ends without error

Inside the block, callbacks that an outermost commit would run are appended to the list instead;
so are callbacks registered outside any transaction (which would otherwise run at once).  Callbacks
of a transaction that rolls back are dropped, as always.  Commits made in other threads during the
block (a ``TestClient`` request) are captured too.  Async callbacks need ``async with``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from repom.exceptions import TransactionError

__all__ = ["OnCommitCapture", "capture_on_commit_callbacks"]

Callback = Callable[[], Any]


class OnCommitCapture:
    """What :func:`capture_on_commit_callbacks` returns: ``with`` and ``async with``."""

    def __init__(self, *, execute: bool = False) -> None:
        self.execute = execute
        self.callbacks: list[Callback] = []

    def _push(self) -> list[Callback]:
        from repom.transactions.core import _commit_sinks

        _commit_sinks.append(self.callbacks)
        return self.callbacks

    def _pop(self) -> None:
        from repom.transactions.core import _commit_sinks

        for index in range(len(_commit_sinks) - 1, -1, -1):
            if _commit_sinks[index] is self.callbacks:
                del _commit_sinks[index]
                break

    def _due(self) -> Any:
        """Each captured callback once, including those that running one registers (the sink
        stays installed while they run, so those are appended to the same list)."""
        index = 0
        while index < len(self.callbacks):
            yield self.callbacks[index]
            index += 1

    def __enter__(self) -> list[Callback]:
        return self._push()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None and self.execute:
                for callback in self._due():
                    result = callback()
                    if inspect.isawaitable(result):
                        if inspect.iscoroutine(result):
                            result.close()
                        raise TransactionError(
                            f"on_commit callback {callback!r} is async: capture it with "
                            "'async with capture_on_commit_callbacks(execute=True)'"
                        )
        finally:
            self._pop()

    async def __aenter__(self) -> list[Callback]:
        return self._push()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None and self.execute:
                for callback in self._due():
                    result = callback()
                    if inspect.isawaitable(result):
                        await result
        finally:
            self._pop()


def capture_on_commit_callbacks(*, execute: bool = False) -> OnCommitCapture:
    """Capture the ``on_commit`` callbacks registered inside a ``with``/``async with`` block;
    the block yields the list.  ``execute=True`` runs them (in order) when the block ends
    without an error."""
    return OnCommitCapture(execute=execute)
