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
from typing import Any, Generic, Protocol, TypeVar

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
    # stackquery's additions (keyword arguments after PyStackQuery's own):
    bus: Any = None
    """A ``RedisBus``: invalidations, writes and removals shared with every client (Python
    or Rust) on its namespace."""
    storage_timeout: float = 1.0
    """Bound in seconds on each storage call: a storage that hangs is a logged miss
    after it (PyStackQuery waited forever)."""


_FIELDS = frozenset(
    (
        "query_key",
        "query_fn",
        "stale_time",
        "gc_time",
        "refetch_interval",
        "retry",
        "retry_delay",
        "enabled",
        "on_success",
        "on_error",
        "on_settled",
        "placeholder_data",
    )
)
"""The fields the engine's conversion reads (assigning one converts again)."""

_UNBOUND = object()
"""Marks options converted for a check only (never matches a client)."""


@dataclass(init=False)
class QueryOptions(Generic[T]):
    """What to fetch and how (same fields, order and defaults as PyStackQuery).

    The options are converted for the engine once, at construction (which checks them:
    a bad key, function or duration raises here), and again only after a field is
    assigned.

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
    _bound: Any = field(default=None, init=False, repr=False, compare=False)

    def __init__(
        self,
        query_key: tuple[Any, ...],
        query_fn: Callable[[], Awaitable[T]],
        stale_time: float = _STALE_TIME,
        gc_time: float = _GC_TIME,
        refetch_interval: float | None = None,
        retry: int = _RETRY,
        retry_delay: Callable[[int], float] | None = None,
        enabled: bool = True,
        on_success: Callable[[T], object] | None = None,
        on_error: Callable[[Exception], object] | None = None,
        on_settled: Callable[[T | None, Exception | None], object] | None = None,
        select: Callable[[T], object] | None = None,
        placeholder_data: T | None = None,
    ) -> None:
        # Written to the instance dict directly: ``__setattr__`` (which drops the
        # conversion) is for assignments made later.
        d = self.__dict__
        d["query_key"] = query_key
        d["query_fn"] = query_fn
        d["stale_time"] = stale_time
        d["gc_time"] = gc_time
        d["refetch_interval"] = refetch_interval
        d["retry"] = retry
        d["retry_delay"] = retry_delay
        d["enabled"] = enabled
        d["on_success"] = on_success
        d["on_error"] = on_error
        d["on_settled"] = on_settled
        d["select"] = select
        d["placeholder_data"] = placeholder_data
        d["_native"] = None
        d["_bound"] = None
        # Converted (and so checked: key, function, durations) at once, not at the first
        # fetch.
        self._convert(None)

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        d[name] = value
        if name in _FIELDS:
            d["_native"] = None

    def get_key_hash(self) -> str:
        """The key's canonical text (the Rust library's; PyStackQuery used ``str(key)``)."""
        return hash_key(self.query_key)

    def _engine_options(self, client: QueryClient | None = None) -> Any:
        """The options as the engine takes them (the fields left at their defaults defer
        to the client's ``QueryClientConfig``), converted again only after a field was
        assigned.

        With ``on_error`` or ``on_settled``, the conversion depends on the ``client`` too
        (its default ``retry`` decides which failure is the last one, and ``on_settled``
        reads the data it kept), so it is redone when another client uses the options.
        """
        engine = None if client is None else client._native
        native = self._native
        if native is not None:
            bound = self._bound
            if bound is None or bound is engine:
                return native
        return self._convert(engine)

    def _convert(self, engine: Any) -> Any:
        """Converts the options, for the client engine ``engine`` (a ``NativeClient``;
        ``None``: a check only). Called by the engine's ``fetch_query`` itself when the
        options were converted for another client."""
        d = self.__dict__
        query_fn = d["query_fn"]
        if not callable(query_fn):
            raise TypeError(f"query_fn must be an async function, got {type(query_fn).__name__}")
        on_success = d["on_success"]
        on_error = d["on_error"]
        on_settled = d["on_settled"]
        for name, hook in (("on_success", on_success), ("on_error", on_error), ("on_settled", on_settled)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {type(hook).__name__}")
        retry = d["retry"]
        retry = None if _is_default(retry) else int(retry)
        bound = None
        data_of = None
        if on_error is not None or on_settled is not None:
            if engine is None:
                # Only a check (at construction): the callbacks wait for a client.
                bound = _UNBOUND
                on_success = on_error = on_settled = None
            else:
                # The last failure is the one the retry policy gives up on: resolve the
                # client's default count, so the engine's policy and the callbacks agree.
                bound = engine
                if retry is None:
                    retry = int(engine.default_retry)
                data_of = functools.partial(engine.get_query_data, d["query_key"])
        stale_time = d["stale_time"]
        gc_time = d["gc_time"]
        interval = d["refetch_interval"]
        native = NativeOptions(
            d["query_key"],
            query_fn,
            None if _is_default(stale_time) else float(stale_time),
            None if _is_default(gc_time) else float(gc_time),
            retry,
            d["retry_delay"],
            None if interval is None else float(interval),
            bool(d["enabled"]),
            d["placeholder_data"],
            on_success,
            on_error,
            on_settled,
            data_of,
            bound,  # _UNBOUND (a check only) matches no client: converted again
        )
        d["_native"] = native
        d["_bound"] = bound
        return native


class _FetchQuery(Protocol):
    def __call__(self, options: QueryOptions[T], /) -> Awaitable[T]: ...


class QueryClient:
    """The entry point: a cache of queries on the Rust engine.

    One client runs on one event loop: the loop it is first used on.
    """

    __slots__ = ("_config", "_native", "_cache", "fetch_query", "get_query_data")

    fetch_query: _FetchQuery
    """``fetch_query(options)``: the data of ``options.query_key``: fresh from the cache at
    once, stale from the cache with one refetch in the background, or fetched (one fetch
    however many callers wait). Awaitable; a fresh hit completes without a task switch.
    (The engine's own method, bound per client: no Python frame on the hot path.)"""

    get_query_data: Callable[[tuple[Any, ...]], Any]
    """``get_query_data(key)``: the cached data of ``key`` (fresh or stale), or ``None``.
    (The engine's own method, bound per client.)"""

    def __init__(self, config: QueryClientConfig | None = None) -> None:
        self._config = config or QueryClientConfig()
        size = self._config.cache_max_size
        if size is not None and size < 0:
            raise ValueError(f"cache_max_size must be >= 0, got {size}")
        cfg = self._config
        delay = None if cfg.retry_delay is default_retry_delay else cfg.retry_delay
        self._native = NativeClient(
            size,
            float(cfg.stale_time),
            float(cfg.gc_time),
            int(cfg.retry),
            delay,
            cfg.storage,
            cfg.bus,
            float(cfg.storage_timeout),
        )
        # The two hottest calls go straight to the engine (a slot read, then Rust).
        self.fetch_query = self._native.fetch_query
        self.get_query_data = self._native.get_query_data
        self._cache: QueryCache | None = None

    @property
    def cache(self) -> QueryCache:
        """The cache of this client's queries (a view: the entries live in the engine)."""
        cache = self._cache
        if cache is None:
            cache = self._cache = QueryCache(self)
        return cache

    async def prefetch_query(self, options: QueryOptions[Any]) -> None:
        """Warms the cache; failures are logged, never raised."""
        try:
            await self.fetch_query(options)
        except Exception:  # noqa: BLE001 - a prefetch never raises
            logger.debug("prefetch of %s failed", options.query_key, exc_info=True)

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
        """The data of ``key`` from memory, else from the storage (read, not put in
        memory; whatever its age), else ``None``."""
        return await self._native.get_query_data_async(key)

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
        return int(await self._native.cancel_queries(filter_key))

    def mutation(self, options: MutationOptions[Any, Any]) -> Mutation[Any, Any]:
        """A mutation running ``options`` (see ``Mutation``)."""
        return Mutation(options, self)

    def watch(self, options: QueryOptions[T]) -> QueryObserver[T]:
        """An observer of ``options``' query (see ``QueryObserver``)."""
        return QueryObserver(self, options)

    def clear(self) -> None:
        """Empties the cache."""
        self._native.clear()

    async def flush_storage(self) -> None:
        """Waits until every write to the storage queued so far has been attempted
        (writes go behind: ``fetch_query`` does not wait for them)."""
        await self._native.flush_storage()

    async def shutdown(self, timeout: float = 5.0) -> bool:
        """Waits, at most ``timeout`` seconds, until everything this client owes the
        storage and the bus (writes behind, invalidations, deletions) has landed; returns
        whether it all did. Call it before the process exits: a plain exit loses what is
        still queued."""
        return bool(await self._native.shutdown(float(timeout)))

    def stats(self) -> dict[str, int]:
        """The client's counters: ``hits``, ``misses``, ``fetches``, ``dedup_joins``,
        ``evictions``, ``l2_hits``, ``l2_misses``, ``l2_errors``, ``l2_writes``, … and
        ``entries`` (an empty dict before the client's first use)."""
        return dict(self._native.stats())
