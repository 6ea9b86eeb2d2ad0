"""What the dashboard test runs: a mutation that logs, queries, one that fails, and what a cron runs."""

from server import ConvexError, internal_mutation, mutation, query


@query
async def recent(ctx, author: str | None = None) -> list[dict]:
    docs = ctx.db.query("messages").order("desc")
    return [doc async for doc in docs if author is None or doc["author"] == author]


@mutation
async def send(ctx, author: str, body: str) -> str:
    print(f"sending {body!r} by {author}")
    return await ctx.db.insert("messages", {"author": author, "body": body})


@query
async def whoami(ctx) -> str | None:
    identity = await ctx.auth.get_user_identity()
    return None if identity is None else identity.subject


@mutation
async def refuse(ctx, reason: str) -> None:
    raise ConvexError({"reason": reason})


@internal_mutation
async def prune(ctx, keep: int = 100) -> int:
    """Deletes all but the newest `keep` messages (what the hourly cron runs)."""
    old = [doc async for doc in ctx.db.query("messages").order("desc")][keep:]
    for doc in old:
        await ctx.db.delete(doc["_id"])
    return len(old)


@mutation
async def remind(ctx, body: str, seconds: float = 3600) -> str:
    """Schedules a message `seconds` from now (a pending job for the Schedules section)."""
    return await ctx.scheduler.run_after(seconds, "messages:send", {"author": "reminder", "body": body})
