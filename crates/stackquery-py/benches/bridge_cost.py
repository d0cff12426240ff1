"""What a bridge to a tokio thread would cost, against staying on the asyncio loop.

The design question of the Python package (DESIGN.md): drive Python query functions
from a Rust runtime on another thread (a bridge), or keep the engine's decisions in Rust
and run every Python coroutine on the caller's loop. This measures, in plain asyncio,
the pieces each design pays per operation:

- ``inline await``: ``await`` of an ``async def`` returning ``d[k]`` (the asyncio floor
  of a fresh hit: what staying on the loop costs at least);
- ``thread hop``: one round trip loop -> other thread -> loop (``call_soon_threadsafe``
  into a worker's queue, the result back through ``call_soon_threadsafe`` resolving an
  ``asyncio.Future``): what a bridge pays at least once per cold fetch (twice when the
  query function itself must come back to the loop);
- ``wake N waiters on the loop``: N tasks awaiting one future, resolved on the loop;
- ``wake N waiters from a thread``: the same N futures resolved one by one from another
  thread with ``call_soon_threadsafe`` (a bridge whose waiters are asyncio futures).

Run: ``python benches/bridge_cost.py`` (any Python >= 3.11; no package needed).
"""

from __future__ import annotations

import asyncio
import queue
import statistics
import sys
import threading
import time

N_AWAIT = 200_000
N_HOPS = 5_000
N_WAITERS = 10_000
REPS = 5


async def inline_await() -> float:
    d = {"k": 1}

    async def get(k: str) -> int:
        return d[k]

    t = time.perf_counter()
    for _ in range(N_AWAIT):
        await get("k")
    return (time.perf_counter() - t) / N_AWAIT


def worker(q: queue.SimpleQueue) -> None:
    while True:
        item = q.get()
        if item is None:
            return
        loop, fut, value = item
        loop.call_soon_threadsafe(fut.set_result, value)


async def thread_hop(q: queue.SimpleQueue) -> float:
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    for i in range(N_HOPS):
        fut = loop.create_future()
        q.put((loop, fut, i))
        await fut
    return (time.perf_counter() - t) / N_HOPS


async def wake_on_loop() -> float:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    waiters = [asyncio.ensure_future(_wait(fut)) for _ in range(N_WAITERS)]
    await asyncio.sleep(0)
    t = time.perf_counter()
    fut.set_result(1)
    await asyncio.gather(*waiters)
    return (time.perf_counter() - t) / N_WAITERS


async def _wait(fut: asyncio.Future) -> int:
    return await fut


async def wake_from_thread() -> float:
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(N_WAITERS)]
    waiters = [asyncio.ensure_future(_wait(f)) for f in futs]
    await asyncio.sleep(0)
    t = time.perf_counter()

    def resolve_all() -> None:
        for f in futs:
            loop.call_soon_threadsafe(f.set_result, 1)

    threading.Thread(target=resolve_all).start()
    await asyncio.gather(*waiters)
    return (time.perf_counter() - t) / N_WAITERS


async def main() -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()
    th = threading.Thread(target=worker, args=(q,), daemon=True)
    th.start()
    rows = {
        "inline await (asyncio floor of a hit)": [await inline_await() for _ in range(REPS)],
        "thread hop, loop -> thread -> loop": [await thread_hop(q) for _ in range(REPS)],
        f"wake {N_WAITERS:,} waiters on the loop (per waiter)": [
            await wake_on_loop() for _ in range(REPS)
        ],
        f"wake {N_WAITERS:,} waiters from a thread (per waiter)": [
            await wake_from_thread() for _ in range(REPS)
        ],
    }
    q.put(None)
    print(f"Python {sys.version.split()[0]}, {REPS} repetitions, median (min - max):")
    for name, xs in rows.items():
        us = [x * 1e6 for x in xs]
        print(f"  {name}: {statistics.median(us):.3f} us ({min(us):.3f} - {max(us):.3f})")


if __name__ == "__main__":
    asyncio.run(main())
