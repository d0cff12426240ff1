"""Weak spot 38 (``shared/reference/pystackquery-weak-spots.md``): PyStackQuery's suite
slept for real. ``conftest.py`` fails any test here that waits more than 0.5 s of real
time; these tests check that the meter behind that rule sees real waits and that the
virtual clock makes none."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from stackquery import QueryClient, QueryOptions

pytestmark = pytest.mark.asyncio


async def test_weak_spot_38_the_meter_sees_a_real_sleep(real_wait: Callable[[], float]) -> None:
    """A real 50 ms ``asyncio.sleep`` (no ``looptime``) shows up in the meter, so a
    test that slept 0.5 s for real would be caught."""
    before = real_wait()
    start = time.perf_counter()
    await asyncio.sleep(0.05)
    assert time.perf_counter() - start >= 0.05
    assert real_wait() - before >= 0.045


@pytest.mark.looptime
async def test_weak_spot_38_an_hour_on_the_virtual_clock_waits_for_nothing(
    real_wait: Callable[[], float],
) -> None:
    """On the virtual clock an hour of staleness and gc passes with (almost) no real
    waiting: the way every time-based test here runs."""
    client = QueryClient()

    async def fetch() -> str:
        return "v"

    before = real_wait()
    await client.fetch_query(QueryOptions(("hour",), fetch, stale_time=1800.0, gc_time=3600.0))
    await asyncio.sleep(3601)
    assert client.get_query_data(("hour",)) is None, "collected after an hour"
    assert real_wait() - before < 0.05
