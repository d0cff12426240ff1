"""The package under uvloop (issue 14: "it works under uvloop too")."""

from __future__ import annotations

import asyncio
import pathlib

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


def test_storage_round_trips_on_uvloop(tmp_path: pathlib.Path) -> None:
    """Both kinds of storage under uvloop: a Python ``StorageBackend`` (its calls are
    tasks on the loop, started from the storage runtime's thread for writes behind) and
    the Rust SQLite tier; a second client reads what the first stored, with no fetch."""
    from stackquery import QueryClientConfig, SqliteStorage

    class Store:
        def __init__(self) -> None:
            self.data: dict[str, str] = {}

        async def get(self, key: str) -> str | None:
            await asyncio.sleep(0)
            return self.data.get(key)

        async def set(self, key: str, value: str, ttl: float | None = None) -> None:
            await asyncio.sleep(0)
            self.data[key] = value

        async def delete(self, key: str) -> None:
            self.data.pop(key, None)

    store = Store()
    path = str(tmp_path / "uv.db")

    async def main() -> list[object]:
        out: list[object] = []
        for storage in (store, SqliteStorage(path)):
            first = QueryClient(QueryClientConfig(storage=storage, stale_time=60.0))

            async def fetch() -> dict[str, int]:
                return {"n": 1}

            await first.fetch_query(QueryOptions(("uv", "s"), fetch))
            assert await first.shutdown(5.0)

            async def never() -> dict[str, int]:
                raise AssertionError("must come from storage")

            # A new client, and for SQLite a new connection to the same file.
            again = store if storage is store else SqliteStorage(path)
            second = QueryClient(QueryClientConfig(storage=again, stale_time=60.0))
            out.append(await second.fetch_query(QueryOptions(("uv", "s"), never, retry=0)))
        return out

    assert uvloop.run(main()) == [{"n": 1}, {"n": 1}]
