"""What the dashboard test runs: a mutation that logs, a query, one that fails."""

from server import ConvexError, mutation, query


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
