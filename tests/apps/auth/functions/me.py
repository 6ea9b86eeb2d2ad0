"""Functions that show who called them."""

from typing import Any

from server import ConvexError, action, internal_mutation, mutation, query


@query
async def whoami(ctx) -> Any:
    return await ctx.auth.get_user_identity()


@query
async def fields(ctx) -> Any:
    """The identity through its Python attributes and claim look-ups."""
    identity = await ctx.auth.get_user_identity()
    if identity is None:
        return None
    return {"subject": identity.subject, "issuer": identity.issuer, "token_identifier": identity.token_identifier,
            "name": identity.name, "email": identity["email"] if "email" in identity else None,
            "email_verified": identity.email_verified, "picture_url": identity.picture_url,
            "updated_at": identity.updated_at, "address": identity.address, "role": identity.get("role")}


async def _owner(ctx) -> str:
    identity = await ctx.auth.get_user_identity()
    if identity is None:
        raise ConvexError({"code": "UNAUTHENTICATED"})
    return identity.token_identifier


@mutation
async def add_note(ctx, text: str) -> str:
    owner = await _owner(ctx)
    await ctx.db.insert("notes", {"owner": owner, "text": text})
    return owner


@query
async def my_notes(ctx) -> list[str]:
    identity = await ctx.auth.get_user_identity()
    if identity is None:
        return []
    notes = await ctx.db.query("notes").with_index("by_owner", lambda q: q.eq("owner", identity.token_identifier)).collect()
    return [n["text"] for n in notes]


@action
async def whoami_action(ctx) -> Any:
    """The action's identity and the identity of a query it runs."""
    identity = await ctx.auth.get_user_identity()
    return {"action": identity, "query": await ctx.run_query("me:whoami", {})}


@mutation
async def schedule_record(ctx, label: str) -> None:
    await ctx.scheduler.run_after(0, "me:record", {"label": label})


@internal_mutation
async def record(ctx, label: str) -> None:
    identity = await ctx.auth.get_user_identity()
    await ctx.db.insert("seen", {"label": label, "who": None if identity is None else identity.token_identifier})


@query
async def seen(ctx, label: str) -> Any:
    doc = await ctx.db.query("seen").with_index("by_label", lambda q: q.eq("label", label)).unique()
    return None if doc is None else {"who": doc["who"]}
