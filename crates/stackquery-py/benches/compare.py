"""stackquery against PyStackQuery 1.0.2, side by side in one process (issue 14).

Run under Python 3.12 with both installed (``pip install pystackquery==1.0.2`` and the
stackquery wheel): ``python benches/compare.py``. Each figure is the median of 5
repetitions, the two libraries' repetitions interleaved. The workloads:
- a fresh hit, ``await client.fetch_query(opts)``;
- the same with ``QueryOptions`` built per call;
- ``get_query_data``;
- a fill of distinct keys through ``fetch_query`` (a ready query function);
- 10,000 concurrent callers of one cold key (``asyncio.gather``), per caller;
- invalidation of 1 key among 100,000 by its prefix (``invalidate_queries``);
- memory per entry: the growth of the process's resident set over a fill of 100,000
  keys, in a fresh subprocess per library (``tracemalloc`` cannot see Rust's
  allocations), the same keys and data for both.

The asyncio floors are measured beside them: an ``await`` of an ``async def`` returning
``d[k]``, and N tasks awaiting one ``asyncio.Future``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import subprocess
import sys
import time

import pystackquery as psq

import stackquery as sq

REPS = 5
N_HIT = 100_000
N_FILL = 20_000
N_CALLERS = 10_000
N_INVALIDATE = 100_000
N_MEMORY = 100_000


async def ready() -> str:
    return "a user record"


async def hit(lib, build_per_call: bool) -> float:
    client = lib.QueryClient()
    opts = lib.QueryOptions(("user", "1"), ready, stale_time=3600.0)
    await client.fetch_query(opts)
    t = time.perf_counter()
    if build_per_call:
        for _ in range(N_HIT):
            await client.fetch_query(lib.QueryOptions(("user", "1"), ready, stale_time=3600.0))
    else:
        for _ in range(N_HIT):
            await client.fetch_query(opts)
    return (time.perf_counter() - t) / N_HIT


async def get(lib) -> float:
    client = lib.QueryClient()
    opts = lib.QueryOptions(("user", "1"), ready, stale_time=3600.0)
    await client.fetch_query(opts)
    key = ("user", "1")
    t = time.perf_counter()
    for _ in range(N_HIT):
        client.get_query_data(key)
    return (time.perf_counter() - t) / N_HIT


async def fill(lib) -> float:
    client = lib.QueryClient(lib.QueryClientConfig(cache_max_size=N_FILL * 2))
    opts = [lib.QueryOptions(("item", str(i)), ready, stale_time=3600.0) for i in range(N_FILL)]
    t = time.perf_counter()
    for o in opts:
        await client.fetch_query(o)
    return N_FILL / (time.perf_counter() - t)


async def cold_key(lib) -> float:
    client = lib.QueryClient()
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "v"

    opts = lib.QueryOptions(("cold",), slow)
    t = time.perf_counter()
    waiters = [asyncio.ensure_future(client.fetch_query(opts)) for _ in range(N_CALLERS)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*waiters)
    return (time.perf_counter() - t) / N_CALLERS


_INVALIDATION_CLIENTS: dict[str, object] = {}
_INVALIDATED = itertools.count(1)


async def invalidate(lib) -> float:
    """One ``invalidate_queries`` by a prefix that matches 1 key of 100,000 (the cache is
    filled once per library; each repetition invalidates another key)."""
    client = _INVALIDATION_CLIENTS.get(lib.__name__)
    if client is None:
        client = lib.QueryClient(lib.QueryClientConfig(cache_max_size=N_INVALIDATE * 2))
        for i in range(N_INVALIDATE):
            await client.fetch_query(lib.QueryOptions(("item", str(i)), ready, stale_time=3600.0))
        _INVALIDATION_CLIENTS[lib.__name__] = client
    key = ("item", str(next(_INVALIDATED) * 7919 % N_INVALIDATE))
    gc.collect()
    t = time.perf_counter()
    await client.invalidate_queries(key)
    return time.perf_counter() - t


_MEMORY_PROBE = '''
import asyncio, gc, sys
lib = __import__(sys.argv[1])
N = int(sys.argv[2])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
async def ready():
    return "a user record"
async def main():
    client = lib.QueryClient(lib.QueryClientConfig(cache_max_size=N * 2))
    keys = [("item", str(i)) for i in range(N)]
    await client.fetch_query(lib.QueryOptions(("warm",), ready, stale_time=3600.0))
    gc.collect()
    before = rss()
    for k in keys:
        await client.fetch_query(lib.QueryOptions(k, ready, stale_time=3600.0))
    gc.collect()
    print((rss() - before) / N)
asyncio.run(main())
'''


async def memory(lib) -> float:
    """Bytes of resident set per entry, over a fill of 100,000 keys in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, lib.__name__, str(N_MEMORY)],
        check=True, capture_output=True, text=True,
    )
    return float(out.stdout.strip())


