"""Small Python helpers the native module calls (kept in Python where asyncio expects
Python objects: a coroutine for ``create_task``, a plain function for ``call_soon``)."""

from __future__ import annotations

import asyncio
from typing import Any


def wake(fut: asyncio.Future[Any]) -> None:
    """Resolves the future a suspended native awaitable is waiting on (once)."""
    if not fut.done():
        fut.set_result(None)


async def drive(awaitable: Any) -> Any:
    """Runs a native awaitable as an asyncio task (the engine's background work)."""
    return await awaitable
