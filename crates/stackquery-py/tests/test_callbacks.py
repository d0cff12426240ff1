"""``QueryOptions`` callbacks (``on_success``, ``on_error``, ``on_settled``) and
``placeholder_data``.

Weak spot 16: PyStackQuery called ``on_success``/``on_settled`` inside the fetch's
``try``, so a raising callback counted as a failed fetch: the query function ran again
(retries) and the query ended in ``ERROR``. Weak spot 25: a cold ``fetch_query`` with
``placeholder_data`` returned the placeholder as its result, and the placeholder sat in
the state as ``SUCCESS`` data (and was persisted).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

pytest.importorskip("looptime")

from stackquery import (  # noqa: E402
    QueryClient,
    QueryClientConfig,
    QueryOptions,
    QueryState,
    QueryStatus,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


@pytest.fixture
def reported(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Exceptions reported through ``sys.unraisablehook``."""
    seen: list[BaseException] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: seen.append(u.exc_value))
    return seen


async def test_on_success_and_on_settled_run_once_after_the_state_is_success() -> None:
    client = QueryClient()
    events: list[tuple[Any, ...]] = []
    loop_thread = threading.get_ident()

    async def fetch() -> str:
        await asyncio.sleep(1)
        return "data"

    def on_success(data: str) -> None:
        state = client.get_query_state(("cb",))
        assert state is not None
        events.append(("success", data, state.status, threading.get_ident() == loop_thread))

    def on_settled(data: str | None, error: Exception | None) -> None:
        events.append(("settled", data, error))

    opts = QueryOptions(("cb",), fetch, on_success=on_success, on_settled=on_settled)
    results = await asyncio.gather(*(client.fetch_query(opts) for _ in range(10)))
    assert results == ["data"] * 10
    assert events == [
        ("success", "data", QueryStatus.SUCCESS, True),
        ("settled", "data", None),
    ], "once per fetch (not per caller), on the loop's thread, after the write"


async def test_callbacks_ran_before_an_inline_fetch_returns() -> None:
    """A query function that returns at once completes inside the caller's first step;
    the callbacks still run before its ``await`` returns."""
    client = QueryClient()
    events: list[str] = []

    async def fetch() -> int:
        return 1

    opts = QueryOptions(("inline",), fetch, on_success=lambda d: events.append(f"ok {d}"))
    assert await client.fetch_query(opts) == 1
    assert events == ["ok 1"]


async def test_a_raising_on_success_is_reported_and_is_not_a_fetch_failure(
    reported: list[BaseException],
) -> None:
    """Weak spot 16: ``on_success`` raises. PyStackQuery caught that in the fetch's
    ``try``: it re-ran the query function ``retry`` times and ended in ``ERROR``. Here
    the exception is reported, the function ran once, the caller gets the data, the
    state is ``SUCCESS``, and ``on_settled`` still runs."""
    client = QueryClient(QueryClientConfig(retry=3))
    calls = {"n": 0}
    settled: list[Any] = []
    boom = RuntimeError("callback bug")

    async def fetch() -> str:
        calls["n"] += 1
        await asyncio.sleep(0)
        return "value"

    def on_success(data: str) -> None:
        raise boom

    opts = QueryOptions(
        ("ws16",),
        fetch,
        on_success=on_success,
        on_settled=lambda d, e: settled.append((d, e)),
    )
    assert await client.fetch_query(opts) == "value"
    await asyncio.sleep(10)  # any retry would have run by now (virtual time)
    assert calls["n"] == 1
    state = client.get_query_state(("ws16",))
    assert state is not None and state.status == QueryStatus.SUCCESS
    assert state.error is None and state.fetch_failure_count == 0
    assert reported == [boom]
    assert settled == [("value", None)]


async def test_a_raising_on_settled_is_reported_and_is_not_a_fetch_failure(
    reported: list[BaseException],
) -> None:
    """Weak spot 16, for ``on_settled``."""
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> int:
        calls["n"] += 1
        return 7

    def on_settled(data: Any, error: Any) -> None:
        raise ValueError("settled bug")

    opts = QueryOptions(("ws16s",), fetch, on_settled=on_settled, retry=5)
    assert await client.fetch_query(opts) == 7
    await asyncio.sleep(60)
    assert calls["n"] == 1
    assert client.get_query_state(("ws16s",)).status == QueryStatus.SUCCESS  # type: ignore[union-attr]
    assert len(reported) == 1 and isinstance(reported[0], ValueError)


