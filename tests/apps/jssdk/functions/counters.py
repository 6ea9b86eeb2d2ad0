"""Counters: how many times a mutation ran; a query that fails on odd values (errors reach
onError and the subscription recovers); an internal query for admin-only access; a slow action
(in flight when the connection drops)."""

import asyncio

from server import ConvexError, action, internal_query, mutation, query


async def _value(ctx, name: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda r: r.eq("name", name)).unique()
    return doc["value"] if doc else 0


@query
async def get(ctx, name: str) -> int:
    return await _value(ctx, name)


@mutation
async def inc(ctx, name: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda r: r.eq("name", name)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "value": 1})
        return 1
    await ctx.db.patch(doc["_id"], {"value": doc["value"] + 1})
    return doc["value"] + 1


@query
async def even(ctx, name: str) -> int:
    value = await _value(ctx, name)
    if value % 2:
        raise ConvexError({"odd": value})
    return value


@mutation
async def refuse(ctx, code: str) -> None:
    raise ConvexError({"code": code})


@internal_query
async def secret(ctx, name: str) -> int:
    return await _value(ctx, name)


@action
async def slow(ctx, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


@action
async def inc_twice(ctx, name: str) -> int:
    await ctx.run_mutation("counters:inc", {"name": name})
    return await ctx.run_mutation("counters:inc", {"name": name})


@action
async def refuse_in_action(ctx, code: str) -> None:
    await ctx.run_mutation("counters:refuse", {"code": code})
