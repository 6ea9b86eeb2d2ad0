"""Messages in a room, ordered by `n`: a plain list, a page at a time, and sending."""

from typing import Any

from server import mutation, query


@query
async def list(ctx, room: str) -> list[dict[str, Any]]:
    return await ctx.db.query("messages").with_index("by_room_n", lambda r: r.eq("room", room)).collect()


@query
async def page(ctx, room: str, paginationOpts: dict[str, Any]) -> dict[str, Any]:
    q = ctx.db.query("messages").with_index("by_room_n", lambda r: r.eq("room", room))
    return await q.paginate(paginationOpts)


@mutation
async def send(ctx, room: str, n: int, body: str) -> str:
    return await ctx.db.insert("messages", {"room": room, "n": n, "body": body})


@query
async def capped(ctx, room: str, rows: int, paginationOpts: dict[str, Any]) -> dict[str, Any]:
    """Pages that stop after `rows` documents read: SplitRequired, which the client splits."""
    q = ctx.db.query("messages").with_index("by_room_n", lambda r: r.eq("room", room))
    return await q.paginate({**paginationOpts, "maximumRowsRead": rows})


@query
async def flippable(ctx, room: str, paginationOpts: dict[str, Any]) -> dict[str, Any]:
    """Pages in ascending order of `n`, descending while the counter `<room>-order` is odd: a
    flip makes every cursor of the other order invalid (a cursor is bound to its query)."""
    flip = await ctx.db.query("counters").with_index("by_name", lambda r: r.eq("name", f"{room}-order")).unique()
    order = "desc" if flip and flip["value"] % 2 else "asc"
    q = ctx.db.query("messages").with_index("by_room_n", lambda r: r.eq("room", room)).order(order)
    return await q.paginate(paginationOpts)
