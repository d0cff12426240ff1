"""Small Python helpers the native module calls (kept in Python where asyncio expects
Python objects: a coroutine for ``create_task``, a plain function for ``call_soon``)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


def wake(fut: asyncio.Future[Any]) -> None:
    """Resolves the future a suspended native awaitable is waiting on (once)."""
    if not fut.done():
        fut.set_result(None)


async def drive(awaitable: Any) -> Any:
    """Runs a native awaitable as an asyncio task (the engine's background work)."""
    return await awaitable


class _Call:
    """A storage call or a task started from another thread: cancellable before and
    after it has started."""

    __slots__ = ("task", "cancelled")

    def __init__(self) -> None:
        self.task: asyncio.Future[Any] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


def storage_call(loop: asyncio.AbstractEventLoop, method: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any] | None, done: Any) -> _Call:
    """Runs ``method(*args, **kwargs)`` (a storage object's ``get``, ``set`` or ``delete``)
    as a task on ``loop`` (from any thread) and reports ``done(result, None)`` or
    ``done(None, exception)``. A plain (non-async) method's return value is its result."""
    call = _Call()

    def finished(task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            done(None, asyncio.CancelledError())
            return
        error = task.exception()
        if error is not None:
            done(None, error)
        else:
            done(task.result(), None)

    def start() -> None:
        if call.cancelled:
            done(None, asyncio.CancelledError())
            return
        try:
            result = method(*args, **(kwargs or {}))
            if not inspect.isawaitable(result):
                done(result, None)
                return
            call.task = asyncio.ensure_future(result)
        except BaseException as error:  # noqa: BLE001 - reported to the engine, which logs it
            done(None, error)
            return
        call.task.add_done_callback(finished)

    loop.call_soon_threadsafe(start)
    return call


def cancel_storage_call(loop: asyncio.AbstractEventLoop, call: _Call) -> None:
    """Cancels a storage call whose caller stopped waiting (its timeout passed)."""
    try:
        loop.call_soon_threadsafe(call.cancel)
    except RuntimeError:
        pass  # the loop is closed: nothing runs any more


def spawn_threadsafe(loop: asyncio.AbstractEventLoop, coro: Any) -> _Call:
    """``loop.create_task(coro)`` from another thread; the returned handle cancels it."""
    call = _Call()

    def start() -> None:
        if call.cancelled:
            coro.close()
            return
        call.task = loop.create_task(coro)

    loop.call_soon_threadsafe(start)
    return call
