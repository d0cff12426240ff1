"""The second tier through PyStackQuery's ``StorageBackend`` protocol (any object with
async ``get``, ``set(key, value, ttl)`` and ``delete``), and through the Rust
``SqliteStorage`` on a real file: what is stored, what is read back, and what a faulty
storage costs (weak spots 8, 14, 31-36, and the issue's bad-input cases).

Storage calls are bounded by a real-time timeout (the storage runtime's clock), so the
tests that wait for one use short bounds (0.1 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from stackquery import (
    QueryClient,
    QueryClientConfig,
    QueryOptions,
    SqliteStorage,
    StorageBackend,
    hash_key,
)

pytestmark = pytest.mark.asyncio


class DictStorage:
    """A ``StorageBackend`` in a dict, counting calls; ``gate`` (when set) holds every
    call until it is opened, ``hang`` holds ``get`` forever, ``fail`` raises."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.ttls: dict[str, float | None] = {}
        self.gets = 0
        self.sets: list[tuple[str, str]] = []
        self.deletes: list[str] = []
        self.gate: asyncio.Event | None = None
        self.hang = False
        self.fail = False

    async def _wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("storage is down")

    async def get(self, key: str) -> str | None:
        self.gets += 1
        if self.hang:
            await asyncio.Event().wait()
        await self._wait()
        return self.data.get(key)

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        await self._wait()
        self.sets.append((key, value))
        self.data[key] = value
        self.ttls[key] = ttl

    async def delete(self, key: str) -> None:
        await self._wait()
        self.deletes.append(key)
        self.data.pop(key, None)


def counted(key: tuple[Any, ...], value: Any = "v", **kw: Any) -> tuple[QueryOptions[Any], list[int]]:
    calls: list[int] = []

    async def fetch() -> Any:
        calls.append(1)
        return value

    return QueryOptions(key, fetch, **kw), calls


