"""The subscribed query and the observed insert of bench/loadgen.py's ObserveInsert,
ManyIntersections and HoldSubscriptions scenarios, shaped like Convex's scenario-runner
functions `query_index:queryMessagesWithArgs` and `insert:insertMessagesWithArgs`."""

import time
from typing import Any

from server import mutation, query


@query
async def page(ctx, channel: str, rand: int, limit: int) -> list[dict[str, Any]]:
    """The first `limit` messages of `channel` whose `rand` is at least `rand` (one index range)."""
    return await ctx.db.query("messages").with_index(
        "by_channel_rand", lambda q: q.eq("channel", channel).gte("rand", rand)).take(limit)


@mutation
async def insert(ctx, channel: str, rand: int, n: int = 1) -> None:
    """Insert `n` messages into `channel`, all with the same `rand`."""
    now = time.time()
    for i in range(n):
        await ctx.db.insert("messages", {"channel": channel, "rand": rand, "timestamp": now, "body": f"message {i}"})
