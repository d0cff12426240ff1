"""Mutations on the Rust engine."""

from __future__ import annotations

import asyncio

import pytest

from stackquery import MutationOptions, MutationStatus, QueryClient

pytestmark = pytest.mark.asyncio


async def test_a_mutation_reports_its_states_and_runs_its_callbacks() -> None:
    client = QueryClient()
    seen: list[str] = []
    calls: list[tuple[object, ...]] = []

    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    m = client.mutation(
        MutationOptions(
            double,
            on_success=lambda d, i: calls.append(("success", d, i)),
            on_settled=lambda d, e, i: calls.append(("settled", d, e, i)),
        )
    )
    m.subscribe(lambda s: seen.append(s.status.name))
    assert await m.mutate(2) == 4
    assert calls == [("success", 4, 2), ("settled", 4, None, 2)]
    assert seen == ["IDLE", "PENDING", "SUCCESS"]
    state = m.state
    assert state.is_success and state.data == 4 and state.settled_at is not None
    m.reset()
    assert seen[-1] == "IDLE", "weak spot 20: reset is heard"


async def test_an_exception_in_on_success_never_reruns_the_mutation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Weak spot 17: PyStackQuery re-ran ``mutation_fn`` (a duplicate POST) when
    ``on_success`` raised, then ended in ERROR."""
    reported: list[BaseException] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: reported.append(u.exc_value))
    client = QueryClient()
    posts = {"n": 0}

    async def post(_: object) -> str:
        posts["n"] += 1
        return "created"

    def bad(_d: object, _i: object) -> None:
        raise RuntimeError("callback bug")

    m = client.mutation(MutationOptions(post, on_success=bad, retry=3))
    assert await m.mutate("x") == "created"
    assert posts["n"] == 1
    assert m.state.status == MutationStatus.SUCCESS
    assert reported and isinstance(reported[0], RuntimeError)


async def test_a_raising_on_mutate_ends_in_error_not_pending() -> None:
    """Weak spot 19: an exception in ``on_mutate`` left PyStackQuery's mutation PENDING
    forever; here the call fails before the mutation function runs."""
    client = QueryClient()
    ran = {"n": 0}

    async def post(_: object) -> None:
        ran["n"] += 1

    def on_mutate(_: object) -> None:
        raise ValueError("bad optimistic update")

    m = client.mutation(MutationOptions(post, on_mutate=on_mutate))
    with pytest.raises(Exception, match="bad optimistic update"):
        await m.mutate("x")
    assert ran["n"] == 0
    assert m.state.is_error and m.state.settled_at is not None


async def test_retries_and_the_same_error_object() -> None:
    client = QueryClient()
    attempts = {"n": 0}
    boom = ValueError("always")

    async def failing(_: object) -> None:
        attempts["n"] += 1
        raise boom

    errors: list[BaseException] = []
    m = client.mutation(
        MutationOptions(
            failing, on_error=lambda e, i: errors.append(e), retry=2, retry_delay=lambda _: 0.001
        )
    )
    with pytest.raises(ValueError) as raised:
        await m.mutate("x")
    assert raised.value is boom
    assert attempts["n"] == 3
    assert errors == [boom] and errors[0] is boom
    assert m.state.error is boom
