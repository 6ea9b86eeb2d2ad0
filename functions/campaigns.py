"""Campaigns that creators upload videos for: any signed-in user reads them, reviewers create
them."""

from typing import Any, Literal

from functions.users import require_reviewer, require_user
from server import ConvexError, mutation, query


@query
async def list(ctx, status: Literal["active", "closed"] | None = None) -> list[dict[str, Any]]:
    """All campaigns, newest first; only those with `status` when given."""
    await require_user(ctx)
    q = ctx.db.query("campaigns")
    if status is not None:
        q = q.with_index("by_status", lambda r: r.eq("status", status))
    return await q.order("desc").collect()


@query
async def get(ctx, id: str) -> dict[str, Any] | None:
    await require_user(ctx)
    if ctx.db.normalize_id("campaigns", id) is None:
        raise ConvexError({"code": "INVALID_ID", "message": f"{id!r} is not a campaign id"})
    return await ctx.db.get(id)


@mutation
async def create(ctx, name: str, brand: str, description: str = "") -> str:
    """Create a campaign (reviewers only); names are unique."""
    reviewer = await require_reviewer(ctx)
    taken = await ctx.db.query("campaigns").with_index("by_name", lambda r: r.eq("name", name)).first()
    if taken is not None:
        raise ConvexError({"code": "NAME_TAKEN", "message": f"a campaign named {name!r} exists"})
    return await ctx.db.insert("campaigns", {"name": name, "brand": brand, "description": description,
                                             "createdBy": reviewer["tokenIdentifier"]})
