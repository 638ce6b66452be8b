"""The cancellation shield around async cleanup (commit, rollback, close at the end of a scope).

Cleanup runs to the end in the task that was cancelled, without a task of its own: the future
the cleanup waits on is never cancelled, and the task raises ``CancelledError`` once the cleanup
finished.  These scenarios drive the shield with plain asyncio futures; the database scenarios
(a COMMIT in flight when the request is cancelled) are in ``tests/fastapi/test_request_cost.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from repom.transactions.core import shielded


@contextmanager
def counting_tasks() -> Iterator[list[Any]]:
    """Every task created on the running loop while the block runs."""
    loop = asyncio.get_running_loop()
    created: list[Any] = []
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)
    try:
        yield created
    finally:
        loop.set_task_factory(previous)


class Cleanup:
    """A cleanup that waits on a future the test completes, like a COMMIT waiting for the
    server's answer."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()
        self.steps: list[str] = []

    async def run(self) -> str:
        self.steps.append("sent")
        self.waiting.set()
        answer = await self.reply
        self.steps.append(answer)
        await asyncio.sleep(0)  # a bare yield as well
        self.steps.append("closed")
        return answer


async def test_cancel_during_cleanup_waits_for_it_then_raises() -> None:
    cleanup = Cleanup()

    async def request() -> str:
        return await shielded(cleanup.run())

    task = asyncio.create_task(request())
    await cleanup.waiting.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # still waiting for the cleanup's reply
    assert not cleanup.reply.cancelled()  # what the cleanup waits on was not cancelled
    cleanup.reply.set_result("committed")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleanup.steps == ["sent", "committed", "closed"]
    assert task.cancelled()


async def test_cancel_at_a_bare_yield_is_held_back_too() -> None:
    steps: list[int] = []
    started = asyncio.Event()

    async def cleanup() -> None:
        started.set()
        for step in range(50):
            await asyncio.sleep(0)
            steps.append(step)

    async def request() -> None:
        await shielded(cleanup())

    task = asyncio.create_task(request())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == list(range(50))


async def test_cleanup_failure_while_cancelled_raises_the_cancellation() -> None:
    cleanup = Cleanup()

    async def failing() -> None:
        cleanup.waiting.set()
        await cleanup.reply
        raise RuntimeError("rollback failed")

    task = asyncio.create_task(_shielded_call(failing))
    await cleanup.waiting.wait()
    task.cancel()
    await asyncio.sleep(0)
    cleanup.reply.set_result("x")
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert isinstance(raised.value.__cause__, RuntimeError)


async def _shielded_call(func: Any) -> Any:
    return await shielded(func())


async def test_without_cancellation_result_and_errors_pass_through() -> None:
    cleanup = Cleanup()
    asyncio.get_running_loop().call_later(0.01, cleanup.reply.set_result, "done")
    assert await shielded(cleanup.run()) == "done"

    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failed.set_exception(ConnectionResetError("server closed the connection"))

    async def waits_on_failure() -> None:
        await asyncio.sleep(0)
        await failed

    with pytest.raises(ConnectionResetError, match="server closed"):
        await shielded(waits_on_failure())


async def test_a_future_cancelled_by_its_owner_reaches_the_cleanup() -> None:
    """Only the *task's* cancellation is held back; a cancelled operation is the cleanup's."""
    reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def cleanup() -> str:
        try:
            await reply
        except asyncio.CancelledError:
            seen.append("operation cancelled")
            return "handled"
        return "answered"

    asyncio.get_running_loop().call_later(0.01, reply.cancel)
    assert await shielded(cleanup()) == "handled"
    assert seen == ["operation cancelled"]


async def test_timeout_around_cleanup_fires_after_it() -> None:
    cleanup = Cleanup()
    asyncio.get_running_loop().call_later(0.1, cleanup.reply.set_result, "committed")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await shielded(cleanup.run())
    assert cleanup.steps == ["sent", "committed", "closed"]


async def test_no_task_is_started_for_the_shield() -> None:
    cleanup = Cleanup()
    asyncio.get_running_loop().call_later(0.01, cleanup.reply.set_result, "done")
    with counting_tasks() as created:
        assert await shielded(cleanup.run()) == "done"
    assert created == []


async def test_closing_the_waiting_coroutine_closes_the_cleanup() -> None:
    """A coroutine closed while it waits (a task destroyed at loop shutdown) closes the
    cleanup it waits on, so the cleanup's ``finally`` blocks run."""
    reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closed: list[bool] = []

    async def cleanup() -> None:
        try:
            await reply
        finally:
            closed.append(True)

    async def request() -> None:
        await shielded(cleanup())

    coro = request()
    waited = coro.send(None)  # suspended in the shield, waiting on the stand-in
    assert "shielded wait" in repr(waited)
    coro.close()
    assert closed == [True]
    assert not reply.cancelled()
