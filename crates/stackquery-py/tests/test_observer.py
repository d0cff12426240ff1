"""``QueryObserver`` on the Rust engine."""

from __future__ import annotations

import asyncio

import pytest

from stackquery import QueryClient, QueryClientConfig, QueryOptions

pytestmark = pytest.mark.asyncio


async def test_a_subscriber_is_told_now_and_when_the_fetch_lands() -> None:
    client = QueryClient()

    async def fetch() -> str:
        await asyncio.sleep(0)
        return "hello"

    observer = client.watch(QueryOptions(("obs",), fetch))
    seen: list[tuple[str, object]] = []
    unsubscribe = observer.subscribe(lambda s: seen.append((s.status.name, s.data)))
    await asyncio.sleep(0.01)
    assert seen[0][0] in ("IDLE", "PENDING")
    assert seen[-1] == ("SUCCESS", "hello")
    assert observer.result.data == "hello"
    unsubscribe()
    unsubscribe()  # harmless twice
    client.set_query_data(("obs",), "later")
    assert seen[-1] == ("SUCCESS", "hello"), "no call after unsubscribing"


async def test_observers_of_one_query_share_one_fetch() -> None:
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> str:
        calls["n"] += 1
        await asyncio.sleep(0.01)
        return "shared"

    opts = QueryOptions(("shared",), fetch)
    a: list[object] = []
    b: list[object] = []
    client.watch(opts).subscribe(lambda s: a.append(s.data))
    client.watch(opts).subscribe(lambda s: b.append(s.data))
    await asyncio.sleep(0.05)
    assert "shared" in a and "shared" in b
    assert calls["n"] == 1


async def test_a_raising_listener_changes_nothing_for_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Weak spots 16 and 22: an exception in a listener is reported, the fetch is not
    retried or failed by it, and the other listeners still hear every change."""
    reported: list[BaseException] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: reported.append(u.exc_value))
    client = QueryClient(QueryClientConfig(retry=3))
    calls = {"n": 0}

    async def fetch() -> str:
        calls["n"] += 1
        return "v"

    opts = QueryOptions(("listeners",), fetch)

    def bad(_state: object) -> None:
        raise RuntimeError("listener bug")

    good: list[object] = []
    observer = client.watch(opts)
    stop_bad = observer.subscribe(bad)
    stop_good = observer.subscribe(lambda s: good.append(s.data))
    await asyncio.sleep(0.01)
    assert calls["n"] == 1
    assert good[-1] == "v"
    assert reported and all(isinstance(e, RuntimeError) for e in reported)
    state = client.get_query_state(("listeners",))
    assert state is not None and state.is_success
    stop_bad()
    stop_good()


async def test_a_failing_select_is_an_error_for_that_observer_only() -> None:
    """Weak spot 23: PyStackQuery delivered the raw, unselected data when ``select``
    raised."""
    client = QueryClient()

    async def fetch() -> dict[str, int]:
        return {"n": 1}

    def broken(_data: dict[str, int]) -> int:
        raise KeyError("missing")

    await client.fetch_query(QueryOptions(("sel",), fetch))
    plain = client.watch(QueryOptions(("sel",), fetch))
    selected = client.watch(QueryOptions(("sel",), fetch, select=lambda d: d["n"] + 1))
    failing = client.watch(QueryOptions(("sel",), fetch, select=broken))
    assert plain.result.data == {"n": 1}
    assert selected.result.data == 2
    state = failing.result
    assert state.is_error and state.data is None and isinstance(state.error, KeyError)


async def test_polling_runs_while_subscribed_and_stops_after() -> None:
    """Weak spot 6: PyStackQuery kept polling after the last observer left."""
    client = QueryClient()
    calls = {"n": 0}

    async def fetch() -> int:
        calls["n"] += 1
        return calls["n"]

    observer = client.watch(QueryOptions(("poll",), fetch, refetch_interval=0.02))
    unsubscribe = observer.subscribe(lambda s: None)
    await asyncio.sleep(0.11)
    assert calls["n"] >= 3
    unsubscribe()
    after = calls["n"]
    await asyncio.sleep(0.1)
    assert calls["n"] == after, "no poll once nobody is subscribed"
