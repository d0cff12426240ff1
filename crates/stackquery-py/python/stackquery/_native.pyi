"""Type stubs of the native module (built from ``crates/stackquery-py/src``)."""

from collections.abc import Callable, Generator, Sequence
from typing import Any

def hash_key(key: tuple[str | int | bool, ...]) -> str:
    """The key's canonical text, shared with Rust clients (e.g. ``'["users","7"]'``)."""

def partial_match(
    filter_key: tuple[str | int | bool, ...] | Sequence[str | int | bool],
    target_key: tuple[str | int | bool, ...],
) -> bool:
    """``True`` when ``filter_key`` is a prefix of ``target_key``."""

def key_parts(key: tuple[str | int | bool, ...]) -> tuple[str | int | bool, ...]:
    """The key's parts as the engine stores them."""

def default_retry_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0 first): ``min(2 ** attempt, 30)``."""

class SqliteStorage:
    """The Rust library's embedded SQLite tier: a file, or memory when ``path`` is ``None``."""

    def __init__(self, path: str | None = None) -> None: ...
    @property
    def path(self) -> str | None:
        """The database file (``None`` in memory)."""

class RedisStorage:
    """The Rust library's Redis tier, shared with every client on ``namespace``; connects
    at once (``ConnectionError`` when Redis cannot be reached)."""

    def __init__(self, url: str, namespace: str | None = None, timeout: float = 1.0) -> None: ...
    @property
    def namespace(self) -> str:
        """The namespace every key is stored under."""

class RedisBus:
    """The Rust library's invalidation bus on ``namespace``."""

    def __init__(self, url: str, namespace: str | None = None) -> None: ...
    @property
    def channel(self) -> str:
        """The Redis channel the bus publishes on."""
    @property
    def is_connected(self) -> bool:
        """Whether the bus is subscribed right now."""

def parse_key_hash(key_hash: str) -> tuple[str | int | bool, ...]:
    """The key whose ``hash_key`` text is ``key_hash`` (``ValueError`` if it is none)."""

# The native classes behind ``QueryClient`` (private: use the package's Python classes).


_Key = tuple[str | int | bool, ...]
_Filter = _Key | list[str | int | bool] | None
# (status, fetch_status, data, error, data_updated_at, error_updated_at, failure_count,
#  failure_reason, is_invalidated, is_placeholder_data)
_StateTuple = tuple[str, str, Any, BaseException | None, float | None, float | None, int, BaseException | None, bool, bool]

class RustAwaitable:
    """A Rust future awaited from Python."""
    def __await__(self) -> Generator[Any, None, Any]: ...
    def send(self, value: object = None) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...

class FetchCall(RustAwaitable):
    """One ``fetch_query`` call (a fresh hit completes at its first step)."""

class NativeOptions:
    """A ``QueryOptions`` converted for the engine."""
    def __init__(
        self,
        key: _Key,
        query_fn: Callable[[], Any],
        stale_time: float | None = None,
        gc_time: float | None = None,
        retry: int | None = None,
        retry_delay: Callable[[int], float] | None = None,
        refetch_interval: float | None = None,
        enabled: bool = True,
        placeholder_data: Any = None,
        on_success: Callable[[Any], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        on_settled: Callable[[Any, BaseException | None], object] | None = None,
        data_of: Callable[[], Any] | None = None,
        bound: Any = None,
    ) -> None: ...

class NativeObserver:
    """The engine's observer of one query."""
    def state(self) -> _StateTuple: ...
    def subscribe(self, listener: Callable[[_StateTuple], object]) -> Callable[[], None]: ...
    def pause(self) -> None: ...
    def resume(self, refetch: bool) -> None: ...
    def is_paused(self) -> bool: ...
    def refetch(self) -> RustAwaitable: ...

class NativeMutation:
    """The engine's mutation."""
    def mutate(self, input: Any) -> RustAwaitable: ...
    def state(self) -> tuple[Any, ...]: ...
    def subscribe(self, listener: Callable[[tuple[Any, ...]], object]) -> Callable[[], None]: ...
    def reset(self) -> None: ...

class NativeClient:
    """The engine behind one ``QueryClient``."""
    def __init__(
        self,
        max_queries: int | None = None,
        stale_time: float = 0.0,
        gc_time: float = 300.0,
        retry: int = 3,
        retry_delay: Callable[[int], float] | None = None,
    ) -> None: ...
    def fetch_query(self, options: NativeOptions) -> FetchCall: ...
    def refetch_query(self, options: NativeOptions) -> RustAwaitable: ...
    def get_query_data(self, key: _Key) -> Any: ...
    def get_query_state(self, key: _Key) -> _StateTuple | None: ...
    def mutation(
        self,
        mutation_fn: Callable[[Any], Any],
        on_success: Callable[..., object] | None = None,
        on_error: Callable[..., object] | None = None,
        on_settled: Callable[..., object] | None = None,
        on_mutate: Callable[..., object] | None = None,
        retry: int = 0,
        retry_delay: Callable[[int], float] | None = None,
    ) -> NativeMutation: ...
    def watch(self, options: NativeOptions) -> NativeObserver: ...
    def set_query_data(self, key: _Key, data: Any) -> None: ...
    def invalidate_queries(self, filter_key: _Filter = None) -> RustAwaitable: ...
    def remove_queries(self, filter_key: _Filter = None) -> int: ...
    def reset_queries(self, filter_key: _Filter = None) -> int: ...
    def cancel_queries(self, filter_key: _Filter = None) -> RustAwaitable: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    # ``QueryCache``
    def query_keys(self, filter_key: _Filter = None) -> list[_Key]: ...
    def query_count(self) -> int: ...
    def has_query(self, key: _Key | str) -> bool: ...
    def remove_query(self, key: _Key | str) -> bool: ...
    def refetch_key(self, key: _Key | str) -> RustAwaitable: ...
