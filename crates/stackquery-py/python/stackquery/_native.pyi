"""Type stubs of the native module (built from ``crates/stackquery-py/src``)."""

from collections.abc import Sequence

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
