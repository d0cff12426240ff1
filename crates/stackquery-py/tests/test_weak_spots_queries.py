"""One test per PyStackQuery 1.0.2 weak spot of the query cache (the numbers are those of
``shared/reference/pystackquery-weak-spots.md``): gc timers (2, 3), polling (5), the
``cache_max_size`` bound (10, 11), writes racing a fetch (12, 13), ``None`` as data (26)
and per-caller options (28).

Every test here would fail on PyStackQuery 1.0.2 (each docstring says how); time runs on
``looptime``'s virtual clock, so the simulated minutes pass at once.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("looptime")

from stackquery import QueryClient, QueryClientConfig, QueryOptions  # noqa: E402

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def settle() -> None:
    """Lets the loop run what is ready (background refreshes, notifications)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_weak_spot_2_gc_counts_from_the_last_unsubscribe() -> None:
    """Weak spot 2: PyStackQuery armed an entry's gc timer once per lifetime (``_gc_task``
    was never reset), measured from the *first* unsubscribe. Here: unsubscribe at t=0,
    resubscribe at t=5, unsubscribe at t=8 with gc_time=10: the entry is still cached at
    t=17 (past 0+10 and 5+10) and gone right after t=18 (8+10)."""
    client = QueryClient()

    async def fetch() -> str:
        return "v"

    opts = QueryOptions(("gc-rearm",), fetch, gc_time=10.0)
    observer = client.watch(opts)
    stop = observer.subscribe(lambda s: None)
    await settle()
    assert client.get_query_data(("gc-rearm",)) == "v"
    stop()  # t=0: gc armed for t=10
    await asyncio.sleep(5)
    stop = observer.subscribe(lambda s: None)  # t=5: gc disarmed
    await asyncio.sleep(3)
    stop()  # t=8: gc armed for t=18
    await asyncio.sleep(9)  # t=17
    assert client.get_query_data(("gc-rearm",)) == "v", "gc must count from t=8"
    await asyncio.sleep(1.5)  # t=18.5
    assert client.get_query_data(("gc-rearm",)) is None, "gone right after 8+10"


async def test_weak_spot_3_a_removed_entrys_gc_timer_spares_its_successor() -> None:
    """Weak spot 3: PyStackQuery's gc timer closed over the key, so the timer of a removed
    entry later deleted a new, observed entry under the same key. Here: the entry's last
    observer leaves at t=0 (gc due at t=10); it is removed at t=2, re-created and observed; at t=15 the new entry is
    still cached and its observer still hears writes."""
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> int:
        calls["n"] += 1
        return calls["n"]

    opts = QueryOptions(("zombie",), fetch, gc_time=10.0)
    stop = client.watch(opts).subscribe(lambda s: None)
    await settle()
    assert client.get_query_data(("zombie",)) == 1
    stop()  # t=0: gc due at t=10
    await asyncio.sleep(2)
    client.remove_queries(("zombie",))
    assert client.get_query_data(("zombie",)) is None
    seen: list[object] = []
    stop = client.watch(opts).subscribe(lambda s: seen.append(s.data))
    await settle()
    assert client.get_query_data(("zombie",)) == 2
    await asyncio.sleep(13)  # t=15: past the old entry's deadline
    assert client.get_query_data(("zombie",)) == 2, "the old timer deleted the successor"
    client.set_query_data(("zombie",), "written")
    assert seen[-1] == "written", "the observer is still attached"
    stop()
    await asyncio.sleep(11)
    assert client.get_query_data(("zombie",)) is None, "its own gc still works"


async def test_weak_spot_3_an_evicted_entrys_gc_timer_spares_its_successor() -> None:
    """Weak spot 3, by eviction: with ``cache_max_size=1``, an unobserved entry (gc due
    at t=10) is evicted by another key at t=1, then re-created and observed; at t=15 it
    is still cached (PyStackQuery's evicted entry's timer removed it by key)."""
    client = QueryClient(QueryClientConfig(cache_max_size=1))

    async def fetch() -> str:
        return "v"

    opts = QueryOptions(("evicted",), fetch, gc_time=10.0)
    stop = client.watch(opts).subscribe(lambda s: None)
    await settle()
    stop()  # t=0: gc due at t=10
    await asyncio.sleep(1)
    await client.fetch_query(QueryOptions(("other",), fetch))
    assert client.get_query_data(("evicted",)) is None, "evicted"
    stop = client.watch(opts).subscribe(lambda s: None)
    await settle()
    await asyncio.sleep(14)  # t=15
    assert client.get_query_data(("evicted",)) == "v", "the old timer deleted the successor"
    stop()