async def test_on_error_runs_once_after_the_last_retry_with_the_raised_exception() -> None:
    client = QueryClient()
    calls = {"n": 0}
    events: list[tuple[Any, ...]] = []
    raised: list[Exception] = []

    async def fetch() -> str:
        calls["n"] += 1
        e = ConnectionError(f"down {calls['n']}")
        raised.append(e)
        raise e

    opts = QueryOptions(
        ("err",),
        fetch,
        retry=2,
        retry_delay=lambda attempt: 1.0,
        on_error=lambda e: events.append(("error", e, calls["n"])),
        on_settled=lambda d, e: events.append(("settled", d, e)),
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ConnectionError) as caught:
        await client.fetch_query(opts)
    assert calls["n"] == 3
    assert loop.time() - start == pytest.approx(2.0, abs=0.01)
    last = raised[-1]
    assert caught.value is last
    assert events == [("error", last, 3), ("settled", None, last)], (
        "not for the failures that were retried; the very exception object"
    )
    assert client.get_query_state(("err",)).status == QueryStatus.ERROR  # type: ignore[union-attr]


async def test_on_error_follows_the_clients_default_retry() -> None:
    """The last failure is decided with the client's ``retry`` when the query leaves it
    unset (the callbacks and the engine's retry policy agree)."""
    client = QueryClient(QueryClientConfig(retry=1, retry_delay=lambda a: 0.5))
    calls = {"n": 0}
    errors: list[int] = []

    async def fetch() -> str:
        calls["n"] += 1
        raise KeyError("nope")

    opts = QueryOptions(("default-retry",), fetch, on_error=lambda e: errors.append(calls["n"]))
    with pytest.raises(KeyError):
        await client.fetch_query(opts)
    assert calls["n"] == 2
    assert errors == [2]


async def test_on_settled_after_a_failed_refetch_gets_the_data_kept() -> None:
    client = QueryClient()
    outcomes: list[Any] = ["v1", OSError("gone")]
    settled: list[tuple[Any, Any]] = []

    async def fetch() -> str:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return str(out)

    opts = QueryOptions(
        ("kept",), fetch, retry=0, on_settled=lambda d, e: settled.append((d, e))
    )
    assert await client.fetch_query(opts) == "v1"
    await client.invalidate_queries(("kept",))
    assert await client.fetch_query(opts) == "v1", "stale data served, refetch in the background"
    await asyncio.sleep(0.1)
    assert settled[0] == ("v1", None)
    assert len(settled) == 2
    assert settled[1][0] == "v1" and isinstance(settled[1][1], OSError)


async def test_a_background_refetch_runs_the_callbacks_too() -> None:
    client = QueryClient()
    n = {"calls": 0}
    successes: list[int] = []

    async def fetch() -> int:
        n["calls"] += 1
        await asyncio.sleep(1)
        return n["calls"]

    opts = QueryOptions(("swr",), fetch, stale_time=5.0, on_success=successes.append)
    assert await client.fetch_query(opts) == 1
    await asyncio.sleep(6)
    assert await client.fetch_query(opts) == 1  # stale: served, refetched behind
    assert successes == [1]
    await asyncio.sleep(2)
    assert successes == [1, 2]


async def test_a_raising_on_error_leaves_the_error_as_it_was(
    reported: list[BaseException],
) -> None:
    client = QueryClient()
    calls = {"n": 0}
    failure = TimeoutError("slow")

    async def fetch() -> None:
        calls["n"] += 1
        raise failure

    def on_error(e: Exception) -> None:
        raise RuntimeError("on_error bug")

    opts = QueryOptions(("err-raise",), fetch, retry=0, on_error=on_error)
    with pytest.raises(TimeoutError) as caught:
        await client.fetch_query(opts)
    assert caught.value is failure
    assert calls["n"] == 1
    state = client.get_query_state(("err-raise",))
    assert state is not None and state.error is failure
    assert len(reported) == 1 and isinstance(reported[0], RuntimeError)


async def test_a_cold_fetch_with_placeholder_data_returns_the_fetched_data() -> None:
    """Weak spot 25: PyStackQuery's cold ``fetch_query`` saw the placeholder as data and
    returned it without fetching; its state held it as ``SUCCESS``. Here the fetch runs
    and returns the fetched data, and while it is pending the cache holds no data (status
    ``PENDING``), so ``get_query_data`` is ``None``, never the placeholder."""
    client = QueryClient()
    calls = {"n": 0}
    during: list[Any] = []

    async def fetch() -> dict[str, str]:
        calls["n"] += 1
        state = client.get_query_state(("ph",))
        assert state is not None
        during.append((state.status, state.data, client.get_query_data(("ph",))))
        await asyncio.sleep(1)
        return {"name": "real"}

    opts = QueryOptions(("ph",), fetch, placeholder_data={"name": "loading..."})
    assert await client.fetch_query(opts) == {"name": "real"}
    assert calls["n"] == 1
    assert during == [(QueryStatus.PENDING, None, None)]
    state = client.get_query_state(("ph",))
    assert state is not None
    assert state.data == {"name": "real"} and not state.is_placeholder_data


