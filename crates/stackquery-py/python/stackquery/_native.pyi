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

def parse_key_hash(key_hash: str) -> tuple[str | int | bool, ...]:
    """The key whose ``hash_key`` text is ``key_hash`` (``ValueError`` if it is none)."""
