"""Time on the loop's clock, tested on a virtual one (``looptime``): freshness, gc and
retry delays follow ``loop.time()``, so a simulated hour passes at once.

Weak spot 7: PyStackQuery judged staleness by the wall clock (``time.time()``). Here
the engine's host reads the loop's monotonic clock; under ``looptime`` that clock is
virtual, and these tests would hang or fail if anything still read a real clock.
"""

from __future__ import annotations

import asyncio

import pytest

# Without the plugin these tests would sleep for real (minutes): skip instead of hang.
pytest.importorskip("looptime")

from stackquery import QueryClient, QueryClientConfig, QueryOptions  # noqa: E402

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def test_freshness_follows_the_loops_clock() -> None:
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> int:
        calls["n"] += 1
        return calls["n"]

    opts = QueryOptions(("fresh",), fetch, stale_time=60.0)
    assert await client.fetch_query(opts) == 1
    await asyncio.sleep(59)
    assert await client.fetch_query(opts) == 1
    assert calls["n"] == 1, "fresh at 59 s"
    await asyncio.sleep(2)
    assert await client.fetch_query(opts) == 1, "stale at 61 s: served, then refreshed"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert calls["n"] == 2
    assert client.get_query_data(("fresh",)) == 2


async def test_an_unused_entry_is_collected_after_its_gc_time() -> None:
    client = QueryClient()

    async def fetch() -> str:
        return "v"

    await client.fetch_query(QueryOptions(("gc",), fetch, gc_time=300.0))
    await asyncio.sleep(299)
    assert client.get_query_data(("gc",)) == "v"
    await asyncio.sleep(2)
    assert client.get_query_data(("gc",)) is None, "collected after 300 s unused"


async def test_an_observed_entry_is_kept_past_its_gc_time() -> None:
    """Weak spots 1 and 4: with a subscriber, gc never collects; after the last one
    leaves, the gc time counts from then."""
    client = QueryClient()

    async def fetch() -> str:
        return "v"

    opts = QueryOptions(("kept",), fetch, gc_time=10.0)
    unsubscribe = client.watch(opts).subscribe(lambda s: None)
    await asyncio.sleep(100)
    assert client.get_query_data(("kept",)) == "v"
    unsubscribe()
    await asyncio.sleep(9)
    assert client.get_query_data(("kept",)) == "v"
    await asyncio.sleep(2)
    assert client.get_query_data(("kept",)) is None


async def test_retries_wait_the_default_schedule_on_the_loops_clock() -> None:
    client = QueryClient(QueryClientConfig(retry=3))
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky() -> str:
        attempts.append(loop.time())
        if len(attempts) < 4:
            raise ConnectionError("down")
        return "up"

    start = loop.time()
    assert await client.fetch_query(QueryOptions(("flaky",), flaky)) == "up"
    waits = [b - a for a, b in zip([start, *attempts], attempts)]
    # (looptime's virtual clock moves in steps of 1 ms between some loop turns.)
    assert waits == pytest.approx([0.0, 1.0, 2.0, 4.0], abs=0.01), "1 s, 2 s, 4 s"
