import asyncio

from server import action


@action
async def inc_then_wait_for(ctx, name: str, flag: str) -> int:
    """Increment `name`, then keep running until counter `flag` is set (by the test's client,
    once it has seen the increment): proves Transitions are not held back while an action runs."""
    value = await ctx.run_mutation("counters:inc", {"name": name})
    for _ in range(3000):
        if await ctx.run_query("counters:get", {"name": flag}):
            return value
        await asyncio.sleep(0.01)
    return -1
