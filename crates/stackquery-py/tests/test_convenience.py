"""PyStackQuery's convenience helpers: ``parallel_queries``, ``dependent_query``, the
``query`` decorator and ``CachedQuery``; and the package's public names against
PyStackQuery's ``__all__``."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

pytest.importorskip("looptime")

import stackquery  # noqa: E402
from stackquery import (  # noqa: E402
    CachedQuery,
    QueryClient,
    QueryClientConfig,
    QueryOptions,
    dependent_query,
    parallel_queries,
    query,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

# PyStackQuery 1.0.2's ``__all__`` (StorageBackend is built elsewhere).
REFERENCE_ALL = [
    "QueryClient", "QueryClientConfig", "Query", "QueryOptions", "QueryObserver",
    "QueryState", "QueryStatus", "FetchStatus", "Mutation", "MutationOptions",
    "MutationState", "MutationStatus", "QueryCache", "QueryKey", "hash_key",
    "partial_match", "default_retry_delay", "parallel_queries", "dependent_query",
    "query", "CachedQuery",
]  # fmt: skip


def slow(v: Any, seconds: float, calls: list[Any] | None = None) -> Any:
    async def fetch() -> Any:
        if calls is not None:
            calls.append(v)
        await asyncio.sleep(seconds)
        return v

    return fetch


async def test_every_public_name_of_pystackquery_exists() -> None:
    for name in REFERENCE_ALL:
        assert name in stackquery.__all__, name
        assert hasattr(stackquery, name), name
    for name in ("parallel_queries", "dependent_query", "query", "CachedQuery", "QueryCache"):
        assert inspect.getdoc(getattr(stackquery, name)), f"{name} has a docstring"
    for name, member in vars(CachedQuery).items():
        if not name.startswith("_") or name == "__call__":
            assert inspect.getdoc(member), f"CachedQuery.{name} has a docstring"


async def test_parallel_queries_run_together_and_keep_the_order() -> None:
    client = QueryClient()
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await parallel_queries(
        client,
        QueryOptions(("a",), slow("A", 3)),
        QueryOptions(("b",), slow("B", 1)),
        QueryOptions(("c",), slow("C", 2)),
    )
    assert result == ["A", "B", "C"]
    assert loop.time() - start == pytest.approx(3.0, abs=0.01), "concurrent, not 6 s"
    assert client.get_query_data(("b",)) == "B"


async def test_parallel_queries_go_through_the_cache() -> None:
    client = QueryClient()
    calls: list[Any] = []
    opts = QueryOptions(("cached",), slow("v", 1, calls), stale_time=60)
    assert await parallel_queries(client, opts, opts, opts) == ["v", "v", "v"]
    assert await parallel_queries(client, opts) == ["v"]
    assert calls == ["v"], "one fetch for the duplicates, none for the fresh hit"


async def test_parallel_queries_raise_a_failure_and_cache_the_rest() -> None:
    client = QueryClient()
    failure = ValueError("bad")

    async def fail() -> None:
        raise failure

    with pytest.raises(ValueError) as caught:
        await parallel_queries(
            client,
            QueryOptions(("ok",), slow("fine", 1)),
            QueryOptions(("bad",), fail, retry=0),
        )
    assert caught.value is failure
    await asyncio.sleep(2)
    assert client.get_query_data(("ok",)) == "fine"


async def test_dependent_query_feeds_the_parents_data_to_the_child() -> None:
    client = QueryClient()
    seen: list[Any] = []

    def posts_of(user: dict[str, Any]) -> QueryOptions[list[str]]:
        seen.append(user)
        return QueryOptions(("posts", user["id"]), slow([f"post of {user['id']}"], 1))

    posts = await dependent_query(
        client,
        depends_on=QueryOptions(("user", 7), slow({"id": 7}, 1)),
        then=posts_of,
    )
    assert posts == ["post of 7"]
    assert seen == [{"id": 7}]
    assert client.get_query_data(("user", 7)) == {"id": 7}
    assert client.get_query_data(("posts", 7)) == ["post of 7"]


async def test_dependent_query_stops_when_the_parent_fails() -> None:
    client = QueryClient()

    async def fail() -> None:
        raise LookupError("no user")

    def child(_: Any) -> QueryOptions[Any]:
        raise AssertionError("never called")

    with pytest.raises(LookupError):
        await dependent_query(client, QueryOptions(("user", 0), fail, retry=0), child)


async def test_the_query_decorator_caches_the_function() -> None:
    client = QueryClient()
    calls: list[int] = []

    @query(client, ("users",), stale_time=60, gc_time=120, retry=1)
    async def get_users() -> list[str]:
        calls.append(1)
        await asyncio.sleep(1)
        return ["ada", "alan"]

    assert isinstance(get_users, CachedQuery)
    assert get_users.options.query_key == ("users",)
    assert get_users.options.stale_time == 60 and get_users.options.gc_time == 120
    assert get_users.options.retry == 1
    assert get_users.get_data() is None
    assert await get_users() == ["ada", "alan"]
    assert await get_users() == ["ada", "alan"]
    assert len(calls) == 1
    assert get_users.get_data() == ["ada", "alan"]
    await get_users.invalidate()
    assert await get_users() == ["ada", "alan"], "invalidated: served, refetched behind"
    await asyncio.sleep(2)
    assert len(calls) == 2


async def test_the_decorators_defaults_defer_to_the_client() -> None:
    """Weak spot 27: left unset, the decorator's ``stale_time`` is the client's (60 s
    here); set, even to 0, it wins (PyStackQuery took 0 for "unset")."""
    client = QueryClient(QueryClientConfig(stale_time=60))
    calls: list[str] = []

    @query(client, ("default",))
    async def uses_default() -> str:
        calls.append("default")
        return "d"

    @query(client, ("zero",), stale_time=0)
    async def always_stale() -> str:
        calls.append("zero")
        return "z"

    for _ in range(2):
        await uses_default()
        await always_stale()
        await asyncio.sleep(1)
    assert calls.count("default") == 1, "fresh for the client's 60 s"
    assert calls.count("zero") == 2, "stale at once"
