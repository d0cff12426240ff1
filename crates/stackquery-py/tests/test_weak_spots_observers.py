"""Weak spot 24 of PyStackQuery 1.0.2 (``shared/reference/pystackquery-weak-spots.md``):
``select`` work and redundant listener calls."""

from __future__ import annotations

import asyncio

import pytest

from stackquery import QueryClient, QueryOptions

pytestmark = pytest.mark.asyncio


async def test_weak_spot_24_select_runs_once_per_change_and_equal_selections_are_quiet() -> None:
    """Weak spot 24: PyStackQuery ran ``select`` again for every listener and every read
    of ``result``, and called listeners even when the selected value had not changed.
    Here, with two listeners and repeated reads, ``select`` runs once per data change,
    and a write whose selection equals the previous one calls no listener."""
    client = QueryClient()
    runs = {"n": 0}

    def count_of(data: dict[str, object]) -> int:
        runs["n"] += 1
        return len(data["items"])  # type: ignore[arg-type]

    async def fetch() -> dict[str, object]:
        return {"items": [1, 2], "etag": "x"}

    observer = client.watch(QueryOptions(("sel24",), fetch, select=count_of))
    a: list[object] = []
    b: list[object] = []
    stop_a = observer.subscribe(lambda s: a.append(s.data))
    stop_b = observer.subscribe(lambda s: b.append(s.data))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert a[-1] == 2 and b[-1] == 2
    for _ in range(3):
        assert observer.result.data == 2
    assert runs["n"] == 1, f"select ran {runs['n']} times for one data value"

    heard = (len(a), len(b))
    client.set_query_data(("sel24",), {"items": [3, 4], "etag": "y"})  # same count
    for _ in range(3):
        assert observer.result.data == 2
    assert (len(a), len(b)) == heard, "listeners called for an unchanged selection"
    assert runs["n"] == 2, "once for the new data"

    client.set_query_data(("sel24",), {"items": [5], "etag": "z"})
    assert a[-1] == 1 and b[-1] == 1
    assert (len(a), len(b)) == (heard[0] + 1, heard[1] + 1)
    assert runs["n"] == 3
    stop_a()
    stop_b()
