"""``QueryClient``, ``QueryClientConfig`` and ``QueryOptions``: PyStackQuery's signatures
over the Rust engine (``stackquery._native.NativeClient``).

In progress (issue 14): this module has the fetch path (``fetch_query``,
``prefetch_query``), ``get_query_data``, ``set_query_data``, ``invalidate_queries`` and
``clear``. Observers, mutations, storage and the other methods come next (see
``DESIGN.md``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._native import NativeClient, NativeOptions, default_retry_delay, hash_key
from ._mutation import Mutation, MutationOptions
from ._cache import QueryCache
from ._observer import QueryObserver
from ._state import QueryState, _from_engine

T = TypeVar("T")

logger = logging.getLogger("stackquery")


class _Default(float):
    """A default that equals PyStackQuery's value but is told apart from the same value
    given explicitly (weak spot 27: a per-query ``stale_time=0`` must win over a client
    default of 60, where PyStackQuery took the 0 for "unset")."""

    __slots__ = ()


class _DefaultInt(int):
    """``_Default`` for integers (``retry``)."""

    __slots__ = ()


_STALE_TIME = _Default(0.0)
_GC_TIME = _Default(300.0)
_RETRY = _DefaultInt(3)


def _is_default(value: object) -> bool:
    return isinstance(value, (_Default, _DefaultInt))


@dataclass
class QueryClientConfig:
    """Client-wide defaults; each query may override them (same fields as PyStackQuery)."""

    stale_time: float = 0.0
    gc_time: float = 300.0
    retry: int = 3
    retry_delay: Callable[[int], float] = field(default_factory=lambda: default_retry_delay)
    cache_max_size: int = 1000
    storage: Any = None


@dataclass
class QueryOptions(Generic[T]):
    """What to fetch and how (same fields, order and defaults as PyStackQuery).

    ``query_key`` is checked at once: a key that is not a tuple of ``str``, ``int`` and
    ``bool`` parts raises ``TypeError`` here, not at the first fetch.

    Callbacks run once per fetch (not per caller), on the event loop's thread, after the
    result is stored and before the callers' ``await`` returns:
    ``on_success(data)`` then ``on_settled(data, None)`` after a success;
    ``on_error(error)`` then ``on_settled(data_kept, error)`` once the retries are spent.
    An exception in a callback is reported (``sys.unraisablehook``) and changes nothing
    else: the fetch is not retried and its state stays ``SUCCESS`` (weak spot 16).

    ``placeholder_data`` is what observers show (flagged ``is_placeholder_data``) while
    the query has no data. It is never stored, never returned by ``fetch_query`` (a cold
    fetch returns the fetched data) and never persisted (weak spot 25).
    """

    query_key: tuple[Any, ...]
    query_fn: Callable[[], Awaitable[T]]
    stale_time: float = _STALE_TIME
    gc_time: float = _GC_TIME
    refetch_interval: float | None = None
    retry: int = _RETRY
    retry_delay: Callable[[int], float] | None = None
    enabled: bool = True
    on_success: Callable[[T], object] | None = None
    on_error: Callable[[Exception], object] | None = None
    on_settled: Callable[[T | None, Exception | None], object] | None = None
    select: Callable[[T], object] | None = None
    placeholder_data: T | None = None
    _native: Any = field(default=None, init=False, repr=False, compare=False)
    _built_from: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Converted (and so checked: key, function, durations) at once, not at the first
        # fetch.
        self._engine_options()

    def get_key_hash(self) -> str:
        """The key's canonical text (the Rust library's; PyStackQuery used ``str(key)``)."""
        return hash_key(self.query_key)

    def _engine_options(self, client: QueryClient | None = None) -> Any:
        """The options as the engine takes them, converted once and again only after a
        field changed (the fields left at their defaults defer to the client's
        ``QueryClientConfig``).

        With ``on_error`` or ``on_settled``, the conversion depends on the ``client`` too
        (its default ``retry`` decides which failure is the last one, and ``on_settled``
        reads the data it kept), so it is redone when another client uses the options.
        """
        b = self._built_from
        if (
            b
            and b[0] is self.query_key
            and b[1] is self.query_fn
            and b[2] is self.stale_time
            and b[3] is self.gc_time
            and b[4] is self.retry
            and b[5] is self.retry_delay
            and b[6] is self.refetch_interval
            and b[7] is self.enabled
            and b[8] is self.placeholder_data
            and b[9] is self.on_success
            and b[10] is self.on_error
            and b[11] is self.on_settled
            and (b[12] is None or b[12] is client)
        ):
            return self._native
        if not callable(self.query_fn):
            raise TypeError(
                f"query_fn must be an async function, got {type(self.query_fn).__name__}"
            )
        for name in ("on_success", "on_error", "on_settled"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {type(hook).__name__}")
        retry = None if _is_default(self.retry) else int(self.retry)
        failure_hooks = self.on_error is not None or self.on_settled is not None
        bound = None
        data_of = None
        if failure_hooks and client is not None:
            # The last failure is the one the retry policy gives up on: resolve the
            # client's default count, so the engine's policy and the callbacks agree.
            bound = client
            if retry is None:
                retry = int(client._config.retry)
            data_of = functools.partial(client._native.get_query_data, self.query_key)
        with_hooks = not failure_hooks or client is not None
        self._native = NativeOptions(
            self.query_key,
            self.query_fn,
            None if _is_default(self.stale_time) else float(self.stale_time),
            None if _is_default(self.gc_time) else float(self.gc_time),
            retry,
            self.retry_delay,
            None if self.refetch_interval is None else float(self.refetch_interval),
            bool(self.enabled),
            self.placeholder_data,
            self.on_success if with_hooks else None,
            self.on_error if with_hooks else None,
            self.on_settled if with_hooks else None,
            data_of,
        )
        # Converted without a client but with failure callbacks: only a check, never
        # kept (the next call, from a client, converts again with them).
        bound_marker = bound if with_hooks else _UNBOUND
        self._built_from = (
            self.query_key,
            self.query_fn,
            self.stale_time,
            self.gc_time,
            self.retry,
            self.retry_delay,
            self.refetch_interval,
            self.enabled,
            self.placeholder_data,
            self.on_success,
            self.on_error,
            self.on_settled,
            bound_marker,
        )
        return self._native


_UNBOUND = object()
"""Marks options converted for a check only (never matches a client)."""


class QueryClient:
    """The entry point: a cache of queries on the Rust engine.

    One client runs on one event loop: the loop it is first used on.
    """

    __slots__ = ("_config", "_native", "_cache")

    def __init__(self, config: QueryClientConfig | None = None) -> None:
        self._config = config or QueryClientConfig()
        size = self._config.cache_max_size
        if size is not None and size < 0:
            raise ValueError(f"cache_max_size must be >= 0, got {size}")
        cfg = self._config
        delay = None if cfg.retry_delay is default_retry_delay else cfg.retry_delay
        self._native = NativeClient(
            size, float(cfg.stale_time), float(cfg.gc_time), int(cfg.retry), delay
        )
        self._cache: QueryCache | None = None

    @property
    def cache(self) -> QueryCache:
        """The cache of this client's queries (a view: the entries live in the engine)."""
        cache = self._cache
        if cache is None:
            cache = self._cache = QueryCache(self)
        return cache

    def fetch_query(self, options: QueryOptions[T]) -> Awaitable[T]:
        """The data of ``options.query_key``: fresh from the cache at once, stale from the
        cache with one refetch in the background, or fetched (one fetch however many
        callers wait). Awaitable; a fresh hit completes without a task switch."""
        return self._native.fetch_query(options._engine_options(self))

    async def prefetch_query(self, options: QueryOptions[Any]) -> None:
        """Warms the cache; failures are logged, never raised."""
        try:
            await self.fetch_query(options)
        except Exception:  # noqa: BLE001 - a prefetch never raises
            logger.debug("prefetch of %s failed", options.query_key, exc_info=True)

    def get_query_data(self, key: tuple[Any, ...]) -> Any:
        """The cached data of ``key`` (fresh or stale), or ``None``."""
        return self._native.get_query_data(key)

    def get_query_state(self, key: tuple[Any, ...]) -> QueryState[Any, Any] | None:
        """A snapshot of the state of ``key``, or ``None`` when the cache does not hold it."""
        raw = self._native.get_query_state(key)
        return None if raw is None else _from_engine(raw)

    def set_query_data(self, key: tuple[Any, ...], data: Any) -> None:
        """Writes ``data`` under ``key``, creating the entry if there is none (weak spot
        15: PyStackQuery ignored writes to unknown keys)."""
        self._native.set_query_data(key, data)

    async def invalidate_queries(
        self, filter_key: tuple[Any, ...] | list[Any] | None = None, *, refetch: bool = True
    ) -> None:
        """Marks the queries under ``filter_key`` (all when ``None``) stale; observed ones
        refetch. A list filter matches tuple keys."""
        del refetch  # observed queries always refetch, as in TanStack Query
        await self._native.invalidate_queries(filter_key)

    async def get_query_data_async(self, key: tuple[Any, ...]) -> Any:
        """The cached data of ``key`` (PyStackQuery's version always returned ``None``)."""
        return self._native.get_query_data(key)

    def remove_queries(self, filter_key: tuple[Any, ...] | list[Any] | None = None) -> None:
        """Removes the queries under ``filter_key`` (all when ``None``) from the cache."""
        self._native.remove_queries(filter_key)

    def reset_queries(self, filter_key: tuple[Any, ...] | list[Any] | None = None) -> None:
        """Puts the queries under ``filter_key`` back to their initial state (no data)."""
        self._native.reset_queries(filter_key)

    async def cancel_queries(
        self, filter_key: tuple[Any, ...] | list[Any] | None = None
    ) -> int:
        """Cancels the fetches in flight under ``filter_key``; returns how many. Their
        waiters raise ``CancelledError``; each entry keeps its state from before."""
        return await self._native.cancel_queries(filter_key)

    def mutation(self, options: MutationOptions[Any, Any]) -> Mutation[Any, Any]:
        """A mutation running ``options`` (see ``Mutation``)."""
        return Mutation(options, self)

    def watch(self, options: QueryOptions[T]) -> QueryObserver[T]:
        """An observer of ``options``' query (see ``QueryObserver``)."""
        return QueryObserver(self, options)

    def clear(self) -> None:
        """Empties the cache."""
        self._native.clear()
