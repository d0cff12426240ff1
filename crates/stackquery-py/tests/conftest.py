"""Weak spot 38: PyStackQuery's own suite slept for real (18 tests, up to 0.35 s each),
so it was slow and flaky. This suite runs time-based tests on ``looptime``'s virtual
clock; this file keeps it that way.

It measures how long each test's event loop really waits: the time the main thread
spends blocked in the loop's selector (``selectors.*Selector.select``, which every
asyncio loop on Linux waits in, ``looptime``'s included) and in ``time.sleep``. A test
that waits for real longer than ``REAL_SLEEP_LIMIT`` fails, naming the time. CPU work
does not count, only waiting. At the end the summary reports the suite's wall time and
its total real waiting. (uvloop waits inside libuv, where this cannot see: the few
tests in ``test_uvloop.py`` are not measured.)
"""

from __future__ import annotations

import selectors
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest

REAL_SLEEP_LIMIT = 0.5  # seconds of real waiting allowed per test

_MAIN = threading.main_thread().ident
_waited = [0.0]  # real seconds the main thread has spent waiting, since import
_per_test: dict[str, float] = {}
_suite_start = [time.perf_counter()]


def _measured(wait: Callable[..., Any]) -> Callable[..., Any]:
    def measured(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != _MAIN:
            return wait(*args, **kwargs)
        start = time.perf_counter()
        try:
            return wait(*args, **kwargs)
        finally:
            _waited[0] += time.perf_counter() - start

    measured.__wrapped__ = wait  # type: ignore[attr-defined]
    return measured


for _name in ("EpollSelector", "PollSelector", "SelectSelector", "DevpollSelector", "KqueueSelector"):
    _cls = getattr(selectors, _name, None)
    if _cls is not None and not hasattr(_cls.select, "__wrapped__"):
        _cls.select = _measured(_cls.select)  # type: ignore[method-assign]
if not hasattr(time.sleep, "__wrapped__"):
    time.sleep = _measured(time.sleep)  # type: ignore[assignment]


def real_wait_so_far() -> float:
    """Real seconds the main thread has waited (selector and ``time.sleep``) so far."""
    return _waited[0]


@pytest.fixture
def real_wait() -> Callable[[], float]:
    """The meter, for tests of the meter itself."""
    return real_wait_so_far


def pytest_sessionstart(session: pytest.Session) -> None:
    _suite_start[0] = time.perf_counter()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    before = _waited[0]
    result = yield
    waited = _waited[0] - before
    _per_test[item.nodeid] = waited
    # Tests against real sockets and processes (Redis, SQLite files, a Rust peer) wait
    # for them in real time, with generous bounds; they are marked and reported.
    if waited > REAL_SLEEP_LIMIT and item.get_closest_marker("real_io") is None:
        pytest.fail(
            f"weak spot 38: this test waited {waited:.2f} s of real time (limit "
            f"{REAL_SLEEP_LIMIT} s): put it on the virtual clock (pytest.mark.looptime)",
            pytrace=False,
        )
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    wall = time.perf_counter() - _suite_start[0]
    total = sum(_per_test.values())
    slowest = sorted(_per_test.items(), key=lambda kv: kv[1], reverse=True)[:3]
    terminalreporter.write_line(
        f"stackquery: suite wall time {wall:.2f} s; real waiting in tests {total:.2f} s "
        f"(limit {REAL_SLEEP_LIMIT} s per test); most: "
        + ", ".join(f"{n.split('::')[-1]} {w:.3f} s" for n, w in slowest)
    )
