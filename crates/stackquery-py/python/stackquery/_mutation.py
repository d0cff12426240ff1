"""Mutations: ``MutationOptions``, ``Mutation``, ``MutationState`` and ``MutationStatus``
(PyStackQuery's names and fields) over the engine's mutations in Rust."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._native import default_retry_delay

if TYPE_CHECKING:
    from ._client import QueryClient

I = TypeVar("I")  # noqa: E741 - the mutation's input
D = TypeVar("D")


class MutationStatus(Enum):
    """Where the latest call of a mutation is."""

    IDLE = auto()
    PENDING = auto()
    SUCCESS = auto()
    ERROR = auto()


class MutationState(Generic[D, I]):
    """A snapshot of a mutation's latest call (PyStackQuery's fields, plus
    ``failure_count``)."""

    __slots__ = ("status", "data", "error", "submitted_at", "settled_at", "failure_count")

    def __init__(
        self,
        status: MutationStatus = MutationStatus.IDLE,
        data: D | None = None,
        error: BaseException | None = None,
        submitted_at: float | None = None,
        settled_at: float | None = None,
        failure_count: int = 0,
    ) -> None:
        self.status = status
        self.data = data
        self.error = error
        self.submitted_at = submitted_at
        self.settled_at = settled_at
        self.failure_count = failure_count

    @property
    def is_idle(self) -> bool:
        return self.status == MutationStatus.IDLE

    @property
    def is_pending(self) -> bool:
        return self.status == MutationStatus.PENDING

    @property
    def is_success(self) -> bool:
        return self.status == MutationStatus.SUCCESS

    @property
    def is_error(self) -> bool:
        return self.status == MutationStatus.ERROR

    def __repr__(self) -> str:
        return f"MutationState(status={self.status.name})"


_STATUS = {s.name: s for s in MutationStatus}


def _state(raw: tuple[Any, ...]) -> MutationState[Any, Any]:
    status, data, error, submitted, settled, failures = raw
    return MutationState(_STATUS[status], data, error, submitted, settled, failures)


@dataclass
class MutationOptions(Generic[I, D]):
    """What a mutation does (same fields, order and defaults as PyStackQuery).

    ``on_mutate`` may be sync or async; what it returns is the call's context. If it
    raises, the call fails before ``mutation_fn`` runs, and the state becomes ``ERROR``
    (weak spot 19: PyStackQuery stayed ``PENDING`` forever).

    ``on_error`` is called as ``on_error(error, variables)``, PyStackQuery's signature,
    or as ``on_error(error, variables, context)`` when it accepts three positional
    arguments (decided once, from its signature, when these options are made). The
    context is what ``on_mutate`` returned (``None`` without one), so an optimistic
    update can be rolled back (weak spot 18: PyStackQuery discarded it).

    ``scope`` (not in PyStackQuery, last so that its positional order holds): calls of
    mutations with the same scope on one client run one after another, in the order
    ``mutate`` was called; calls without a scope run concurrently (weak spot 21).
    """

    mutation_fn: Callable[[I], Awaitable[D]]
    on_success: Callable[[D, I], object] | None = None
    on_error: Callable[..., object] | None = None
    on_settled: Callable[[D | None, BaseException | None, I], object] | None = None
    on_mutate: Callable[[I], object] | None = None
    retry: int = 0
    retry_delay: Callable[[int], float] = field(default_factory=lambda: default_retry_delay)
    scope: str | None = None
    _on_error_arity: tuple[Any, bool] = field(
        default=(None, False), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._on_error_takes_context()

    def _on_error_takes_context(self) -> bool:
        """Whether ``on_error`` accepts ``(error, variables, context)`` (inspected once
        per function object)."""
        fn, takes = self._on_error_arity
        if fn is self.on_error:
            return takes
        takes = _accepts_three(self.on_error)
        self._on_error_arity = (self.on_error, takes)
        return takes


def _accepts_three(fn: object) -> bool:
    if fn is None:
        return False
    try:
        inspect.signature(fn).bind(None, None, None)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # two parameters, or no signature to read
        return False
    return True


class Mutation(Generic[I, D]):
    """A data-changing operation: ``await mutation.mutate(input)``.

    Overlapping calls each return their own result (weak spot 21); ``state`` shows the
    latest call.

    Callbacks run after the result is known. An exception in one is reported
    (``sys.unraisablehook``) and never re-runs ``mutation_fn`` (weak spot 17).
    """

    __slots__ = ("options", "_native")

    def __init__(self, options: MutationOptions[I, D], client: QueryClient) -> None:
        self.options = options
        delay = None if options.retry_delay is default_retry_delay else options.retry_delay
        self._native = client._native.mutation(
            options.mutation_fn,
            options.on_success,
            options.on_error,
            options.on_settled,
            options.on_mutate,
            options._on_error_takes_context(),
            int(options.retry),
            delay,
            None if options.scope is None else str(options.scope),
        )

    @property
    def state(self) -> MutationState[D, I]:
        """The latest call's state."""
        return _state(self._native.state())

    def subscribe(self, listener: Callable[[MutationState[D, I]], object]) -> Callable[[], None]:
        """Calls ``listener(state)`` now and on every change; returns the function that
        unsubscribes."""
        return self._native.subscribe(lambda raw: listener(_state(raw)))

    def mutate(self, input_data: I) -> Awaitable[D]:
        """Runs the mutation; returns its data or raises its error (the very exception
        ``mutation_fn`` raised)."""
        return self._native.mutate(input_data)

    def reset(self) -> None:
        """Back to ``IDLE``; listeners hear it (weak spot 20)."""
        self._native.reset()