async def test_weak_spot_5_polling_survives_a_failed_poll() -> None:
    """Weak spot 5: one failed poll killed PyStackQuery's polling for good (the exception
    escaped ``_refetch_loop`` and the task was never restarted). Here the second call
    fails, the others succeed: polling every 100 ms from t=0 to t=1.05 makes exactly 11
    attempts (t=0, 0.1, ..., 1.0; no retries), and the data is the newest."""
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("poll 2 fails")
        return calls["n"]

    observer = client.watch(QueryOptions(("poll-fail",), fetch, refetch_interval=0.1, retry=0))
    stop = observer.subscribe(lambda s: None)
    await asyncio.sleep(1.05)
    stop()
    assert calls["n"] == 11, f"polling stopped after the failure ({calls['n']} attempts)"
    state = client.get_query_state(("poll-fail",))
    assert state is not None and state.is_success and state.data == 11


async def test_weak_spot_10_eviction_spares_in_flight_and_observed_entries() -> None:
    """Weak spot 10: PyStackQuery's LRU bound destroyed entries with a fetch in flight
    (their waiters got ``CancelledError``) or with observers. Here, with
    ``cache_max_size=1``: A's fetch is in flight while B is fetched, and A's waiter still
    gets A's value; an observed entry survives many later keys and keeps its observer."""
    client = QueryClient(QueryClientConfig(cache_max_size=1))
    release = asyncio.Event()

    async def slow_a() -> str:
        await release.wait()
        return "a"

    async def fast(value: str) -> str:
        return value

    waiter = asyncio.ensure_future(client.fetch_query(QueryOptions(("A",), slow_a)))
    await settle()
    assert await client.fetch_query(QueryOptions(("B",), lambda: fast("b"))) == "b"
    release.set()
    assert await waiter == "a", "the in-flight entry was evicted"

    seen: list[object] = []
    stop = client.watch(QueryOptions(("watched",), lambda: fast("w"))).subscribe(
        lambda s: seen.append(s.data)
    )
    await settle()
    for i in range(20):
        await client.fetch_query(QueryOptions(("other", i), lambda: fast("o")))
    assert client.get_query_data(("watched",)) == "w", "the observed entry was evicted"
    client.set_query_data(("watched",), "w2")
    assert seen[-1] == "w2"
    assert len(client._native) <= 3, "the bound still holds for unpinned entries"
    stop()


async def test_weak_spot_11_cache_max_size_zero_is_no_retention() -> None:
    """Weak spot 11: ``cache_max_size=0`` crashed PyStackQuery with ``KeyError`` on the
    first insert. Here 0 means "no retention": a fetch returns its data, concurrent
    callers still share one fetch, an observed entry lives while observed, and nothing
    unpinned is kept. A negative size is a ``ValueError`` at once."""
    client = QueryClient(QueryClientConfig(cache_max_size=0))
    calls = {"n": 0}

    async def fetch() -> str:
        calls["n"] += 1
        await asyncio.sleep(0.1)
        return "v"

    opts = QueryOptions(("zero",), fetch)
    assert await asyncio.gather(*(client.fetch_query(opts) for _ in range(5))) == ["v"] * 5
    assert calls["n"] == 1, "callers share one fetch"
    client.set_query_data(("manual",), 1)
    assert len(client._native) == 0, "nothing unpinned is retained"
    assert client.get_query_data(("zero",)) is None

    seen: list[object] = []
    stop = client.watch(opts).subscribe(lambda s: seen.append(s.data))
    await asyncio.sleep(0.2)
    assert client.get_query_data(("zero",)) == "v" and seen[-1] == "v"
    stop()
    with pytest.raises(ValueError, match="cache_max_size"):
        QueryClient(QueryClientConfig(cache_max_size=-1))


