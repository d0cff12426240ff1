"""One test per PyStackQuery 1.0.2 weak spot of mutations (numbers from
``shared/reference/pystackquery-weak-spots.md``): the rollback context (18) and
concurrent calls (21). Each would fail on PyStackQuery 1.0.2 (the docstrings say how)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("looptime")

from stackquery import MutationOptions, QueryClient, QueryOptions  # noqa: E402

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def test_weak_spot_18_on_error_gets_the_rollback_context() -> None:
    """Weak spot 18: PyStackQuery discarded what ``on_mutate`` returned, so ``on_error``
    (called with ``(error, variables)`` only) had nothing to roll an optimistic update
    back with. Here an ``on_error`` that takes three parameters gets the context as the
    third: the optimistic write is rolled back to the previous data. A two-parameter
    ``on_error`` (PyStackQuery's signature) is still called with two."""
    client = QueryClient()

    async def initial() -> list[str]:
        return ["a"]

    await client.fetch_query(QueryOptions(("todos",), initial, stale_time=60.0))

    def optimistic(item: str) -> dict[str, object]:
        previous = client.get_query_data(("todos",))
        client.set_query_data(("todos",), [*previous, item])
        return {"previous": previous}

    async def post(_item: str) -> None:
        await asyncio.sleep(1)
        raise ConnectionError("server down")

    contexts: list[object] = []

    def rollback(error: BaseException, item: str, context: dict[str, object]) -> None:
        contexts.append(context)
        client.set_query_data(("todos",), context["previous"])

    two_args: list[tuple[object, object]] = []
    m = client.mutation(MutationOptions(post, on_mutate=optimistic, on_error=rollback))
    plain = client.mutation(
        MutationOptions(post, on_error=lambda e, v: two_args.append((type(e), v)))
    )
    pending = asyncio.ensure_future(m.mutate("b"))
    await asyncio.sleep(0.5)
    assert client.get_query_data(("todos",)) == ["a", "b"], "optimistic write"
    with pytest.raises(ConnectionError):
        await pending
    assert contexts == [{"previous": ["a"]}]
    assert client.get_query_data(("todos",)) == ["a"], "rolled back"
    with pytest.raises(ConnectionError):
        await plain.mutate("c")
    assert two_args == [(ConnectionError, "c")]


async def test_weak_spot_21_concurrent_calls_keep_their_own_results() -> None:
    """Weak spot 21: PyStackQuery's ``Mutation`` kept one shared state for all calls;
    overlapping ``mutate`` calls raced on it (the last finisher won) and there was no way
    to run writes in order. Here two overlapping calls each return their own result, and
    calls of mutations with the same ``scope`` run one after another in call order (even
    across two ``Mutation`` handles), where unscoped calls overlap."""
    client = QueryClient()
    log: list[str] = []

    async def work(job: tuple[str, float]) -> str:
        name, seconds = job
        log.append(f"start {name}")
        await asyncio.sleep(seconds)
        log.append(f"end {name}")
        return f"done {name}"

    m = client.mutation(MutationOptions(work))
    results = await asyncio.gather(m.mutate(("slow", 2.0)), m.mutate(("fast", 1.0)))
    assert results == ["done slow", "done fast"]
    assert log == ["start slow", "start fast", "end fast", "end slow"], "unscoped overlap"
    assert m.state.is_success

    log.clear()
    first = client.mutation(MutationOptions(work, scope="todos"))
    second = client.mutation(MutationOptions(work, scope="todos"))
    results = await asyncio.gather(
        first.mutate(("one", 2.0)), second.mutate(("two", 1.0)), first.mutate(("three", 0.5))
    )
    assert results == ["done one", "done two", "done three"]
    assert log == [
        "start one",
        "end one",
        "start two",
        "end two",
        "start three",
        "end three",
    ], "one scope: one call at a time, in call order"


async def test_weak_spot_20_a_raising_mutation_listener_fails_nothing_and_reset_is_heard() -> None:
    """Weak spot 20: PyStackQuery called mutation listeners unguarded, so one that raised
    failed the mutation, and ``reset()`` notified nobody. Here the raising listener is
    reported (unraisable hook) and the mutation succeeds once; a second listener hears
    every state, ``reset()``'s IDLE included."""
    import sys

    client = QueryClient()
    runs: list[int] = []

    async def save(n: int) -> int:
        runs.append(n)
        await asyncio.sleep(0)
        return n + 1

    m = client.mutation(MutationOptions(save))
    reported: list[BaseException | None] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: reported.append(u.exc_value)
    try:

        def bad(_state: object) -> None:
            raise RuntimeError("listener bug")

        m.subscribe(bad)
        heard: list[str] = []
        m.subscribe(lambda s: heard.append(s.status.name))
        assert await m.mutate(1) == 2
        assert runs == [1]
        assert m.state.status.name == "SUCCESS"
        assert any(isinstance(e, RuntimeError) for e in reported)
        m.reset()
        assert heard[-1] == "IDLE"
    finally:
        sys.unraisablehook = old_hook
