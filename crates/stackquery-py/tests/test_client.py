"""The fetch path of ``QueryClient`` on the Rust engine, driven from asyncio."""

from __future__ import annotations

import asyncio

import pytest

from stackquery import QueryClient, QueryClientConfig, QueryOptions

pytestmark = pytest.mark.asyncio


def counter(value: object = "data"):
    calls = {"n": 0}

    async def fetch() -> object:
        calls["n"] += 1
        return value

    return fetch, calls


async def test_fetch_then_fresh_hit_calls_the_function_once() -> None:
    client = QueryClient()
    fetch, calls = counter()
    opts = QueryOptions(("users",), fetch, stale_time=60.0)
    assert await client.fetch_query(opts) == "data"
    assert await client.fetch_query(opts) == "data"
    assert calls["n"] == 1
    assert client.get_query_data(("users",)) == "data"


async def test_a_fresh_hit_completes_without_a_task_switch() -> None:
    """Issue 14: a fresh hit completes in the caller's own step: no thread hop, no task,
    not even one turn of the loop (a callback scheduled before it has not run after)."""
    client = QueryClient()
    fetch, _ = counter()
    opts = QueryOptions(("hit",), fetch, stale_time=60.0)
    await client.fetch_query(opts)
    loop = asyncio.get_running_loop()
    ran = []
    loop.call_soon(ran.append, True)
    tasks = len(asyncio.all_tasks())
    assert await client.fetch_query(opts) == "data"
    assert ran == [], "the loop did not turn"
    assert len(asyncio.all_tasks()) == tasks


async def test_a_query_function_that_returns_at_once_runs_without_a_task() -> None:
    """Issue 14: a coroutine that returns without awaiting is driven inline (the first
    entry starts the client's timer task once; no task per fetch after that)."""
    client = QueryClient()
    first, _ = counter()
    await client.fetch_query(QueryOptions(("warm",), first))
    loop = asyncio.get_running_loop()
    ran = []
    loop.call_soon(ran.append, True)
    tasks = len(asyncio.all_tasks())
    fetch, calls = counter(42)
    assert await client.fetch_query(QueryOptions(("cold",), fetch)) == 42
    assert calls["n"] == 1
    assert ran == [], "driven inline: the loop did not turn"
    assert len(asyncio.all_tasks()) == tasks


async def test_concurrent_callers_share_one_fetch() -> None:
    client = QueryClient()
    calls = {"n": 0}
    gate = asyncio.Event()

    async def slow() -> str:
        calls["n"] += 1
        await gate.wait()
        return "shared"

    opts = QueryOptions(("slow",), slow)
    waiters = [asyncio.ensure_future(client.fetch_query(opts)) for _ in range(100)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiters) == ["shared"] * 100
    assert calls["n"] == 1


