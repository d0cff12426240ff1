"""One tier and one bus shared by Python and Rust clients: a real SQLite file, a real
``redis-server``, and a Rust client in another process (the example
``crates/stackquery/examples/shared_tier_peer.rs``, built by ``scripts/test-all`` and
named by ``STACKQUERY_PEER_BIN``).

- A dict a Python client stores is read by the Rust client as a serde struct with the
  same fields, and a struct the Rust client stores is read here as a dict.
- An invalidation made on either side reaches the other through the Redis bus.

Real sockets and processes: real time, generous bounds (``real_io``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackquery import (
    QueryClient,
    QueryClientConfig,
    QueryOptions,
    RedisBus,
    RedisStorage,
    SqliteStorage,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.real_io]

ROOT = Path(__file__).resolve().parents[3]
ADA = {"name": "Ada", "age": 36, "tags": ["math", "engines"]}
GRACE = {"name": "Grace", "age": 85, "tags": ["navy", "cobol"]}


@pytest.fixture(scope="module")
def peer() -> str:
    """The Rust peer binary (``STACKQUERY_PEER_BIN``, else the workspace's build)."""
    named = os.environ.get("STACKQUERY_PEER_BIN")
    candidates = [named] if named else []
    candidates += [
        str(ROOT / "target" / profile / "examples" / "shared_tier_peer")
        for profile in ("debug", "release")
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if os.environ.get("STACKQUERY_REQUIRE_PEER"):
        pytest.fail(f"the Rust peer is not built (looked at {candidates})")
    pytest.skip("build it: cargo build -p stackquery --all-features --example shared_tier_peer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` on a free port, for this module."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("STACKQUERY_REQUIRE_PEER"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def run_peer(peer: str, *args: str) -> str:
    done = subprocess.run([peer, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stored(value: Any) -> QueryOptions[Any]:
    async def fetch() -> Any:
        return value

    return QueryOptions(("user", 1), fetch, stale_time=3600.0)


def tier_only(key: tuple[Any, ...]) -> QueryOptions[Any]:
    async def fetch() -> Any:
        raise AssertionError("must come from the shared tier")

    return QueryOptions(key, fetch, stale_time=3600.0, retry=0)


async def test_sqlite_file_python_dict_to_rust_struct_and_back(tmp_path: Path, peer: str) -> None:
    path = str(tmp_path / "shared.db")
    client = QueryClient(QueryClientConfig(storage=SqliteStorage(path)))
    await client.fetch_query(stored(ADA))
    assert await client.shutdown(10.0)
    assert json.loads(run_peer(peer, "sqlite-read", path, "1")) == ADA

    run_peer(peer, "sqlite-write", path, "2")
    reader = QueryClient(QueryClientConfig(storage=SqliteStorage(path)))
    assert await reader.fetch_query(tier_only(("user", 2))) == GRACE


async def test_redis_python_dict_to_rust_struct_and_back(redis_url: str, peer: str) -> None:
    ns = "xlang-data"
    client = QueryClient(QueryClientConfig(storage=RedisStorage(redis_url, namespace=ns)))
    await client.fetch_query(stored(ADA))
    assert await client.shutdown(10.0)
    assert json.loads(run_peer(peer, "redis-read", redis_url, ns, "1")) == ADA

    run_peer(peer, "redis-write", redis_url, ns, "2")
    reader = QueryClient(QueryClientConfig(storage=RedisStorage(redis_url, namespace=ns)))
    assert await reader.fetch_query(tier_only(("user", 2))) == GRACE


async def test_an_invalidation_on_python_reaches_rust(redis_url: str, peer: str) -> None:
    """Weak spot 37 across languages: PyStackQuery had no cross-instance invalidation."""
    ns = "xlang-py-to-rust"
    watcher = subprocess.Popen(
        [peer, "redis-watch", redis_url, ns], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready"
        client = QueryClient(
            QueryClientConfig(
                storage=RedisStorage(redis_url, namespace=ns), bus=RedisBus(redis_url, namespace=ns)
            )
        )
        client.set_query_data(("warmup",), 0)  # the first use starts the bus
        start = time.monotonic()
        await client.invalidate_queries(("item",))
        assert await client.shutdown(10.0)
        out, err = await asyncio.to_thread(watcher.communicate, timeout=30)
        assert "invalidated" in out, err
        print(f"python -> rust invalidation seen after {time.monotonic() - start:.3f} s")
    finally:
        if watcher.poll() is None:
            watcher.kill()


async def test_an_invalidation_on_rust_reaches_python(redis_url: str, peer: str) -> None:
    """Weak spot 37: invalidate on another instance (here a Rust one), and this client's
    observed query refetches; its listener runs on the loop's thread although the bus
    message arrives on the storage runtime's."""
    ns = "xlang-rust-to-py"
    client = QueryClient(
        QueryClientConfig(
            storage=RedisStorage(redis_url, namespace=ns),
            bus=RedisBus(redis_url, namespace=ns),
            stale_time=3600.0,
        )
    )
    calls: list[int] = []

    async def fetch() -> dict[str, int]:
        calls.append(1)
        return {"v": len(calls)}

    opts = QueryOptions(("item", 1), fetch, stale_time=3600.0)
    threads: list[int] = []
    seen: list[Any] = []

    def listener(state: Any) -> None:
        threads.append(threading.get_ident())
        seen.append(state.data)

    unsubscribe = client.watch(opts).subscribe(listener)
    try:
        await client.fetch_query(opts)
        assert calls == [1]
        start = time.monotonic()
        await asyncio.to_thread(run_peer, peer, "redis-invalidate", redis_url, ns)
        while len(calls) < 2:
            assert time.monotonic() - start < 20, "no invalidation arrived"
            await asyncio.sleep(0.01)
        print(f"rust -> python invalidation + refetch after {time.monotonic() - start:.3f} s")
        while {"v": 2} not in seen:
            assert time.monotonic() - start < 20, "the listener did not see the refetch"
            await asyncio.sleep(0.01)
        assert set(threads) == {threading.get_ident()}
    finally:
        unsubscribe()
        await client.shutdown(5.0)


async def test_two_python_clients_share_invalidations(redis_url: str) -> None:
    """Weak spot 37 between two Python instances: invalidate on A, B sees it."""
    ns = "py-to-py"

    def make() -> QueryClient:
        return QueryClient(
            QueryClientConfig(
                storage=RedisStorage(redis_url, namespace=ns),
                bus=RedisBus(redis_url, namespace=ns),
                stale_time=3600.0,
            )
        )

    a, b = make(), make()

    async def fetch() -> str:
        return "v"

    opts = QueryOptions(("doc", 1), fetch, stale_time=3600.0)
    await b.fetch_query(opts)
    await a.fetch_query(opts)
    state = b.get_query_state(("doc", 1))
    assert state is not None and not state.is_invalidated
    start = time.monotonic()
    await a.invalidate_queries(("doc",))
    while True:
        state = b.get_query_state(("doc", 1))
        if state is None or state.is_invalidated:
            break
        assert time.monotonic() - start < 10, "B never heard of A's invalidation"
        await asyncio.sleep(0.005)
    print(f"python -> python invalidation seen after {time.monotonic() - start:.3f} s")
    await a.shutdown(5.0)
    await b.shutdown(5.0)
