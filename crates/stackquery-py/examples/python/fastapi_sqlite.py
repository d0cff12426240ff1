"""A FastAPI service with stackquery in front of a slow backend, persisted in SQLite.

    pip install fastapi uvicorn   # plus the stackquery wheel (see README.md)
    uvicorn fastapi_sqlite:app    # from this directory

- ``GET /users/{uid}``: served from memory while fresh (30 s), else refreshed in the
  background while the stale copy is served; N concurrent requests for a cold user make
  one backend call.
- ``PUT /users/{uid}``: writes through to the backend and updates the cache (optimistic,
  rolled back if the write fails), so the next read needs no fetch.
- ``POST /users/invalidate``: marks every user stale.
- The cache survives a restart: entries are written behind to ``users-cache.db`` (the
  Rust library's SQLite tier; a Rust service can read the same file), so a restarted
  process answers from it without calling the backend.

``STACKQUERY_DB`` sets the SQLite file (``:memory:``-like behaviour with an empty value).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException

from stackquery import (
    MutationOptions,
    QueryClient,
    QueryClientConfig,
    QueryOptions,
    SqliteStorage,
)

# The slow backend this service fronts (a database or another service in real life).
BACKEND: dict[int, dict[str, Any]] = {7: {"id": 7, "name": "Ada"}, 8: {"id": 8, "name": "Grace"}}
BACKEND_CALLS = {"reads": 0, "writes": 0}


async def backend_read(uid: int) -> dict[str, Any] | None:
    BACKEND_CALLS["reads"] += 1
    await asyncio.sleep(0.05)
    user = BACKEND.get(uid)
    # "No such user" is an answer, cached like any other (a `None` is data, not a miss);
    # only failures are retried.
    return None if user is None else dict(user)


async def backend_write(user: dict[str, Any]) -> dict[str, Any]:
    BACKEND_CALLS["writes"] += 1
    await asyncio.sleep(0.05)
    BACKEND[user["id"]] = dict(user)
    return dict(user)


def make_client() -> QueryClient:
    path = os.environ.get("STACKQUERY_DB", "users-cache.db") or None
    return QueryClient(
        QueryClientConfig(stale_time=30.0, retry=2, storage=SqliteStorage(path))
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client per event loop: made on the server's loop, shut down with it so that
    # queued writes reach SQLite before the process exits.
    app.state.cache = make_client()
    yield
    await app.state.cache.shutdown(timeout=5.0)


app = FastAPI(lifespan=lifespan)


def user_query(uid: int) -> QueryOptions[dict[str, Any] | None]:
    return QueryOptions(("users", uid), lambda: backend_read(uid), stale_time=30.0)


@app.get("/users/{uid}")
async def get_user(uid: int) -> dict[str, Any]:
    cache: QueryClient = app.state.cache
    user = await cache.fetch_query(user_query(uid))
    if user is None:
        raise HTTPException(status_code=404, detail=f"no user {uid}")
    return user


@app.put("/users/{uid}")
async def put_user(uid: int, body: dict[str, Any]) -> dict[str, Any]:
    cache: QueryClient = app.state.cache
    user = {**body, "id": uid}

    def on_mutate(new: dict[str, Any]) -> Any:
        previous = cache.get_query_data(("users", uid))
        cache.set_query_data(("users", uid), new)  # optimistic
        return previous

    def on_error(_error: Exception, _new: dict[str, Any], previous: Any) -> None:
        if previous is not None:
            cache.set_query_data(("users", uid), previous)  # roll back

    def on_success(saved: dict[str, Any], _new: dict[str, Any]) -> None:
        cache.set_query_data(("users", uid), saved)

    mutation = cache.mutation(
        MutationOptions(backend_write, on_mutate=on_mutate, on_error=on_error, on_success=on_success)
    )
    return await mutation.mutate(user)


@app.post("/users/invalidate")
async def invalidate_users() -> dict[str, str]:
    await app.state.cache.invalidate_queries(["users"])
    return {"status": "invalidated"}


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {**app.state.cache.stats(), **{f"backend_{k}": v for k, v in BACKEND_CALLS.items()}}
