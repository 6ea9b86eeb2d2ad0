"""server/core/deadlines.py: a function call's time limit with asyncio.timeout's semantics, its
deadlines sharing one timer per event loop; under asyncio's own loop and uvloop."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from server.core.deadlines import Deadline

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def on(loop: str, main: Callable[[], Awaitable[Any]]) -> Any:
    return LOOPS[loop](main())  # type: ignore[operator]


@pytest.mark.parametrize("loop", LOOPS)
def test_past_the_deadline_the_block_raises_timeout_error_and_says_it_expired(loop: str) -> None:
    async def main() -> tuple[float, bool]:
        started = time.monotonic()
        deadline = Deadline(started + 0.05)
        with pytest.raises(TimeoutError) as raised:
            async with deadline:
                await asyncio.sleep(5)
        assert isinstance(raised.value.__cause__, asyncio.CancelledError)
        return time.monotonic() - started, deadline.expired()

    took, expired = on(loop, main)
    assert expired and 0.05 <= took < 1.0


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_that_ends_in_time_is_left_alone(loop: str) -> None:
    async def main() -> tuple[int, bool, int]:
        deadline = Deadline(time.monotonic() + 0.05)
        async with deadline:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.1)  # past the deadline: nothing is cancelled any more
        task = asyncio.current_task()
        assert task is not None
        return 42, deadline.expired(), task.cancelling()

    assert on(loop, main) == (42, False, 0)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_deadline_already_past_expires_at_the_first_await(loop: str) -> None:
    async def main() -> bool:
        deadline = Deadline(time.monotonic() - 1)
        with pytest.raises(TimeoutError):
            async with deadline:
                await asyncio.sleep(1)
        return deadline.expired()

    assert on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_nested_deadlines_each_raise_only_their_own(loop: str) -> None:
    """A call inside a call (ctx.run_query): the inner deadline's TimeoutError is caught inside
    the outer block, which goes on; the outer one later fires for itself."""
    async def main() -> list[str]:
        seen = []
        outer = Deadline(time.monotonic() + 0.15)
        with pytest.raises(TimeoutError):
            async with outer:
                inner = Deadline(time.monotonic() + 0.02)
                try:
                    async with inner:
                        await asyncio.sleep(5)
                except TimeoutError:
                    seen.append(f"inner {inner.expired()} {outer.expired()}")
                await asyncio.sleep(5)
        seen.append(f"outer {outer.expired()}")
        return seen

    assert on(loop, main) == ["inner True False", "outer True"]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancellation_from_elsewhere_stays_a_cancellation(loop: str) -> None:
    async def main() -> bool:
        deadline = Deadline(time.monotonic() + 5)

        async def victim() -> None:
            async with deadline:
                await asyncio.sleep(5)

        task = asyncio.create_task(victim())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return deadline.expired()

    assert on(loop, main) is False


@pytest.mark.parametrize("loop", LOOPS)
def test_many_deadlines_in_any_order_fire_for_exactly_the_calls_that_overran_them(loop: str) -> None:
    """400 concurrent calls with random limits and random durations, started in random order on
    one loop (one timer between them): a call whose work is well past its limit times out, one
    well within it does not, whatever ended or started around it."""
    rng = random.Random(7)
    plans = [(rng.choice([0.05, 0.2, 0.5]), rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.1)) for _ in range(400)]

    async def call(limit: float, work: float, start: float) -> tuple[float, float, bool]:
        await asyncio.sleep(start)
        try:
            async with Deadline(time.monotonic() + limit):
                await asyncio.sleep(work)
        except TimeoutError:
            return limit, work, True
        return limit, work, False

    async def main() -> list[tuple[float, float, bool]]:
        return await asyncio.gather(*(call(*plan) for plan in plans))

    results = on(loop, main)
    for limit, work, timed_out in results:
        if work > limit + 0.1:  # (timers run late on a busy machine: a margin either way)
            assert timed_out, (limit, work)
        elif work < limit - 0.1:
            assert not timed_out, (limit, work)
    assert sum(t for _, _, t in results) > 100  # most limits are shorter than most work


@pytest.mark.parametrize("loop", LOOPS)
def test_calls_ended_behind_a_long_one_do_not_pile_up(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One long call's deadline stays at the top of the heap; 20,000 short calls end behind it:
    the heap keeps within twice the calls running (plus COMPACT_PAST), holding no ended task."""
    from server.core import deadlines

    monkeypatch.setattr(deadlines, "COMPACT_PAST", 100)

    async def main() -> tuple[int, int]:
        async def long_call() -> None:
            async with Deadline(time.monotonic() + 0.001 + 60):
                await asyncio.sleep(1)

        longest = asyncio.create_task(long_call())
        await asyncio.sleep(0)
        for _ in range(20_000):
            async with Deadline(time.monotonic() + 60):
                await asyncio.sleep(0)
        timers = deadlines._timers[asyncio.get_running_loop()]
        size = len(timers._heap)
        kept_tasks = sum(1 for _, _, d in timers._heap if d.done and d._task is not None)
        longest.cancel()
        return size, kept_tasks

    size, kept_tasks = on(loop, main)
    assert size <= 2 * 2 + 100 + 1 and kept_tasks == 0, size
