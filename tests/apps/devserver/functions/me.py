"""Who is calling, and the server's built-in URLs, from every kind of function."""

from typing import Any

from server import action, query


@query
async def whoami(ctx: Any) -> dict[str, Any] | None:
    identity = await ctx.auth.get_user_identity()
    return None if identity is None else dict(identity)


@query
async def urls(ctx: Any) -> dict[str, Any]:
    return {"site": ctx.env["CONVEX_SITE_URL"], "cloud": ctx.env.get("CONVEX_CLOUD_URL"),
            "listed": sorted(n for n in ctx.env if n.startswith("CONVEX_"))}


@action
async def urls_in_action(ctx: Any) -> dict[str, Any]:
    return {"site": ctx.env["CONVEX_SITE_URL"], "cloud": ctx.env["CONVEX_CLOUD_URL"]}


@query
async def variable(ctx: Any, name: str) -> str | None:
    return ctx.env.get(name)