async def floor_await() -> float:
    d = {"k": "v"}

    async def g(k: str) -> str:
        return d[k]

    t = time.perf_counter()
    for _ in range(N_HIT):
        await g("k")
    return (time.perf_counter() - t) / N_HIT


async def floor_future() -> float:
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    fut = loop.create_future()

    async def w() -> str:
        return await fut

    waiters = [asyncio.ensure_future(w()) for _ in range(N_CALLERS)]
    await asyncio.sleep(0)
    fut.set_result("v")
    await asyncio.gather(*waiters)
    return (time.perf_counter() - t) / N_CALLERS


async def median(make) -> float:
    return statistics.median([await make() for _ in range(REPS)])


async def main() -> None:
    rows = [
        ("fresh hit, options held (µs)", lambda lib: hit(lib, False), 1e6),
        ("fresh hit, options built per call (µs)", lambda lib: hit(lib, True), 1e6),
        ("get_query_data (µs)", get, 1e6),
        (f"fill {N_FILL:,} keys (keys/s)", fill, 1),
        (f"cold key, {N_CALLERS:,} callers (µs per caller)", cold_key, 1e6),
        (f"invalidate 1 of {N_INVALIDATE:,} keys by prefix (µs)", invalidate, 1e6),
        (f"memory per entry, {N_MEMORY:,} entries (bytes of RSS)", memory, 1),
    ]
    print(f"Python {sys.version.split()[0]}; median of {REPS}")
    print("| workload | stackquery | PyStackQuery 1.0.2 | ratio |")
    print("|---|---:|---:|---:|")
    cold = None
    floor_wakes: list[float] = []
    for name, make, scale in rows:
        # Interleaved (ours, theirs, ours, ...): a change of load on this shared machine
        # falls on both.
        ours_runs, theirs_runs = [], []
        for _ in range(REPS):
            ours_runs.append(await make(sq))
            theirs_runs.append(await make(psq))
            if make is cold_key:
                floor_wakes.append(await floor_future())
        ours = statistics.median(ours_runs) * scale
        theirs = statistics.median(theirs_runs) * scale
        print(f"| {name} | {ours:,.3f} | {theirs:,.3f} | {ours / theirs:.2f}× |")
        if make is cold_key:
            cold = (ours, theirs)
    floor_hit = await median(floor_await) * 1e6
    floor_wake = statistics.median(floor_wakes) * 1e6
    assert cold is not None
    ours, theirs = cold
    print(
        f"| cold key: per caller above the floor (µs) | {ours - floor_wake:,.3f} | "
        f"{theirs - floor_wake:,.3f} | {(ours - floor_wake) / (theirs - floor_wake):.2f}× |"
    )
    print(f"| cold key: per caller ÷ the floor | {ours / floor_wake:.2f}× | {theirs / floor_wake:.2f}× | |")
    print(f"| asyncio floor: await of an async def returning d[k] (µs) | {floor_hit:.3f} | | |")
    print(
        f"| asyncio floor: {N_CALLERS:,} tasks awaiting one future (µs per task, measured "
        f"between the cold-key runs) | {floor_wake:.3f} | | |"
    )
    print(f"(run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load {' '.join(open('/proc/loadavg').read().split()[:3])})")


if __name__ == "__main__":
    asyncio.run(main())
