"""``QueryCache``: PyStackQuery's ``client.cache``, as a view over the engine's entries.

The entries live in the Rust engine: this class keeps no dictionary of its own. Lookups
go to the engine by key, and prefix filters (``find_all``) go through the engine's
prefix index, so their cost grows with the matches rather than with the cache (weak spot
30: PyStackQuery scanned every entry). Keys may be given as tuples or as their
``hash_key`` text, which is what PyStackQuery's cache was indexed by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._query import Query

if TYPE_CHECKING:
    from ._client import QueryClient



class QueryCache:
    """The queries a ``QueryClient`` holds (``client.cache``).

    Same methods as PyStackQuery's ``QueryCache``: ``get``, ``add``, ``remove``,
    ``find_all``, ``clear``, ``len()`` and ``in``, plus ``keys``. The ``Query`` objects it
    returns are views of the entries (see ``Query``).

    The bound on the number of entries (``max_size``, the client's ``cache_max_size``)
    is enforced by the engine, which never evicts an entry that is observed or being
    fetched (weak spot 10).

    Made on its own (``QueryCache(max_size, storage)``, as in PyStackQuery), it has a
    client of its own, reachable as ``cache.client``.
    """

    __slots__ = ("_client",)

    def __init__(
        self,
        max_size: int | QueryClient = 1000,
        storage: Any = None,
        *,
        client: QueryClient | None = None,
    ) -> None:
        from ._client import QueryClient, QueryClientConfig

        if isinstance(max_size, QueryClient):
            client = max_size
        elif client is None:
            client = QueryClient(QueryClientConfig(cache_max_size=int(max_size), storage=storage))
        self._client = client

    @property
    def client(self) -> QueryClient:
        """The client whose entries this cache shows."""
        return self._client

    @property
    def max_size(self) -> int:
        """The most entries kept in memory (``QueryClientConfig.cache_max_size``)."""
        return int(self._client._config.cache_max_size)

    @property
    def storage(self) -> Any:
        """The second-tier storage backend, if any (``QueryClientConfig.storage``)."""
        return self._client._config.storage

    def get(self, key_hash: tuple[Any, ...] | str) -> Query[Any] | None:
        """The cached query of ``key_hash`` (a key tuple or its ``hash_key`` text), or
        ``None`` when the cache does not hold it. Text that is no key's ``hash_key``
        (such as PyStackQuery's ``str(key)``) raises ``ValueError`` rather than missing
        silently."""
        native = self._client._native
        if not native.has_query(key_hash):
            return None
        return Query._of_key(self._client, _as_key(key_hash))

    def add(self, query: Query[Any]) -> None:
        """Puts ``query`` in this cache: from now on its fetches use this cache's client.
        If it already has data from another client, that data is copied here. (An entry
        appears in ``len()`` once the engine holds something for it: data, a fetch, or
        an observer.)"""
        previous = query._client
        if previous is self._client:
            return
        state = previous.get_query_state(query.key)
        query._client = self._client
        query._observer = None
        if state is not None and state.data is not None and not self._client._native.has_query(
            query.key
        ):
            self._client.set_query_data(query.key, state.data)

    def remove(self, key_hash: tuple[Any, ...] | str) -> None:
        """Removes the query of ``key_hash`` (exactly that key; a key tuple or its
        ``hash_key`` text). A fetch in flight for it still answers its callers but stores
        nothing. Removing a key that is not cached does nothing."""
        self._client._native.remove_query(key_hash)

    def find_all(self, filter_key: tuple[Any, ...] | list[Any] | None = None) -> list[Query[Any]]:
        """The cached queries whose key starts with ``filter_key`` (every query when
        ``None``), sorted by key. A list filter matches tuple keys."""
        client = self._client
        return [Query._of_key(client, k) for k in client._native.query_keys(filter_key)]

    def keys(self, filter_key: tuple[Any, ...] | list[Any] | None = None) -> list[tuple[Any, ...]]:
        """The keys of the cached queries under ``filter_key`` (all when ``None``),
        sorted."""
        return list(self._client._native.query_keys(filter_key))

    def clear(self) -> None:
        """Removes every query (observers hear of it)."""
        self._client._native.clear()

    def __len__(self) -> int:
        """How many queries the cache holds."""
        return int(self._client._native.query_count())

    def __contains__(self, key_hash: object) -> bool:
        """Whether the cache holds ``key_hash`` (a key tuple or its ``hash_key`` text)."""
        if not isinstance(key_hash, (tuple, str)):
            return False
        try:
            return bool(self._client._native.has_query(key_hash))
        except (TypeError, ValueError):
            return False

    def __repr__(self) -> str:
        return f"QueryCache(entries={len(self)}, max_size={self.max_size})"


def _as_key(key_hash: tuple[Any, ...] | str) -> tuple[Any, ...]:
    from ._native import key_parts, parse_key_hash

    if isinstance(key_hash, str):
        return parse_key_hash(key_hash)
    return key_parts(key_hash)
