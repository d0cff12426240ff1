"""``Query``: one query, usable on its own (PyStackQuery's class of the same name)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._state import QueryState

if TYPE_CHECKING:
    from ._client import QueryClient, QueryOptions

T = TypeVar("T")


class Query(Generic[T]):
    """One query's handle: its state, a fetch, and pausing.

    Made on its own (``Query(options)``), it has a private client; ``client=`` puts it in
    a shared one. ``fetch()`` always fetches (joining a fetch in flight), unlike
    ``QueryClient.fetch_query``, which serves fresh data from the cache.
    """

    __slots__ = ("options", "_client", "_observer")

    def __init__(self, options: QueryOptions[T], client: QueryClient | None = None) -> None:
        from ._client import QueryClient

        self.options = options
        self._client = client or QueryClient()
        self._observer: Any = None

    @property
    def key_hash(self) -> str:
        """The key's canonical text."""
        return self.options.get_key_hash()

    @property
    def state(self) -> QueryState[T, Exception]:
        """The query's state (``IDLE`` before anything happened)."""
        state = self._client.get_query_state(self.options.query_key)
        return state if state is not None else QueryState()

    async def fetch(self) -> T:
        """Fetches now and returns the data (or raises the query function's error)."""
        native = self._client._native
        return await native.refetch_query(self.options._engine_options())

    def _watch(self) -> Any:
        if self._observer is None:
            self._observer = self._client._native.watch(self.options._engine_options())
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
