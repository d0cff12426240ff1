"""``Query``: one query, usable on its own (PyStackQuery's class of the same name)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._native import hash_key
from ._state import QueryState, QueryStatus, _from_engine

if TYPE_CHECKING:
    from ._client import QueryClient, QueryOptions

T = TypeVar("T")


class Query(Generic[T]):
    """One query's handle: its state, a fetch, and pausing.

    Made on its own (``Query(options)``), it has a private client; ``client=`` puts it in
    a shared one. ``fetch()`` always fetches (joining a fetch in flight), unlike
    ``QueryClient.fetch_query``, which serves fresh data from the cache.

    ``QueryClient.cache`` also hands out ``Query`` objects for the entries it holds
    (``cache.get``, ``cache.find_all``). Those are views by key: their ``options`` is
    ``None``, ``fetch()`` reruns the function the engine knows for the key, and they
    cannot be paused (pause through an observer of the query's options instead).
    """

    __slots__ = ("options", "_client", "_observer", "_key")

    def __init__(self, options: QueryOptions[T], client: QueryClient | None = None) -> None:
        from ._client import QueryClient

        self.options: QueryOptions[T] | None = options
        self._client = client or QueryClient()
        self._observer: Any = None
        self._key: tuple[Any, ...] = options.query_key

    @classmethod
    def _of_key(cls, client: QueryClient, key: tuple[Any, ...]) -> Query[Any]:
        """A view of the cached entry of ``key`` (no options)."""
        query = cast("Query[Any]", cls.__new__(cls))
        query.options = None
        query._client = client
        query._observer = None
        query._key = key
        return query

    @property
    def key(self) -> tuple[Any, ...]:
        """The query key."""
        return self._key

    @property
    def key_hash(self) -> str:
        """The key's canonical text."""
        return hash_key(self._key)

    @property
    def state(self) -> QueryState[T, Exception]:
        """The query's state (``IDLE`` before anything happened).

        While the query has no data and has not failed, a ``placeholder_data`` of its
        options shows here, flagged ``is_placeholder_data`` (it is not in the cache)."""
        state = self._client.get_query_state(self._key)
        if state is None:
            state = QueryState()
        options = self.options
        if (
            options is not None
            and options.placeholder_data is not None
            and state.data is None
            and state.status != QueryStatus.ERROR
        ):
            state.data = options.placeholder_data
            state.status = QueryStatus.SUCCESS
            state.is_placeholder_data = True
        return state

    async def fetch(self) -> T:
        """Fetches now and returns the data (or raises the query function's error)."""
        native = self._client._native
        if self.options is not None:
            return cast(
                T, await native.refetch_query(self.options._engine_options(self._client))
            )
        raw = await native.refetch_key(self._key)
        if raw is None:
            raise LookupError(f"the cache no longer holds {self._key!r}")
        state = _from_engine(raw)
        if state.status == QueryStatus.ERROR and state.error is not None:
            raise state.error
        return cast(T, state.data)

    def _watch(self) -> Any:
        if self.options is None:
            raise TypeError(
                "this Query was read from the cache and has no options: pause or resume "
                "it through a Query or observer made from its QueryOptions"
            )
        if self._observer is None:
            self._observer = self._client._native.watch(
                self.options._engine_options(self._client)
            )
        return self._observer

    def pause(self) -> None:
        """Stops automatic fetches and polling."""
        self._watch().pause()

    def resume(self, refetch: bool = True) -> None:
        """Starts them again; with ``refetch``, fetches at once if the data is stale."""
        self._watch().resume(refetch)

    @property
    def is_paused(self) -> bool:
        """Whether the query is paused."""
        return self._observer is not None and self._observer.is_paused()

    def __repr__(self) -> str:
        return f"Query(key={self._key!r}, state={self.state!r})"
