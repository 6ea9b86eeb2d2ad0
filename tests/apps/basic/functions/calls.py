"""ctx.run_query / ctx.run_mutation inside queries and mutations (tests/test_nested_calls.py)."""

import asyncio
from typing import Any

from server import ConvexError, internal_mutation, internal_query, mutation, query


@internal_mutation
async def noop(ctx) -> None:
    """What `add` schedules."""


@internal_mutation
async def add(ctx, name: str, fail: bool = False, boom: bool = False) -> int:
    """Increments counter `name` and schedules a job tagged with it; then fails if asked to."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    value = 1 if doc is None else doc["value"] + 1
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "value": value})
    else:
        await ctx.db.patch(doc["_id"], {"value": value})
    await ctx.scheduler.run_after(0, noop, {})
    await ctx.db.insert("items", {"a": "job-of", "b": name})
    print("add", name)
    if fail:
        raise ConvexError({"failed": name})
    if boom:
        raise ValueError("nested detail")
    return value


@mutation
async def outer(ctx, name: str, fail_inner: bool = False, catch: bool = True) -> dict[str, Any]:
    """Writes, runs `add` as a sub-transaction (catching its failure if asked to), writes again,
    then reads its own uncommitted writes through a nested query."""
    await ctx.db.insert("items", {"a": name, "b": "before"})
    print("outer before")
    try:
        inner: Any = await ctx.run_mutation(add, {"name": name, "fail": fail_inner})
    except ConvexError as exc:
        if not catch:
            raise
        inner = exc.data
    await ctx.db.insert("items", {"a": name, "b": "after"})
    seen = await ctx.run_query("calls:items_of", {"a": name})
    return {"inner": inner, "seen": seen, "counter": await ctx.run_query("counters:get", {"name": name})}


@mutation
async def outer_boom(ctx, name: str) -> str:
    """A nested failure that is not a ConvexError reaches the caller as a RuntimeError."""
    try:
        await ctx.run_mutation("calls:add", {"name": name, "boom": True})
    except RuntimeError as exc:
        return f"caught {type(exc).__name__}: {exc}"
    return "not raised"


@mutation
async def concurrent(ctx, name: str) -> None:
    """A failing nested mutation, a successful one and the caller's own write, all at once: each
    nested call's savepoint holds only its own writes."""

    async def failing() -> None:
        try:
            await ctx.run_mutation(add, {"name": f"{name}-bad", "fail": True})
        except ConvexError:
            pass

    await asyncio.gather(failing(), ctx.db.insert("items", {"a": name, "b": "outer"}),
                         ctx.run_mutation(add, {"name": f"{name}-ok"}))


@mutation
async def bump_via_query(ctx, name: str) -> int:
    """Read-modify-write whose read is a nested query: concurrent runs must not lose updates."""
    value = await ctx.run_query("counters:get", {"name": name})
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "value": value + 1})
    else:
        await ctx.db.patch(doc["_id"], {"value": value + 1})
    return value + 1


@mutation
async def inc_nested(ctx, name: str) -> int:
    result: int = await ctx.run_mutation("counters:inc", {"name": name})
    return result


@internal_query
async def items_of(ctx, a: str) -> list[str]:
    rows = await ctx.db.query("items").with_index("by_a", lambda q: q.eq("a", a)).collect()
    return [r["b"] for r in rows]


@query
async def jobs_of(ctx) -> list[str]:
    """Which `add` calls' jobs exist (each `add` tags its job with an item)."""
    return await items_of.handler(ctx, a="job-of")


@query
async def scheduled(ctx) -> int:
    return len(await ctx.db.system.query("_scheduled_functions").collect())


@query
async def via(ctx, name: str) -> int:
    """A live query whose only read is a nested query's."""
    result: int = await ctx.run_query("counters:get", {"name": name})
    return result


@internal_mutation
async def recurse(ctx, n: int) -> int:
    if n == 0:
        return 0
    return 1 + await ctx.run_mutation(recurse, {"n": n - 1})


@query
async def recurse_query(ctx, n: int) -> int:
    if n == 0:
        return 0
    return 1 + await ctx.run_query(recurse_query, {"n": n - 1})


@mutation
async def calls_action(ctx) -> None:
    await ctx.run_action("counters:twice", {"name": "x"})


@query
async def query_calls_mutation(ctx) -> None:
    await ctx.run_mutation("counters:inc", {"name": "x"})


@mutation
async def bad_args(ctx) -> str:
    try:
        await ctx.run_mutation("counters:inc", {"name": 5})
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "accepted"


@internal_query(returns=int)
async def wrong_return(ctx) -> str:
    return "not an int"


@query
async def bad_return(ctx) -> str:
    try:
        await ctx.run_query(wrong_return)
    except RuntimeError as exc:
        return str(exc)
    return "accepted"


@internal_mutation
async def add_then_fail(ctx, name: str) -> None:
    """Writes, runs a nested call that succeeds, then fails: all of it rolls back."""
    await ctx.db.insert("items", {"a": name, "b": "before"})
    await ctx.run_mutation(add, {"name": name})
    raise ConvexError("after the nested call")


@internal_query
async def slow(ctx, seconds: float) -> None:
    await asyncio.sleep(seconds)


@mutation
async def waits_nested(ctx, seconds: float) -> None:
    await ctx.db.insert("items", {"a": "waited", "b": "x"})
    await ctx.run_query(slow, {"seconds": seconds})


@mutation
async def spins_nested(ctx) -> str:
    await ctx.db.insert("items", {"a": "spun", "b": "x"})
    try:
        await ctx.run_query("runaway:spin")
    except RuntimeError as exc:
        return str(exc)
    return "not stopped"


@internal_mutation
async def set_value_then_fail(ctx, id: str, value: int, concurrently: bool = False) -> None:
    """Patches counter `id`, reads it back (the transaction keeps that row), then fails: its
    savepoint rolls back, and so must what the transaction kept of the row."""
    await ctx.db.patch(id, {"value": value})
    assert (await ctx.db.get(id))["value"] == value
    raise ConvexError("rolled back")


@mutation
async def renamed_after_a_failed_nested_write(ctx, name: str, concurrently: bool = False) -> dict[str, Any]:
    """Reads counter `name`, lets a nested mutation change its value and fail, then renames
    it with patch: the patch must merge into the counter as it is after the rollback. With
    `concurrently`, two other tasks read the counter over and over alongside the failing call."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()

    async def failing() -> None:
        try:
            await ctx.run_mutation(set_value_then_fail, {"id": doc["_id"], "value": doc["value"] + 100})
        except ConvexError:
            pass

    async def reading() -> None:  # reads of the row while the nested call writes and rolls back
        for _ in range(20):
            await ctx.db.get(doc["_id"])
            await asyncio.sleep(0)

    if concurrently:
        await asyncio.gather(reading(), failing(), reading())
    else:
        await failing()
    await ctx.db.patch(doc["_id"], {"name": f"{name}-renamed"})
    return await ctx.db.get(doc["_id"])
