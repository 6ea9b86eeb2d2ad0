import asyncio
import socket
import time

from server import ConvexError, action, internal_mutation, internal_query, mutation, query


@query
async def get(ctx, name: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    return doc["value"] if doc else 0


@query
async def get_noting(ctx, name: str, seen: list[str]) -> list[str]:
    """The counter's value appended to `seen` -- the argument itself, changed in place: a live
    query's re-run must get the arguments as the client sent them, not the last run's list."""
    seen.append(str(await get.handler(ctx, name=name)))
    return seen


@mutation
async def inc(ctx, name: str, by: int = 1) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "value": by})
        return by
    await ctx.db.patch(doc["_id"], {"value": doc["value"] + by})
    return doc["value"] + by


@mutation
async def fail(ctx, code: str) -> None:
    raise ConvexError({"code": code})


@mutation
async def inc_then_fail(ctx, name: str) -> None:
    await inc.handler(ctx, name=name)
    raise ConvexError("rolled back")


@mutation
async def boom(ctx) -> None:
    raise ValueError("secret internal detail 42")


@query
async def chatty(ctx, n: int = 2) -> str:
    for i in range(n):
        print("line", i)
    print("no newline at end", end="")
    return "done"


@query
async def sneaky_network(ctx) -> str:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
    return "connected?"


@mutation
async def sneaky_network_mutation(ctx) -> str:
    await asyncio.open_connection("127.0.0.1", 9)
    return "connected?"


@query
async def sneaky_write(ctx) -> None:
    await ctx.db.insert("counters", {"name": "x", "value": 1})


@action
async def twice(ctx, name: str) -> int:
    await ctx.run_mutation("counters:inc", {"name": name})
    return await ctx.run_mutation(inc, {"name": name})


@action
async def fetch_port(ctx, port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return line.decode().strip()


@internal_mutation
async def reset(ctx, name: str) -> None:
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    if doc is not None:
        await ctx.db.delete(doc["_id"])


@action
async def call_internal(ctx, name: str) -> int:
    await ctx.run_mutation("counters:reset", {"name": name})
    return await ctx.run_query(get, {"name": name})


@action
async def action_fail(ctx) -> None:
    await ctx.run_mutation(fail, {"code": "FROM_ACTION"})


@query
async def slow(ctx, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


@query
async def big(ctx, name: str, size: int = 200_000) -> str:
    """A large result that changes with the counter (for slow-client tests)."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    return "x" * size + str(doc["value"] if doc else 0)


@query
async def slow_get(ctx, name: str, seconds: float, tag: int = 0) -> int:
    """A counter's value, taking `seconds` after reading it (live-query fairness tests; `tag`
    makes otherwise equal subscriptions distinct executions)."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    await asyncio.sleep(seconds)
    return doc["value"] if doc else 0


@query
async def busy_get(ctx, name: str, seconds: float, tag: int = 0) -> int:
    """A counter's value, then `seconds` of work holding the event loop (no await): what a
    query heavy on CPU costs everyone else in the process (live-query fairness tests)."""
    doc = await ctx.db.query("counters").with_index("by_name", lambda q: q.eq("name", name)).unique()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return doc["value"] if doc else 0


@internal_query
async def secret(ctx, name: str) -> int:
    """A counter, for admin subscriptions only."""
    return await get.handler(ctx, name=name)
