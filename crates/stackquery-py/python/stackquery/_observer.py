"""``QueryObserver``: a reactive view of one query, kept by the engine in Rust."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._state import QueryState, _from_engine

if TYPE_CHECKING:
    from ._client import QueryClient, QueryOptions

T = TypeVar("T")

logger = logging.getLogger("stackquery")


class QueryObserver(Generic[T]):
    """Watches one query: ``subscribe`` calls a listener at once and on every change.

    The first subscriber attaches the observer to the query and fetches it if its data is
    missing or stale (and the query is enabled); ``refetch_interval`` polls while someone
    is subscribed. Listeners run on the event loop's thread; an exception in one is
    reported (``sys.unraisablehook``) and changes nothing else.
    """

    __slots__ = ("_options", "_native")

    def __init__(self, client: QueryClient, options: QueryOptions[T]) -> None:
        self._options = options
        self._native = client._native.watch(options._engine_options(client), options.select)

    @property
    def options(self) -> QueryOptions[T]:
        """The options this observer watches."""
        return self._options

    @property
    def result(self) -> QueryState[T, Exception]:
        """The current state, as this observer shows it (``select`` applied)."""
        return self._view(self._native.state())

    def subscribe(self, listener: Callable[[QueryState[T, Exception]], object]) -> Callable[[], None]:
        """Calls ``listener(state)`` now and on every change; returns the function that
        unsubscribes (calling it twice is harmless)."""

        def on_change(raw: tuple[Any, ...]) -> None:
            listener(self._view(raw))

        return self._native.subscribe(on_change)

    async def refetch(self) -> QueryState[T, Exception]:
        """Fetches now (joining a fetch in flight) and returns the new state."""
        return self._view(await self._native.refetch())

    def _view(self, raw: tuple[Any, ...]) -> QueryState[T, Exception]:
        # ``select`` was applied by the engine, once per data change (weak spot 24); one
        # that raised arrives as this observer's error (weak spot 23).
        return _from_engine(raw)
