"""Who is calling, and in which role (docs/example-app.md#roles).

A user is a reviewer when their token carries the claim `role: "reviewer"` (with Clerk: a claim
of the `convex` JWT template, `"role": "{{user.public_metadata.role}}"`) or when an administrator
granted it in the app with `ripple run users:addReviewer '{"tokenIdentifier": ...}'`; everyone
else signed in is a creator. Every public function of the app starts with `viewer`,
`require_user` or `require_reviewer`.
"""

from typing import Any, Literal

from server import ConvexError, internal_mutation, query

Role = Literal["creator", "reviewer"]


async def _grant(ctx, token_identifier: str) -> dict[str, Any] | None:
    """The `reviewers` row granting the role to this user, if any."""
    return await ctx.db.query("reviewers").with_index(
        "by_token", lambda q: q.eq("tokenIdentifier", token_identifier)).first()


async def viewer(ctx) -> dict[str, Any] | None:
    """The caller as `{tokenIdentifier, subject, name, email, role}`, or None when signed out."""
    identity = await ctx.auth.get_user_identity()
    if identity is None:
        return None
    token = identity.token_identifier
    granted = await _grant(ctx, token)
    role: Role = "reviewer" if identity.get("role") == "reviewer" or granted is not None else "creator"
    return {"tokenIdentifier": token, "subject": identity.subject, "name": identity.name,
            "email": identity.email, "role": role}


async def require_user(ctx) -> dict[str, Any]:
    user = await viewer(ctx)
    if user is None:
        raise ConvexError({"code": "UNAUTHENTICATED", "message": "sign in first"})
    return user


async def require_reviewer(ctx) -> dict[str, Any]:
    user = await require_user(ctx)
    if user["role"] != "reviewer":
        raise ConvexError({"code": "FORBIDDEN", "message": "only reviewers may do this"})
    return user


async def require_creator(ctx) -> dict[str, Any]:
    user = await require_user(ctx)
    if user["role"] != "creator":
        raise ConvexError({"code": "FORBIDDEN", "message": "reviewers do not upload videos; sign in as a creator"})
    return user


@query
async def me(ctx) -> dict[str, Any] | None:
    """The signed-in user with their role, or null when signed out."""
    return await viewer(ctx)


@internal_mutation
async def addReviewer(ctx, tokenIdentifier: str) -> bool:
    """Grant the reviewer role (`ripple run users:addReviewer '{"tokenIdentifier": "<issuer>|<subject>"}'`);
    False when the user already had it."""
    if await _grant(ctx, tokenIdentifier) is not None:
        return False
    await ctx.db.insert("reviewers", {"tokenIdentifier": tokenIdentifier})
    return True


@internal_mutation
async def removeReviewer(ctx, tokenIdentifier: str) -> bool:
    """Take back a role granted by `addReviewer` (a `role` claim in the token still counts)."""
    existing = await _grant(ctx, tokenIdentifier)
    if existing is None:
        return False
    await ctx.db.delete(existing["_id"])
    return True
