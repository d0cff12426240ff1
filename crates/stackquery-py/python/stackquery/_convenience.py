"""Helpers for common patterns (PyStackQuery's ``convenience`` module): ``parallel_queries``,
``dependent_query``, the ``query`` decorator and ``CachedQuery``.

Same signatures and behaviour as PyStackQuery 1.0.2. One difference, on purpose: the
decorator's ``stale_time``, ``gc_time`` and ``retry`` defer to the client's
``QueryClientConfig`` when they are not given, and win over it when they are, even when
given as PyStackQuery's default value (weak spot 27).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ._client import _GC_TIME, _RETRY, _STALE_TIME, QueryClient, QueryOptions

T = TypeVar("T")
P = TypeVar("P")


async def parallel_queries(client: QueryClient, *options_list: QueryOptions[Any]) -> list[Any]:
    """Fetches several queries concurrently; returns their data in the order given.

    Each one goes through ``client.fetch_query`` (fresh data from the cache, a shared
    fetch otherwise). If one fails, its exception is raised (as ``asyncio.gather``
    does); the others still complete and are cached.

    Example::

        user, posts = await parallel_queries(
            client,
            QueryOptions(("user", uid), get_user),
            QueryOptions(("posts", uid), get_posts),
        )
    """
    return list(await asyncio.gather(*(client.fetch_query(o) for o in options_list)))


async def dependent_query(
    client: QueryClient,
    depends_on: QueryOptions[P],
    then: Callable[[P], QueryOptions[T]],
) -> T:
    """Fetches ``depends_on``, then the query ``then(parent_data)`` describes; returns the
    second query's data.

    Example::

        posts = await dependent_query(
            client,
            depends_on=QueryOptions(("user", uid), get_user),
            then=lambda user: QueryOptions(("posts", user.id), lambda: get_posts(user.id)),
        )
    """
    parent = await client.fetch_query(depends_on)
    return await client.fetch_query(then(parent))


class CachedQuery(Generic[T]):
    """An async function behind the cache (made by the ``query`` decorator).

    ``await cached()`` is ``client.fetch_query(cached.options)``; ``invalidate()`` and
    ``get_data()`` act on its key.
    """

    __slots__ = ("_client", "_options")

    def __init__(self, client: QueryClient, options: QueryOptions[T]) -> None:
        self._client = client
        self._options = options

    def __call__(self) -> Awaitable[T]:
        """The data, through the cache (awaitable; a fresh hit completes at once)."""
        return self._client.fetch_query(self._options)

    async def invalidate(self) -> None:
        """Marks this query's data stale (observed copies refetch). Like
        ``invalidate_queries``, it also covers keys that extend this one."""
        await self._client.invalidate_queries(self._options.query_key)

    def get_data(self) -> T | None:
        """The cached data, or ``None``."""
        data: T | None = self._client.get_query_data(self._options.query_key)
        return data

    @property
    def options(self) -> QueryOptions[T]:
        """The options this query fetches with."""
        return self._options

    def __repr__(self) -> str:
        return f"CachedQuery(key={self._options.query_key!r})"


def query(
    client: QueryClient,
    key: tuple[Any, ...],
    *,
    stale_time: float = _STALE_TIME,
    gc_time: float = _GC_TIME,
    retry: int = _RETRY,
) -> Callable[[Callable[[], Awaitable[T]]], CachedQuery[T]]:
    """Decorator: an async function without arguments, cached under ``key``.

    Example::

        @query(client, ("users",), stale_time=60)
        async def get_users():
            return await http_get("/api/users")

        users = await get_users()     # through the cache
        await get_users.invalidate()
        get_users.get_data()
    """

    def decorator(fn: Callable[[], Awaitable[T]]) -> CachedQuery[T]:
        options: QueryOptions[T] = QueryOptions(
            query_key=key,
            query_fn=fn,
            stale_time=stale_time,
            gc_time=gc_time,
            retry=retry,
        )
        return CachedQuery(client, options)

    return decorator
