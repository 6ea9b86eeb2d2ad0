"""A function call's time limit, as `asyncio.timeout` gives it, for a fraction of the cost.

Every call of app code runs under its deadline (Runtime.guarded). `asyncio.timeout` arms a loop
timer per call and cancels it at the end: ~10 µs a call under uvloop, 6% of the CPU of a
live-query tick re-running 1,000 small queries. Here the deadlines of one event loop share one
timer, armed at the earliest: starting a call pushes its deadline on a heap (calls mostly end in
the order they started, so the heap's top is usually a call already ended, dropped as the next
one starts), and the timer is re-armed only when a deadline earlier than the armed one comes.
Behind a long call at the top, ended ones pile up: once they outnumber the live ones (and
COMPACT_PAST), the heap is rebuilt without them, so it stays within twice the calls running.

The semantics are `asyncio.timeout`'s: past the deadline the task is cancelled, and leaving the
block with that cancellation (none other pending) raises TimeoutError from it; `expired()` says
whether the deadline fired. Deadlines are on `time.monotonic()`'s clock, as Invocation's.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import weakref
from types import TracebackType
from typing import Any

COMPACT_PAST = 1024  # entries of ended calls a heap may hold beyond its live ones before it is compacted

_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timers] = weakref.WeakKeyDictionary()


class Deadline:
    """`async with Deadline(when)`: the block is cancelled at monotonic time `when` (TimeoutError)."""

    __slots__ = ("_cancelling", "_expired", "_task", "_timers", "done", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self.done = False
        self._expired = False
        self._task: asyncio.Task[Any] | None = None
        self._timers: _Timers | None = None
        self._cancelling = 0

    def expired(self) -> bool:
        """Did the deadline pass while the block ran (and cancel it)?"""
        return self._expired

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task, self._cancelling = task, task.cancelling()
        loop = task.get_loop()
        timers = _timers.get(loop)
        if timers is None:
            timers = _timers[loop] = _Timers(loop)
        self._timers = timers
        timers.add(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.done = True
        task, self._task = self._task, None  # an ended call's entry keeps no task alive
        if self._timers is not None:
            self._timers.live -= 1
            self._timers = None
        if self._expired:
            assert task is not None
            if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc  # our cancellation, and no other pending: the deadline's

    def _expire(self) -> None:
        if not self.done and self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()


class _Timers:
    """One event loop's deadlines and its one timer."""

    __slots__ = ("_armed", "_handle", "_heap", "_loop", "_serial", "live")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Deadline]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed = float("inf")  # monotonic time the timer is set for
        self._serial = 0
        self.live = 0  # deadlines of calls not ended

    def add(self, deadline: Deadline) -> None:
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        if len(heap) > COMPACT_PAST and len(heap) > 2 * self.live:
            # A long call at the top holds back the ended ones behind it: drop them all at once.
            heap[:] = [entry for entry in heap if not entry[2].done]
            heapq.heapify(heap)
        self.live += 1
        self._serial += 1
        heapq.heappush(heap, (deadline.when, self._serial, deadline))
        if deadline.when < self._armed:
            self._arm(deadline.when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        # At least a millisecond: uvloop's timers count whole ones, and one firing a fraction
        # early would be re-armed at once, again and again, until the clock got there.
        self._handle = self._loop.call_later(max(0.001, when - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._handle, self._armed = None, float("inf")
        now, heap = time.monotonic(), self._heap
        while heap and (heap[0][2].done or heap[0][0] <= now):
            heapq.heappop(heap)[2]._expire()
        if heap:
            self._arm(heap[0][0])
