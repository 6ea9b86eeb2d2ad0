"""Functions of the scheduler benchmark (bench/scheduler.py)."""

from server import internal_mutation, mutation


@internal_mutation
async def noop(ctx) -> None:
    """The scheduled job: does nothing, so the scheduler's own cost is what is measured."""


@mutation
async def enqueue(ctx, n: int, at: float, step: float = 0.0) -> int:
    """Schedule `n` no-op mutations at epoch seconds `at`, `at + step`, ..."""
    for i in range(n):
        await ctx.scheduler.run_at(at + i * step, noop, {})
    return n


@mutation
async def kick(ctx) -> str:
    """Schedule one no-op mutation with run_after(0): woken by NOTIFY, not by a poll."""
    return await ctx.scheduler.run_after(0, noop, {})