async def test_an_observer_sees_the_placeholder_flagged_then_the_data() -> None:
    """Weak spot 25, the observer's side: PyStackQuery put the placeholder in the query's
    state as ``SUCCESS`` data, where nothing told it from fetched data. Here an observer
    shows it with ``is_placeholder_data=True`` while the cache holds nothing, then the
    fetched data with the flag off."""
    client = QueryClient()

    async def fetch() -> str:
        await asyncio.sleep(1)
        return "real"

    observer = client.watch(QueryOptions(("ph-obs",), fetch, placeholder_data="placeholder"))
    seen: list[tuple[str, Any, bool]] = []

    def listener(s: QueryState[Any, Exception]) -> None:
        seen.append((s.status.name, s.data, s.is_placeholder_data))

    unsubscribe = observer.subscribe(listener)
    assert seen[0] == ("SUCCESS", "placeholder", True)
    assert client.get_query_data(("ph-obs",)) is None, "the placeholder is not in the cache"
    await asyncio.sleep(2)
    assert seen[-1] == ("SUCCESS", "real", False)
    assert observer.result.is_placeholder_data is False
    unsubscribe()


async def test_a_failed_first_fetch_shows_the_error_not_the_placeholder() -> None:
    client = QueryClient()

    async def fetch() -> str:
        raise LookupError("missing")

    observer = client.watch(
        QueryOptions(("ph-err",), fetch, placeholder_data="placeholder", retry=0)
    )
    seen: list[QueryState[Any, Exception]] = []
    unsubscribe = observer.subscribe(seen.append)
    await asyncio.sleep(1)
    last = seen[-1]
    assert last.status == QueryStatus.ERROR
    assert last.data is None and not last.is_placeholder_data
    assert isinstance(last.error, LookupError)
    unsubscribe()


async def test_a_query_handle_shows_the_placeholder_flagged() -> None:
    from stackquery import Query

    async def fetch() -> int:
        await asyncio.sleep(1)
        return 42

    query = Query(QueryOptions(("ph-q",), fetch, placeholder_data=0))
    assert query.state.data == 0 and query.state.is_placeholder_data
    assert await query.fetch() == 42
    assert query.state.data == 42 and not query.state.is_placeholder_data


async def test_assigning_a_callback_later_takes_effect() -> None:
    """The options are converted once; assigning a field converts them again."""
    client = QueryClient()
    seen: list[str] = []

    async def fetch() -> str:
        return "x"

    opts = QueryOptions(("assign",), fetch, stale_time=0)
    await client.fetch_query(opts)
    opts.on_success = lambda d: seen.append(f"late {d}")
    await client.fetch_query(opts)
    await asyncio.sleep(0)
    assert seen == ["late x"]


async def test_failure_callbacks_follow_the_client_that_fetches() -> None:
    """With ``on_error``, the conversion is tied to the client (its default retry):
    one options object used by two clients with different defaults is right for both."""
    calls = {"n": 0}
    errors: list[int] = []

    async def fetch() -> None:
        calls["n"] += 1
        raise ValueError("x")

    opts = QueryOptions(("two",), fetch, on_error=lambda e: errors.append(calls["n"]))
    for retries in (0, 2):
        calls["n"] = 0
        client = QueryClient(QueryClientConfig(retry=retries, retry_delay=lambda a: 0.1))
        with pytest.raises(ValueError):
            await client.fetch_query(opts)
        assert calls["n"] == retries + 1
    assert errors == [1, 3]


async def test_async_callbacks_run_as_tasks_and_their_errors_are_reported(
    reported: list[BaseException],
) -> None:
    """An ``async def`` callback is run as a task (PyStackQuery called it and dropped the
    coroutine unawaited); an exception it raises is reported like a plain callback's."""
    client = QueryClient()
    done: list[str] = []
    broken = RuntimeError("async callback bug")

    async def on_success(data: str) -> None:
        await asyncio.sleep(1)
        done.append(data)

    async def on_settled(data: Any, error: Any) -> None:
        raise broken

    async def fetch() -> str:
        return "d"

    opts = QueryOptions(("async-cb",), fetch, on_success=on_success, on_settled=on_settled)
    assert await client.fetch_query(opts) == "d"
    await asyncio.sleep(2)
    assert done == ["d"]
    assert reported == [broken]
    assert client.get_query_state(("async-cb",)).status == QueryStatus.SUCCESS  # type: ignore[union-attr]