async def test_every_waiter_receives_the_same_exception_object() -> None:
    """Issue 14: the query function's exception is carried through the engine as the
    object itself: every deduplicated waiter raises that very object."""
    client = QueryClient(QueryClientConfig(retry=0))
    gate = asyncio.Event()

    class Boom(Exception):
        pass

    async def failing() -> None:
        await gate.wait()
        raise Boom("upstream down")

    opts = QueryOptions(("boom",), failing)
    waiters = [asyncio.ensure_future(client.fetch_query(opts)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    errors = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(e, Boom) for e in errors)
    assert all(e is errors[0] for e in errors)


async def test_a_cancelled_caller_does_not_cancel_the_fetch_for_the_others() -> None:
    """Weak spot 9: in PyStackQuery one caller's cancellation cancelled the shared fetch
    for every waiter. Here the caller that started it is cancelled mid-fetch, and the one
    that joined still gets the value, from the one call."""
    client = QueryClient()
    calls = {"n": 0}
    gate = asyncio.Event()

    async def slow() -> str:
        calls["n"] += 1
        await gate.wait()
        return "value"

    opts = QueryOptions(("shared",), slow)
    starter = asyncio.ensure_future(client.fetch_query(opts))
    await asyncio.sleep(0)
    joiner = asyncio.ensure_future(client.fetch_query(opts))
    await asyncio.sleep(0)
    starter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starter
    gate.set()
    assert await asyncio.wait_for(joiner, 1.0) == "value"
    assert calls["n"] == 1


async def test_stale_data_is_served_and_refreshed_once_in_the_background() -> None:
    client = QueryClient()
    values = iter(["v1", "v2"])

    async def fetch() -> str:
        return next(values)

    opts = QueryOptions(("swr",), fetch, stale_time=0.0)
    assert await client.fetch_query(opts) == "v1"
    assert await client.fetch_query(opts) == "v1", "stale data at once"
    await asyncio.sleep(0.01)
    assert client.get_query_data(("swr",)) == "v2"


async def test_a_per_query_zero_stale_time_beats_the_client_default() -> None:
    """Weak spot 27: PyStackQuery took an explicit per-query ``stale_time=0`` for
    "unset" and used the client default of 60 s instead."""
    client = QueryClient(QueryClientConfig(stale_time=60.0))
    fetch, calls = counter()
    opts = QueryOptions(("zero",), fetch, stale_time=0.0)
    await client.fetch_query(opts)
    await client.fetch_query(opts)
    await asyncio.sleep(0.01)
    assert calls["n"] == 2, "stale at once: one background refetch"


async def test_set_query_data_on_an_unknown_key_creates_the_entry() -> None:
    """Weak spot 15: PyStackQuery silently ignored a write to a key it did not hold."""
    client = QueryClient()
    client.set_query_data(("manual",), {"a": 1})
    assert client.get_query_data(("manual",)) == {"a": 1}


async def test_invalidation_by_a_list_prefix_marks_tuple_keys_stale() -> None:
    """Weak spot 29: a list filter never matched tuple keys in PyStackQuery."""
    client = QueryClient()
    values = iter(["old", "new"])

    async def fetch() -> str:
        return next(values)

    opts = QueryOptions(("todos", 1), fetch, stale_time=3600.0)
    assert await client.fetch_query(opts) == "old"
    await client.invalidate_queries(["todos"])
    assert await client.fetch_query(opts) == "old", "invalidated: served, then refetched"
    await asyncio.sleep(0.01)
    assert client.get_query_data(("todos", 1)) == "new"


async def test_a_query_fn_that_is_not_async_is_a_clear_type_error() -> None:
    client = QueryClient()
    with pytest.raises(TypeError, match="query_fn must be an async function"):
        QueryOptions(("k",), "not callable")  # type: ignore[arg-type]

    calls = {"n": 0}

    def not_async() -> int:
        calls["n"] += 1
        return 1

    with pytest.raises(TypeError, match="query_fn must be an async function"):
        await client.fetch_query(QueryOptions(("sync",), not_async))  # type: ignore[arg-type]
    assert calls["n"] == 1, "a bug in the caller's code is not retried"
    # The client is still usable.
    fetch, _ = counter()
    assert await client.fetch_query(QueryOptions(("after",), fetch)) == "data"


async def test_bad_keys_and_durations_are_clear_errors() -> None:
    fetch, _ = counter()
    with pytest.raises(TypeError, match="a query key must be a tuple"):
        QueryOptions(["users"], fetch)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stale_time must be a number of seconds"):
        QueryOptions(("k",), fetch, stale_time=-1.0)
    # A field changed after construction is checked (and used) at the next fetch.
    client = QueryClient()
    opts = QueryOptions(("k",), fetch, stale_time=60.0)
    opts.gc_time = float("nan")
    with pytest.raises(ValueError, match="gc_time must be a number of seconds"):
        client.fetch_query(opts)


async def test_a_changed_field_is_used_by_the_next_fetch() -> None:
    client = QueryClient()
    fetch, calls = counter()
    opts = QueryOptions(("changed",), fetch, stale_time=3600.0)
    await client.fetch_query(opts)
    opts.stale_time = 0.0
    await client.fetch_query(opts)
    await asyncio.sleep(0.01)
    assert calls["n"] == 2, "stale under the new stale_time: refetched"


async def test_get_query_state_reports_status_data_and_the_raised_error() -> None:
    from stackquery import FetchStatus, QueryStatus

    client = QueryClient(QueryClientConfig(retry=0))
    assert client.get_query_state(("none",)) is None
    fetch, _ = counter({"x": 1})
    await client.fetch_query(QueryOptions(("ok",), fetch))
    state = client.get_query_state(("ok",))
    assert state is not None
    assert (state.status, state.fetch_status) == (QueryStatus.SUCCESS, FetchStatus.IDLE)
    assert state.data == {"x": 1} and state.is_success and not state.is_invalidated
    assert isinstance(state.data_updated_at, float) and state.data_updated_at > 1e9

    boom = ValueError("no")

    async def failing() -> None:
        raise boom

    with pytest.raises(ValueError):
        await client.fetch_query(QueryOptions(("bad",), failing))
    state = client.get_query_state(("bad",))
    assert state is not None and state.is_error
    assert state.error is boom, "the very exception the query function raised"
    assert state.fetch_failure_count == 1

    await client.invalidate_queries(("ok",))
    state = client.get_query_state(("ok",))
    assert state is not None and state.is_invalidated
    # As in PyStackQuery (its own suite checks it): an invalidated state reads 0.0.
    assert state.data_updated_at == 0.0


async def test_remove_reset_and_cancel() -> None:
    client = QueryClient()
    fetch, calls = counter("v")
    opts = QueryOptions(("a", 1), fetch, stale_time=3600.0)
    await client.fetch_query(opts)
    client.remove_queries(["a"])
    assert client.get_query_state(("a", 1)) is None
    await client.fetch_query(opts)
    assert calls["n"] == 2, "removed: fetched again"

    client.reset_queries(("a",))
    state = client.get_query_state(("a", 1))
    assert state is not None and state.data is None and state.is_idle

    gate = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await gate.wait()
        return "late"

    waiter = asyncio.ensure_future(client.fetch_query(QueryOptions(("slow",), slow)))
    await started.wait()
    assert await client.cancel_queries(("slow",)) == 1
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert client.get_query_data(("slow",)) is None


async def test_a_query_on_its_own_fetches_on_every_call_and_reports_its_state() -> None:
    from stackquery import Query

    calls = {"n": 0}

    async def fetch() -> int:
        calls["n"] += 1
        return calls["n"]

    query = Query(QueryOptions(("own",), fetch, stale_time=3600.0))
    assert query.state.is_idle
    assert await query.fetch() == 1
    assert await query.fetch() == 2, "fetch() fetches even when the data is fresh"
    assert query.state.is_success and query.state.data == 2
    query.pause()
    assert query.is_paused
    query.resume(refetch=False)
    assert not query.is_paused


async def test_woken_callers_resume_in_their_own_context_and_a_cancel_keeps_its_message() -> None:
    """The callers of a flight are woken together (one loop callback for the batch): each
    still resumes in its own task's context, and a caller cancelled while it waits gets
    ``CancelledError`` with the message given to ``cancel`` while the others get the value."""
    import contextvars

    var: contextvars.ContextVar[int] = contextvars.ContextVar("caller")
    client = QueryClient()
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "value"

    opts = QueryOptions(("batch",), slow)

    async def caller(i: int) -> tuple[int, str]:
        var.set(i)
        try:
            value = await client.fetch_query(opts)
        except asyncio.CancelledError as e:
            return var.get(), f"cancelled: {e.args[0]}"
        return var.get(), value

    tasks = [asyncio.ensure_future(caller(i)) for i in range(50)]
    await asyncio.sleep(0)
    tasks[7].cancel("seven is gone")
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[7] == (7, "cancelled: seven is gone")
    assert [r for i, r in enumerate(results) if i != 7] == [(i, "value") for i in range(50) if i != 7]
