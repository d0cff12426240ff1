"""Query states and statuses (PyStackQuery's classes, same names, members and fields).

The engine keeps the state in Rust; ``QueryClient.get_query_state`` returns a snapshot in
this class.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Any, Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


class QueryStatus(Enum):
    """Whether a query has data, an error, or neither yet."""

    IDLE = auto()
    PENDING = auto()
    SUCCESS = auto()
    ERROR = auto()


class FetchStatus(Enum):
    """Whether a fetch is running."""

    IDLE = auto()
    FETCHING = auto()
    PAUSED = auto()


class QueryState(Generic[T, E]):
    """A snapshot of one query's state (PyStackQuery's fields, plus ``is_invalidated`` and
    ``is_placeholder_data``).

    ``data_updated_at`` is a wall-clock ``time.time()`` stamp. After an invalidation it
    reads ``0.0``, as in PyStackQuery (its own suite checks this), and
    ``is_invalidated`` says so directly. The engine keeps the real stamp: freshness is
    decided by the loop's monotonic clock, never by this number.

    ``is_placeholder_data`` is ``True`` when ``data`` is the options' ``placeholder_data``
    shown by an observer while the query has no data yet (PyStackQuery stored the
    placeholder as ``SUCCESS`` data; here it is never stored, returned by a fetch, or
    persisted: weak spot 25).
    """

    __slots__ = (
        "status",
        "fetch_status",
        "data",
        "error",
        "data_updated_at",
        "error_updated_at",
        "fetch_failure_count",
        "fetch_failure_reason",
        "is_invalidated",
        "is_placeholder_data",
    )

    def __init__(
        self,
        status: QueryStatus = QueryStatus.IDLE,
        fetch_status: FetchStatus = FetchStatus.IDLE,
        data: T | None = None,
        error: E | None = None,
        data_updated_at: float | None = None,
        error_updated_at: float | None = None,
        fetch_failure_count: int = 0,
        fetch_failure_reason: E | None = None,
        is_invalidated: bool = False,
        is_placeholder_data: bool = False,
    ) -> None:
        self.status = status
        self.fetch_status = fetch_status
        self.data = data
        self.error = error
        self.data_updated_at = data_updated_at
        self.error_updated_at = error_updated_at
        self.fetch_failure_count = fetch_failure_count
        self.fetch_failure_reason = fetch_failure_reason
        self.is_invalidated = is_invalidated
        self.is_placeholder_data = is_placeholder_data

    @property
    def is_idle(self) -> bool:
        """No fetch has been made and there is no data."""
        return self.status == QueryStatus.IDLE

    @property
    def is_pending(self) -> bool:
        """The first fetch is under way (no data yet)."""
        return self.status == QueryStatus.PENDING

    @property
    def is_success(self) -> bool:
        """The last fetch (or write) produced data."""
        return self.status == QueryStatus.SUCCESS

    @property
    def is_error(self) -> bool:
        """The last fetch failed."""
        return self.status == QueryStatus.ERROR

    @property
    def is_fetching(self) -> bool:
        """A fetch is in flight."""
        return self.fetch_status == FetchStatus.FETCHING

    @property
    def is_loading(self) -> bool:
        """The first fetch is in flight."""
        return self.is_pending and self.is_fetching

    @property
    def has_data(self) -> bool:
        """There is data (``None`` returned by a query function is data too, but reads as
        no data here, as in PyStackQuery)."""
        return self.data is not None

    def __repr__(self) -> str:
        return (
            f"QueryState(status={self.status.name}, fetch_status={self.fetch_status.name}, "
            f"has_data={self.has_data}, is_invalidated={self.is_invalidated})"
        )


_STATUS = {s.name: s for s in QueryStatus}
_FETCH = {s.name: s for s in FetchStatus}


def _from_engine(raw: tuple[Any, ...]) -> QueryState[Any, Any]:
    """Builds a state from the tuple the native client returns."""
    (status, fetch, data, error, at, error_at, failures, reason, invalidated, placeholder) = raw
    return QueryState(
        _STATUS[status],
        _FETCH[fetch],
        data,
        error,
        0.0 if invalidated and at is not None else at,
        error_at,
        failures,
        reason,
        invalidated,
        placeholder,
    )