async def eventually(check: Any, within: float = 2.0) -> None:
    """Waits (real time, short steps) until ``check()`` is true."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_a_storage_object_satisfies_the_protocol_and_round_trips() -> None:
    """A dict written by one client is read by a new client on the same storage, with
    no fetch; the name is PyStackQuery's (``str(key)``) and the text is JSON that both
    libraries read."""
    storage = DictStorage()
    assert isinstance(storage, StorageBackend)
    a = QueryClient(QueryClientConfig(storage=storage, stale_time=60.0))
    opts, _ = counted(("user", 7), {"name": "Ada", "tags": ["x"], "n": 1.5})
    await a.fetch_query(opts)
    await a.flush_storage()
    stored = json.loads(storage.data["('user', 7)"])
    assert stored["data"] == {"name": "Ada", "tags": ["x"], "n": 1.5}
    assert stored["status"] == "SUCCESS" and stored["version"] == 1
    assert stored["data_updated_at"] == pytest.approx(time.time(), abs=60)

    b = QueryClient(QueryClientConfig(storage=storage, stale_time=60.0))
    again, calls = counted(("user", 7), "refetched")
    assert await b.fetch_query(again) == {"name": "Ada", "tags": ["x"], "n": 1.5}
    assert calls == []


async def test_weak_spot_31_one_write_per_settled_fetch_and_hydrated_state_is_idle() -> None:
    """Weak spot 31: PyStackQuery wrote the state on every dispatch of a SUCCESS query,
    ``fetch_status: FETCHING`` included: two writes per refetch, and another instance
    could hydrate a state that says it is fetching. Here: one write per settled fetch,
    and a hydrated state is idle."""
    storage = DictStorage()
    client = QueryClient(QueryClientConfig(storage=storage))
    opts, calls = counted(("w",))
    await client.fetch_query(opts)
    await client.flush_storage()
    await client.invalidate_queries(("w",))
    await client.fetch_query(opts)
    await asyncio.sleep(0)
    await client.flush_storage()
    data_writes = [v for k, v in storage.sets if k == "('w',)"]
    # Fetch, invalidation flag, refetch: never a write per dispatch.
    assert len(data_writes) <= len(calls) + 1, (len(data_writes), len(calls))
    assert all(json.loads(v)["fetch_status"] == "IDLE" for v in data_writes)

    other = QueryClient(QueryClientConfig(storage=storage, stale_time=60.0))
    stale, _ = counted(("w",), "new")
    await other.fetch_query(stale)
    state = other.get_query_state(("w",))
    assert state is not None and state.fetch_status.name == "IDLE"


async def test_weak_spot_33_an_invalidation_survives_in_the_tier() -> None:
    """Weak spot 33: PyStackQuery invalidated by zeroing the stamp in memory only; an
    entry read back from the tier came back fresh. Here the invalidation is stored (the
    seed's ``data_updated_at == 0.0`` plus our flag and the real stamp), so a client that
    reads it serves it stale and refetches once."""
    storage = DictStorage()
    a = QueryClient(QueryClientConfig(storage=storage, stale_time=3600.0))
    opts, _ = counted(("inv",), "old")
    await a.fetch_query(opts)
    await a.invalidate_queries(("inv",))
    await a.flush_storage()
    stored = json.loads(storage.data["('inv',)"])
    assert stored["invalidated"] is True and stored["data_updated_at"] == 0.0
    assert stored["data_updated_at_ms"] > 0, "the real stamp is kept"

    b = QueryClient(QueryClientConfig(storage=storage, stale_time=3600.0))
    fresh, calls = counted(("inv",), "new")
    assert await b.fetch_query(fresh) == "old", "served from the tier"
    await eventually(lambda: calls == [1])
    await eventually(lambda: b.get_query_data(("inv",)) == "new")


async def test_weak_spot_34_removed_data_is_not_resurrected(tmp_path: Path) -> None:
    """Weak spot 34: ``remove_queries`` left the tier untouched, so the removed data came
    back at the next hydration. Here a new client on the same SQLite file fetches."""
    path = tmp_path / "cache.db"
    a = QueryClient(QueryClientConfig(storage=SqliteStorage(str(path)), stale_time=3600.0))
    opts, _ = counted(("gone", 1), "removed")
    await a.fetch_query(opts)
    await a.flush_storage()
    a.remove_queries(("gone",))
    assert await a.shutdown(5.0)

    b = QueryClient(QueryClientConfig(storage=SqliteStorage(str(path)), stale_time=3600.0))
    again, calls = counted(("gone", 1), "fetched")
    assert await b.fetch_query(again) == "fetched"
    assert calls == [1]


async def test_weak_spot_35_a_corrupt_entry_is_a_counted_miss_and_is_deleted() -> None:
    """Weak spot 35: PyStackQuery logged a corrupt entry on every read and kept it. Here
    it is a miss, counted, and replaced (deleted, or overwritten by the fetched data)."""
    storage = DictStorage()
    storage.data["('bad',)"] = "\x00not json at all"
    client = QueryClient(QueryClientConfig(storage=storage))
    opts, calls = counted(("bad",), "fetched")
    assert await client.fetch_query(opts) == "fetched"
    assert calls == [1]
    assert client.stats()["l2_errors"] >= 1
    await client.flush_storage()
    await client.flush_storage()
    # The queued delete of the corrupt text was replaced by the write of the fetched
    # data (one pending operation per key): the garbage is gone either way.
    assert json.loads(storage.data["('bad',)"])["data"] == "fetched"


async def test_weak_spot_36_ttls_are_float_seconds_and_sqlite_expires(tmp_path: Path) -> None:
    """Weak spot 36: PyStackQuery's documented recipes truncated sub-second ttls and its
    SQLite recipe ignored them. Here the ttl reaches the storage as float seconds (the
    query's gc time), and the Rust SQLite tier treats expired rows as misses."""
    storage = DictStorage()
    client = QueryClient(QueryClientConfig(storage=storage))
    opts, _ = counted(("ttl",), gc_time=0.5)
    await client.fetch_query(opts)
    await client.flush_storage()
    assert storage.ttls["('ttl',)"] == pytest.approx(0.5)

    path = tmp_path / "ttl.db"
    a = QueryClient(QueryClientConfig(storage=SqliteStorage(str(path)), stale_time=3600.0))
    short, _ = counted(("short",), "stored", gc_time=0.05)
    await a.fetch_query(short)
    await a.flush_storage()
    await asyncio.sleep(0.1)
    b = QueryClient(QueryClientConfig(storage=SqliteStorage(str(path)), stale_time=3600.0))
    later, calls = counted(("short",), "fetched")
    assert await b.fetch_query(later) == "fetched"
    assert calls == [1], "an expired row is a miss"


async def test_weak_spot_8_a_hanging_storage_costs_one_timeout_and_one_fetch() -> None:
    """Weak spot 8: PyStackQuery busy-waited on hydration with no bound: a storage whose
    ``get`` never returned blocked ``fetch_query`` forever. Here the read gives up after
    ``storage_timeout``, the query fetches once, and the hanging call is cancelled."""
    storage = DictStorage()
    storage.hang = True
    client = QueryClient(QueryClientConfig(storage=storage, storage_timeout=0.1))
    opts, calls = counted(("hang",), "fetched")
    start = time.monotonic()
    results = await asyncio.gather(client.fetch_query(opts), client.fetch_query(opts))
    assert results == ["fetched", "fetched"]
    assert calls == [1]
    assert 0.09 <= time.monotonic() - start < 1.0
    assert storage.gets == 1


async def test_weak_spot_14_a_slow_read_does_not_clobber_a_newer_write() -> None:
    """Weak spot 14: PyStackQuery's hydration replaced the state wholesale, so a
    ``set_query_data`` made while the read was in flight was lost. Here the newer value
    wins."""
    storage = DictStorage()
    seed = QueryClient(QueryClientConfig(storage=storage))
    seed.set_query_data(("slow",), "stored")
    await seed.flush_storage()

    storage.gate = asyncio.Event()
    client = QueryClient(QueryClientConfig(storage=storage, stale_time=3600.0))
    opts, _ = counted(("slow",), "fetched")
    pending = asyncio.ensure_future(client.fetch_query(opts))
    await eventually(lambda: storage.gets >= 1)
    client.set_query_data(("slow",), "manual")
    storage.gate.set()
    await pending
    assert client.get_query_data(("slow",)) == "manual"


async def test_weak_spot_32_writes_behind_are_bounded_per_key_and_land_newest() -> None:
    """Weak spot 32: PyStackQuery fired one untracked task per write: under a slow store,
    unbounded tasks, and old writes could land after new ones. Here at most one write per
    key waits, and the last one holds the newest data."""
    storage = DictStorage()
    storage.gate = asyncio.Event()
    client = QueryClient(QueryClientConfig(storage=storage))
    for i in range(10_000):
        client.set_query_data(("k", i % 10), i)
    await asyncio.sleep(0.01)
    storage.gate.set()
    await client.flush_storage()
    await client.flush_storage()
    assert len(storage.sets) <= 20, len(storage.sets)
    for k in range(10):
        assert json.loads(storage.data[f"('k', {k})"])["data"] == 9_990 + k


async def test_a_storage_that_raises_is_a_logged_miss(caplog: pytest.LogCaptureFixture) -> None:
    """A storage whose calls raise costs nothing but a log line: the query fetches and
    returns, other entries are untouched."""
    caplog.set_level(logging.WARNING)
    storage = DictStorage()
    storage.fail = True
    client = QueryClient(QueryClientConfig(storage=storage))
    client.set_query_data(("other",), "kept")
    opts, calls = counted(("down",), "fetched")
    assert await client.fetch_query(opts) == "fetched"
    assert calls == [1]
    assert client.get_query_data(("other",)) == "kept"
    assert client.stats()["l2_errors"] >= 1
    await eventually(lambda: any("storage is down" in r.getMessage() for r in caplog.records))
    assert all(r.name.startswith("stackquery") for r in caplog.records if "storage is down" in r.getMessage())


async def test_a_value_without_a_json_form_is_refused_by_set_and_skipped_by_fetch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bad input: with a storage, ``set_query_data`` of a value that cannot be stored as
    JSON raises a ``TypeError`` naming it and changes nothing; a query function that
    returns one still returns it (kept in memory), its write is skipped and logged."""
    caplog.set_level(logging.WARNING)
    storage = DictStorage()
    client = QueryClient(QueryClientConfig(storage=storage))
    client.set_query_data(("s",), "before")
    with pytest.raises(TypeError, match="set"):
        client.set_query_data(("s",), {1, 2})
    assert client.get_query_data(("s",)) == "before"

    value = {"when": object()}
    opts, _ = counted(("obj",), value)
    assert await client.fetch_query(opts) is value
    await client.flush_storage()
    assert "('obj',)" not in storage.data
    assert client.get_query_data(("s",)) == "before"
    await eventually(lambda: any("JSON" in r.getMessage() for r in caplog.records))


async def test_a_storage_without_the_protocol_is_a_type_error() -> None:
    """Bad input: a storage object without async get, set and delete is refused when the
    client is made, with the missing method named."""
    with pytest.raises(TypeError, match="delete"):

        class NoDelete:
            async def get(self, key: str) -> None: ...

            async def set(self, key: str, value: str, ttl: float | None = None) -> None: ...

        QueryClient(QueryClientConfig(storage=NoDelete()))


async def test_pystackquery_entries_are_read_after_the_switch() -> None:
    """A store that PyStackQuery filled keeps serving after the switch: its state text
    (no ``version``) is read when its status is ``SUCCESS``; other states are misses."""
    storage = DictStorage()
    storage.data["('old',)"] = json.dumps(
        {"status": "SUCCESS", "fetch_status": "IDLE", "data": [1, 2], "data_updated_at": time.time()}
    )
    storage.data["('err',)"] = json.dumps({"status": "ERROR", "data": None, "data_updated_at": None})
    client = QueryClient(QueryClientConfig(storage=storage, stale_time=3600.0))
    old, calls = counted(("old",), "fetched")
    assert await client.fetch_query(old) == [1, 2]
    assert calls == []
    err, calls = counted(("err",), "fetched")
    assert await client.fetch_query(err) == "fetched"
    assert calls == [1]


async def test_sqlite_storage_names_keys_like_rust(tmp_path: Path) -> None:
    """The Rust SQLite tier stores under the key's canonical text (``hash_key``), the
    name a Rust client uses."""
    import sqlite3

    path = tmp_path / "names.db"
    client = QueryClient(QueryClientConfig(storage=SqliteStorage(str(path))))
    opts, _ = counted(("users", 7, True), {"a": 1})
    await client.fetch_query(opts)
    assert await client.shutdown(5.0)
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        names: list[str] = []
        for t in tables:
            cols = [c[1] for c in db.execute(f"pragma table_info({t})")]
            if "key" in cols:
                names += [r[0] for r in db.execute(f"select key from {t}")]
    assert hash_key(("users", 7, True)) in names


async def test_get_query_data_async_reads_the_storage_without_caching() -> None:
    """``get_query_data_async`` (PyStackQuery): memory first, then the storage; the value
    read from storage is not put in memory. (PyStackQuery's read the storage under the
    key's repr and parsed its state; this reads the same names and text.)"""
    storage = DictStorage()
    writer = QueryClient(QueryClientConfig(storage=storage))
    writer.set_query_data(("async", 1), {"a": 1})
    await writer.flush_storage()

    reader = QueryClient(QueryClientConfig(storage=storage))
    assert await reader.get_query_data_async(("async", 1)) == {"a": 1}
    assert reader.get_query_data(("async", 1)) is None
    assert await reader.get_query_data_async(("async", 2)) is None
    reader.set_query_data(("async", 1), "memory")
    assert await reader.get_query_data_async(("async", 1)) == "memory"


async def test_weak_spot_25_a_placeholder_never_reaches_the_storage() -> None:
    """Weak spot 25 (storage side): PyStackQuery put ``placeholder_data`` in the state as
    SUCCESS data, so the next dispatch persisted it. Here an observer shows the
    placeholder while the fetch runs, nothing is written for it, and the fetched data is
    what gets stored."""
    storage = DictStorage()
    client = QueryClient(QueryClientConfig(storage=storage))
    gate = asyncio.Event()

    async def fetch() -> str:
        await gate.wait()
        return "fetched"

    opts = QueryOptions(("ph",), fetch, placeholder_data="placeholder")
    seen: list[Any] = []
    stop = client.watch(opts).subscribe(lambda s: seen.append((s.data, s.is_placeholder_data)))
    await eventually(lambda: ("placeholder", True) in seen)
    await client.flush_storage()
    assert "('ph',)" not in storage.data
    gate.set()
    await eventually(lambda: ("fetched", False) in seen)
    await client.flush_storage()
    assert json.loads(storage.data["('ph',)"])["data"] == "fetched"
    assert all(json.loads(v)["data"] != "placeholder" for _, v in storage.sets)
    stop()
