"""The package under uvloop (issue 14: "it works under uvloop too")."""

from __future__ import annotations

import asyncio

import pytest

uvloop = pytest.importorskip("uvloop")

from stackquery import MutationOptions, QueryClient, QueryOptions  # noqa: E402


async def scenario() -> list[object]:
    client = QueryClient()
    calls = {"n": 0}
    gate = asyncio.Event()

    async def slow() -> str:
        calls["n"] += 1
        await gate.wait()
        return "v"

    opts = QueryOptions(("uv",), slow, stale_time=60.0)
    starter = asyncio.ensure_future(client.fetch_query(opts))
    await asyncio.sleep(0)
    joiners = [asyncio.ensure_future(client.fetch_query(opts)) for _ in range(10)]
    await asyncio.sleep(0)
    starter.cancel()
    gate.set()
    values = await asyncio.gather(*joiners)
    seen: list[object] = []
    stop = client.watch(opts).subscribe(lambda s: seen.append(s.data))

    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    doubled = await client.mutation(MutationOptions(double)).mutate(21)
    stop()
    return [values, calls["n"], seen[-1], doubled, await client.fetch_query(opts)]


def test_fetch_dedup_cancel_observe_and_mutate_on_uvloop() -> None:
    loop_type: list[str] = []

    async def main() -> list[object]:
        loop_type.append(type(asyncio.get_running_loop()).__module__)
        return await scenario()

    values, calls, observed, doubled, hit = uvloop.run(main())
    assert loop_type[0].startswith("uvloop")
    assert values == ["v"] * 10 and calls == 1
    assert observed == "v" and doubled == 42 and hit == "v"
