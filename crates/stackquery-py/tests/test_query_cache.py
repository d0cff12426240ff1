"""``QueryCache`` (``client.cache``): PyStackQuery's cache API as a view over the engine.

The entries live in the Rust engine; the cache object keeps nothing of its own, so what
it shows is always what the engine holds (fetches, writes, removals, gc).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytest.importorskip("looptime")

from stackquery import (  # noqa: E402
    Query,
    QueryCache,
    QueryClient,
    QueryClientConfig,
    QueryOptions,
    QueryStatus,
    hash_key,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


def value(v: Any) -> Any:
    async def fetch() -> Any:
        return v

    return fetch


async def test_the_cache_is_one_view_of_the_clients_entries() -> None:
    client = QueryClient()
    cache = client.cache
    assert isinstance(cache, QueryCache)
    assert client.cache is cache
    assert cache.__slots__ == ("_client",), "no second dictionary of entries"
    assert len(cache) == 0
    await client.fetch_query(QueryOptions(("users", "list"), value([1, 2])))
    client.set_query_data(("user", "1"), {"id": 1})
    assert len(cache) == 2
    client.remove_queries(("user",))
    assert len(cache) == 1
    assert ("user", "1") not in cache


async def test_get_by_key_or_by_key_hash() -> None:
    client = QueryClient()
    await client.fetch_query(QueryOptions(("user", 7, True), value("ada")))
    by_key = client.cache.get(("user", 7, True))
    by_hash = client.cache.get(hash_key(("user", 7, True)))
    assert by_key is not None and by_hash is not None
    for q in (by_key, by_hash):
        assert isinstance(q, Query)
        assert q.key == ("user", 7, True)
        assert q.key_hash == hash_key(("user", 7, True))
        assert q.state.status == QueryStatus.SUCCESS and q.state.data == "ada"
    assert client.cache.get(("user", 8, True)) is None
    assert client.cache.get(hash_key(("nobody",))) is None
    with pytest.raises(ValueError):
        client.cache.get("not a key hash")


async def test_contains_takes_keys_and_hashes() -> None:
    client = QueryClient()
    client.set_query_data(("a", "b"), 1)
    assert ("a", "b") in client.cache
    assert hash_key(("a", "b")) in client.cache
    assert ("a",) not in client.cache, "membership is exact, not by prefix"
    assert 42 not in client.cache
    assert "garbage" not in client.cache


async def test_find_all_filters_by_prefix_through_the_engine() -> None:
    """Weak spot 29: a list filter matches tuple keys (PyStackQuery compared
    ``str(key)`` prefixes, so ``["user"]`` never matched ``("user", "1")``)."""
    client = QueryClient()
    for key in [("user", "2"), ("users", "list"), ("user", "1", "posts"), ("user", "1")]:
        client.set_query_data(key, key[-1])
    keys = [q.key for q in client.cache.find_all(("user",))]
    assert keys == [("user", "1"), ("user", "1", "posts"), ("user", "2")], (
        "prefix by whole parts (not 'users'), sorted"
    )
    assert [q.key for q in client.cache.find_all(["user", "1"])] == [
        ("user", "1"),
        ("user", "1", "posts"),
    ]
    assert len(client.cache.find_all()) == 4
    assert client.cache.find_all(("nothing",)) == []
    assert client.cache.keys(["users"]) == [("users", "list")]


async def test_remove_is_exact_and_clear_empties() -> None:
    client = QueryClient()
    client.set_query_data(("user", "1"), "one")
    client.set_query_data(("user", "1", "posts"), ["p"])
    client.cache.remove(("user", "1"))
    assert client.get_query_data(("user", "1")) is None
    assert client.get_query_data(("user", "1", "posts")) == ["p"], "children stay"
    client.cache.remove(hash_key(("user", "1", "posts")))
    assert len(client.cache) == 0
    client.cache.remove(("never",))  # nothing to remove: no error
    client.set_query_data(("x",), 1)
    client.set_query_data(("y",), 2)
    client.cache.clear()
    assert len(client.cache) == 0 and client.cache.find_all() == []


async def test_a_query_from_the_cache_refetches_with_the_engines_function() -> None:
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> int:
        calls["n"] += 1
        await asyncio.sleep(1)
        return calls["n"]

    await client.fetch_query(QueryOptions(("counter",), fetch, stale_time=60))
    query = client.cache.get(("counter",))
    assert query is not None and query.options is None
    assert await query.fetch() == 2, "always fetches, like Query.fetch"
    assert client.get_query_data(("counter",)) == 2
    with pytest.raises(TypeError):
        query.pause()


async def test_a_query_from_the_cache_raises_its_fetch_error() -> None:
    client = QueryClient()
    outcomes: list[Any] = ["ok", PermissionError("denied")]

    async def fetch() -> str:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return str(out)

    await client.fetch_query(QueryOptions(("perm",), fetch, retry=0))
    query = client.cache.get(("perm",))
    assert query is not None
    with pytest.raises(PermissionError):
        await query.fetch()


async def test_collected_entries_leave_the_view() -> None:
    client = QueryClient(QueryClientConfig(gc_time=10))
    await client.fetch_query(QueryOptions(("gc",), value("v")))
    assert ("gc",) in client.cache
    await asyncio.sleep(11)
    assert ("gc",) not in client.cache and len(client.cache) == 0


async def test_max_size_bounds_the_engine() -> None:
    client = QueryClient(QueryClientConfig(cache_max_size=3))
    assert client.cache.max_size == 3
    assert client.cache.storage is None
    for i in range(10):
        client.set_query_data(("k", i), i)
    assert len(client.cache) <= 3
    assert len(client.cache.find_all(("k",))) == len(client.cache)


async def test_a_cache_made_on_its_own_has_a_client() -> None:
    cache = QueryCache(max_size=5)
    assert cache.max_size == 5
    cache.client.set_query_data(("solo",), 1)
    assert len(cache) == 1 and ("solo",) in cache


async def test_add_moves_a_query_into_this_cache() -> None:
    source = QueryClient()
    target = QueryClient()
    query = Query(QueryOptions(("moved",), value("fetched")), client=source)
    assert await query.fetch() == "fetched"
    target.cache.add(query)
    assert target.get_query_data(("moved",)) == "fetched"
    assert query.state.data == "fetched"
    assert await query.fetch() == "fetched"
    assert ("moved",) in target.cache


async def test_prefix_lookups_cost_the_matches_not_the_cache() -> None:
    """Weak spot 30: PyStackQuery's ``find_all`` scanned every entry. Finding 10
    matches among 50,000 entries costs about what it costs among 50 (the engine's prefix
    index), far from the 1000x a scan would take."""

    def fill(n: int) -> QueryClient:
        client = QueryClient(QueryClientConfig(cache_max_size=100_000))
        for i in range(n):
            client.set_query_data(("other", i), i)
        for i in range(10):
            client.set_query_data(("wanted", i), i)
        return client

    def best(client: QueryClient) -> float:
        times = []
        for _ in range(50):
            t = time.perf_counter()
            found = client.cache.find_all(("wanted",))
            times.append(time.perf_counter() - t)
            assert len(found) == 10
        return min(times)

    small = fill(50)
    large = fill(50_000)
    assert len(large.cache) == 50_010
    assert best(large) < 20 * best(small) + 50e-6