async def test_weak_spot_12_invalidating_during_a_fetch_is_not_lost() -> None:
    """Weak spot 12: invalidating while a fetch was in flight joined that fetch and
    marked its pre-invalidation result fresh (PyStackQuery). Here, with stale_time=60:
    after invalidation during fetch #1, either a second fetch runs, or #1's result stays
    invalidated and the next ``fetch_query`` fetches again. Either way the data ends up
    from a fetch that started after the invalidation."""
    client = QueryClient()
    calls = {"n": 0}
    release = asyncio.Event()

    async def fetch() -> str:
        calls["n"] += 1
        n = calls["n"]
        if n == 1:
            await release.wait()
        return f"v{n}"

    opts = QueryOptions(("inv-race",), fetch, stale_time=60.0)
    first = asyncio.ensure_future(client.fetch_query(opts))
    await settle()
    await client.invalidate_queries(("inv-race",))
    release.set()
    assert await first == "v1"
    await settle()
    await client.fetch_query(opts)
    await settle()
    assert calls["n"] == 2, "the pre-invalidation result was taken as fresh"
    assert client.get_query_data(("inv-race",)) == "v2"
    state = client.get_query_state(("inv-race",))
    assert state is not None and not state.is_invalidated


async def test_weak_spot_13_a_write_during_a_fetch_is_not_overwritten() -> None:
    """Weak spot 13: PyStackQuery stored a fetch's response even when
    ``set_query_data`` had written newer data while the fetch was in flight. Here the
    fetch is held, "new" is written, then the fetch returns "old": the cache holds "new"
    and ``data_updated_at`` never goes backwards."""
    client = QueryClient()
    release = asyncio.Event()

    async def fetch() -> str:
        await release.wait()
        return "old"

    fetching = asyncio.ensure_future(client.fetch_query(QueryOptions(("race",), fetch)))
    await settle()
    await asyncio.sleep(1)
    client.set_query_data(("race",), "new")
    written = client.get_query_state(("race",))
    assert written is not None and written.data_updated_at
    await asyncio.sleep(1)
    release.set()
    await fetching
    await settle()
    state = client.get_query_state(("race",))
    assert state is not None and state.data == "new", "the older response overwrote it"
    assert state.data_updated_at >= written.data_updated_at


async def test_weak_spot_26_none_is_data() -> None:
    """Weak spot 26: PyStackQuery took a fetch returning ``None`` for "no data" and
    fetched again on every call. Here ``None`` is data: with stale_time=60, three calls
    make one fetch, and the state is ``SUCCESS`` with ``None``."""
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> None:
        calls["n"] += 1
        return None

    opts = QueryOptions(("none",), fetch, stale_time=60.0)
    for _ in range(3):
        assert await client.fetch_query(opts) is None
    await settle()
    assert calls["n"] == 1
    state = client.get_query_state(("none",))
    assert state is not None and state.is_success and state.data is None


async def test_weak_spot_28_each_caller_gets_its_own_options() -> None:
    """Weak spot 28: the options of a key's first caller won forever in PyStackQuery;
    later callers' ``stale_time``, ``retry`` and ``query_fn`` were ignored. Here, 10 s
    after A (stale_time=60) fetched, B (stale_time=5, its own function) finds the data
    stale and refreshes it with B's function, while A still finds it fresh; and B's
    ``retry`` decides how many attempts its own fetch makes."""
    client = QueryClient()
    calls: list[str] = []

    async def fetch_a() -> str:
        calls.append("a")
        return "a"

    async def fetch_b() -> str:
        calls.append("b")
        return "b"

    a = QueryOptions(("shared-key",), fetch_a, stale_time=60.0)
    b = QueryOptions(("shared-key",), fetch_b, stale_time=5.0)
    assert await client.fetch_query(a) == "a"
    await asyncio.sleep(10)
    assert await client.fetch_query(a) == "a"
    await settle()
    assert calls == ["a"], "fresh for A (60 s)"
    assert await client.fetch_query(b) == "a", "stale for B (5 s): served, then refreshed"
    await settle()
    assert calls == ["a", "b"], "B's refresh runs B's function"
    assert client.get_query_data(("shared-key",)) == "b"

    attempts = {"n": 0}

    async def failing() -> str:
        attempts["n"] += 1
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await client.fetch_query(QueryOptions(("retry-key",), failing, retry=1))
    assert attempts["n"] == 2, "A's retry=1"
    with pytest.raises(ConnectionError):
        await client.fetch_query(QueryOptions(("retry-key",), failing, retry=0))
    assert attempts["n"] == 3, "B's retry=0: one attempt"
    with pytest.raises(ConnectionError):
        await client.fetch_query(QueryOptions(("retry-key",), failing, retry=2))
    assert attempts["n"] == 6, "C's retry=2: three attempts"
