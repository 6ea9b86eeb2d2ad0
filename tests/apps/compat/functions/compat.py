"""Functions the compatibility suites call, grouped by the item of issue 10 they show."""

from typing import Any

from server import UNSET, ConvexError, Id, Int64, mutation, query

# -- 1. numbers on the wire -------------------------------------------------------------------


@query
async def count(ctx, xs: list[Any]) -> int:
    """A Python int result: a Convex float64, sent as 3.0."""
    return len(xs)


@query
async def numbers(ctx) -> dict[str, Any]:
    return {"int": 3, "float": 2.5, "negative": -7, "zero": 0, "safe": 2**53, "int64": Int64(2**60)}


@query
async def echo(ctx, value: Any) -> Any:
    return value


@query
async def kinds(ctx, value: Any) -> Any:
    """What a function receives, by Python type name (1 from JavaScript, 1.0 from Python)."""
    if isinstance(value, dict):
        return {k: type(v).__name__ for k, v in value.items()}
    return type(value).__name__


# -- 2. ConvexError from a mutation -------------------------------------------------------------


@mutation
async def refuse(ctx, code: str) -> None:
    raise ConvexError({"code": code, "retry": 2})


# -- 5. field order -------------------------------------------------------------------------------


@mutation
async def insert_unordered(ctx) -> dict[str, Any]:
    doc_id = await ctx.db.insert("loose", {"zeta": 1, "Alpha": 2, "mid": {"bb": 1, "a": 2, "ccc": 3}})
    return await ctx.db.get(doc_id)


@query
async def field_names(ctx, value: dict[str, Any]) -> list[str]:
    """The order a function sees an argument's fields in."""
    return list(value)


@query
async def built(ctx) -> dict[str, Any]:
    return {"zeta": 1, "alpha": {"y": 1, "x": 2}, "Beta": 3}


# -- 9. scheduler units --------------------------------------------------------------------------


@mutation
async def schedule_at(ctx, when: float) -> str:
    return await ctx.scheduler.run_at(when, "compat:count", {"xs": []})


# -- 4. optional means absent ----------------------------------------------------------------------


@mutation
async def add_note(ctx, title: str, note: str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"title": title, "body": "b"}
    if note is not None:
        fields["note"] = note
    return await ctx.db.get(await ctx.db.insert("notes", fields))


@mutation
async def add_null_note(ctx, title: str) -> dict[str, Any]:
    return await ctx.db.get(await ctx.db.insert("notes", {"title": title, "body": "b", "note": None}))


@mutation
async def clear_note(ctx, id: str) -> dict[str, Any]:
    await ctx.db.patch(id, {"note": UNSET})
    return await ctx.db.get(id)


@query
async def notes_by_note(ctx, prefix: str) -> dict[str, list[str]]:
    """Titles starting with `prefix`, by index range: no note (absent), a null note, any note."""

    async def titles(rng: Any) -> list[str]:
        docs = await ctx.db.query("notes").with_index("by_note", rng).collect()
        return [d["title"] for d in docs if d["title"].startswith(prefix)]

    return {
        "absent": await titles(lambda r: r.eq("note", UNSET)),
        "null": await titles(lambda r: r.eq("note", None)),
        "all": await titles(lambda r: r),
    }


# -- 7. nested calls in a mutation -----------------------------------------------------------------


@mutation
async def write_then_fail(ctx, name: str) -> None:
    await ctx.db.insert("counters", {"name": name, "n": 1})
    raise ConvexError({"nested": name})


@query
async def names(ctx, prefix: str) -> list[str]:
    return sorted(d["name"] for d in await ctx.db.query("counters").collect() if d["name"].startswith(prefix))


@mutation
async def outer(ctx, prefix: str) -> dict[str, Any]:
    await ctx.db.insert("counters", {"name": prefix + "-outer", "n": 1})
    try:
        await ctx.run_mutation("compat:write_then_fail", {"name": prefix + "-inner"})
    except ConvexError as error:
        caught = error.data
    seen = await ctx.run_query("compat:names", {"prefix": prefix})  # sees the uncommitted writes
    return {"caught": caught, "seen": seen}


# -- 8. limits -----------------------------------------------------------------------------------------


@mutation
async def store_text(ctx, n: int) -> str:
    return await ctx.db.insert("loose", {"text": "x" * n})


# -- 10. log levels ------------------------------------------------------------------------------------


@query
async def chatty(ctx) -> None:
    import logging

    print("printed", {"k": 1}, 2.5)
    log = logging.getLogger("compat.chatty")
    log.info("info %s", "line")
    log.warning("careful")
    log.error("broken")


# -- 11. split pages -------------------------------------------------------------------------------------


@mutation
async def fill(ctx, prefix: str, n: int) -> None:
    for i in range(n):
        await ctx.db.insert("counters", {"name": f"{prefix}-{i:03}", "n": i})


@query
async def page(ctx, paginationOpts: dict[str, Any]) -> dict[str, Any]:
    return await ctx.db.query("counters").paginate(paginationOpts)


# -- 3. strict validation --------------------------------------------------------------------------------


@query
async def typed(ctx, n: int, f: float, flag: bool, tags: list[int]) -> dict[str, Any]:
    """What each argument arrived as (a float field given 2 holds 2.0; an int field given 2.0, 2)."""
    return {"n": type(n).__name__, "f": type(f).__name__, "flag": flag, "tags": tags}


# -- 6. typed ids ------------------------------------------------------------------------------------------


@query
async def note_title(ctx, id: Id["notes"]) -> str:  # noqa: F821 (a table name, not a type)
    doc = await ctx.db.get("notes", id)
    return doc["title"] if doc else "(deleted)"


@mutation
async def loose_id(ctx) -> Id["loose"]:  # noqa: F821
    return await ctx.db.insert("loose", {"kind": "not a note"})


# -- 12. responses before their writes ------------------------------------------------------------------


@query
async def value(ctx, name: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda r: r.eq("name", name)).unique()
    return doc["n"] if doc else 0


@mutation
async def bump(ctx, name: str) -> int:
    doc = await ctx.db.query("counters").with_index("by_name", lambda r: r.eq("name", name)).unique()
    if doc is None:
        await ctx.db.insert("counters", {"name": name, "n": 1})
        return 1
    await ctx.db.patch(doc["_id"], {"n": doc["n"] + 1})
    return doc["n"] + 1
