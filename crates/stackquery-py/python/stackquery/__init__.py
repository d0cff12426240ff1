"""stackquery: async data fetching and caching on a Rust engine.

A drop-in replacement for PyStackQuery 1.0.2 is being built on the Rust library's
engine (see ``DESIGN.md`` in the ``stackquery-py`` crate for the design and for what is
done). This release provides ``QueryClient`` (fetching, cache reads and writes,
invalidation, observers, mutations) with its ``QueryCache`` (``client.cache``),
``QueryClientConfig``, ``QueryOptions`` (with ``placeholder_data`` and the
``on_success``/``on_error``/``on_settled`` callbacks), ``Query``, the convenience helpers
(``parallel_queries``, ``dependent_query``, the ``query`` decorator and ``CachedQuery``),
and the key helpers, implemented in Rust:

- :func:`hash_key`: a key's canonical text, shared with Rust clients (the storage name of
  the key in the SQLite and Redis tiers);
- :func:`partial_match`: prefix matching of keys (a filter may be a list);
- :func:`default_retry_delay`: the retry schedule, ``min(2 ** attempt, 30)`` seconds.

Keys are tuples of ``str``, ``int`` and ``bool`` parts; anything else raises
``TypeError`` naming the offending part.
"""

from __future__ import annotations

from typing import TypeAlias

from ._cache import QueryCache
from ._client import QueryClient, QueryClientConfig, QueryOptions
from ._convenience import CachedQuery, dependent_query, parallel_queries, query
from ._native import default_retry_delay, hash_key, key_parts, partial_match
from ._mutation import Mutation, MutationOptions, MutationState, MutationStatus
from ._observer import QueryObserver
from ._query import Query
from ._state import FetchStatus, QueryState, QueryStatus
from ._storage import RedisBus, RedisStorage, SqliteStorage, StorageBackend

QueryKey: TypeAlias = tuple[str | int | bool, ...]
"""A query key: a tuple of ``str``, ``int`` and ``bool`` parts, e.g. ``("users", "7")``."""

__version__ = "0.1.0.dev0"

__all__ = [
    "QueryClient",
    "QueryClientConfig",
    "FetchStatus",
    "QueryState",
    "QueryStatus",
    "QueryKey",
    "Mutation",
    "MutationOptions",
    "MutationState",
    "MutationStatus",
    "Query",
    "QueryObserver",
    "QueryOptions",
    "default_retry_delay",
    "hash_key",
    "key_parts",
    "partial_match",
    "RedisBus",
    "RedisStorage",
    "SqliteStorage",
    "StorageBackend",
    "QueryCache",
    "parallel_queries",
    "dependent_query",
    "query",
    "CachedQuery",
]
