"""Weak spot 30 of PyStackQuery 1.0.2 (``shared/reference/pystackquery-weak-spots.md``):
prefix filters were linear scans over the whole cache (``cache.py:108-121``)."""

from __future__ import annotations

import time

import pytest

from stackquery import QueryClient, QueryClientConfig

pytestmark = pytest.mark.asyncio


async def _filled(n: int) -> QueryClient:
    client = QueryClient(QueryClientConfig(cache_max_size=n + 10))
    for i in range(n):
        client.set_query_data(("bulk", i), i)
    client.set_query_data(("needle", "x"), "n")
    return client


async def _best_invalidate_time(client: QueryClient, repeats: int = 30) -> float:
    """The fastest of ``repeats`` prefix invalidations of the one ``needle`` entry."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        await client.invalidate_queries(["needle"])
        best = min(best, time.perf_counter() - start)
    return best


async def test_weak_spot_30_prefix_invalidation_goes_through_the_index() -> None:
    """Weak spot 30: PyStackQuery matched a prefix filter by scanning every entry, so
    invalidating one key cost O(N). Here the engine's prefix index finds the match:
    invalidating the 1 ``needle`` entry among 100,000 ``bulk`` entries marks only that
    entry, and its time does not grow with N (N = 10,000 vs 100,000: < 5x; a scan would
    be about 10x)."""
    small = await _filled(10_000)
    large = await _filled(100_000)
    assert len(large._native) == 100_001

    await large.invalidate_queries(["needle"])
    needle = large.get_query_state(("needle", "x"))
    assert needle is not None and needle.is_invalidated
    for i in (0, 1, 50_000, 99_999):
        state = large.get_query_state(("bulk", i))
        assert state is not None and not state.is_invalidated, f"bulk {i} was touched"
    assert await large._native.invalidate_queries(["needle"]) == 1, "one entry matched"

    t_small = await _best_invalidate_time(small)
    t_large = await _best_invalidate_time(large)
    assert t_large < 5 * t_small + 20e-6, (
        f"invalidation grows with N: {t_small * 1e6:.1f} us at 10k, "
        f"{t_large * 1e6:.1f} us at 100k"
    )
