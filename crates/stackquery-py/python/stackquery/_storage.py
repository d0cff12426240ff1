"""The second tier: PyStackQuery's ``StorageBackend`` protocol, and the Rust library's
own backends and bus (``SqliteStorage``, ``RedisStorage``, ``RedisBus``), which need no
Python dependency and share entries and invalidations with Rust services.

Formats:

- ``SqliteStorage`` and ``RedisStorage`` hold the Rust library's versioned envelope
  (``{"version": 1, "data": …, "data_updated_at_ms": …, "invalidated": …}``) under the
  key's canonical text (``hash_key(key)``, e.g. ``["users",7]``). A dict written by a
  Python client is read by a Rust client as a serde struct with the same fields.
- A ``StorageBackend`` object keeps PyStackQuery's names (``str(key)``, e.g.
  ``"('users', 7)"``) and gets JSON text that both libraries read: the envelope's fields
  plus PyStackQuery's state fields (``status``, ``data``, ``data_updated_at`` in seconds,
  0.0 once invalidated). Entries PyStackQuery wrote are read when their status is
  ``SUCCESS``, so switching keeps the data already stored.

Data must be JSON-serialisable (dicts with ``str`` keys, lists, tuples, ``str``, ``int``,
``float``, ``bool``, ``None``); a value that is not is kept in memory and its write is
skipped with a logged warning. Every storage call is bounded by
``QueryClientConfig.storage_timeout``; a storage that raises or hangs is a logged miss.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._native import RedisBus, RedisStorage, SqliteStorage


@runtime_checkable
class StorageBackend(Protocol):
    """What a Python storage object provides (PyStackQuery's protocol): async ``get``,
    ``set`` with a ttl in seconds, and ``delete``. Any such object can be
    ``QueryClientConfig.storage``; its calls run on the client's event loop."""

    async def get(self, key: str) -> str | None:
        """The stored text under ``key``, or ``None``."""
        ...

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """Stores ``value`` under ``key``, for ``ttl`` seconds (``None``: no expiry)."""
        ...

    async def delete(self, key: str) -> None:
        """Deletes ``key``."""
        ...


__all__ = ["RedisBus", "RedisStorage", "SqliteStorage", "StorageBackend"]
