"""The dashboard's system functions: `_system/dashboard:*`, registered in every app and callable
only with the admin key (they are internal functions), like the system UDFs Convex's dashboard
calls. Because they are ordinary queries and mutations they are live over the websocket and
validated like the app's own: an insert or edit from the dashboard goes through the schema, the
change log and the subscriptions exactly as `ctx.db.insert` in a mutation does.

The page at /_ripple/ (server/dashboard/, docs/dashboard.md) calls them:

    tables      {}                                   -> [{name, system, indexes, searchIndexes, schema}]
    page        {table, paginationOpts, order, filters} -> a page (filters: [{field, op, value}])
    document    {id}                                 -> the document or null
    insert      {table, document}                    -> the new id
    patch       {id, fields} / replace {id, document} / delete {ids} -> null / null / count
    functions   {}                                   -> [{path, kind, visibility, args, returns}]
    scheduled   {paginationOpts}                     -> a page of _scheduled_functions, newest first
    cancel      {id}
    crons       {}                                   -> [{name, schedule, function, args, nextRun, lastRun}]
    files       {paginationOpts}                     -> a page of _storage documents with a `url`
    generateUploadUrl {} / deleteFile {storageId}

`register(app)` adds them to an app's registry when the Runtime loads it; `tables` and
`functions` describe that version of the app, so they are made per load.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from server.core.keys import encode_values, field_value
from server.core.loader import App
from server.core.registry import (
    SYSTEM_PREFIX,
    FunctionDef,
    Registry,
)
from server.core.system_tables import SYSTEM_TABLES
from server.errors import ConvexError, RippleUsageError

MODULE = f"{SYSTEM_PREFIX}dashboard"
Op = Literal["eq", "neq", "lt", "lte", "gt", "gte"]
MAX_FILTERS = 8
MAX_DELETE = 1000


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    op: Op
    value: Any = None


# Comparisons in Convex's order of values (keys.py: the index encoding sorts as Convex does,
# so a number is below a string and `lt` means what an index range would).
_COMPARE: dict[str, Callable[[bytes, bytes], bool]] = {
    "eq": bytes.__eq__, "neq": bytes.__ne__, "lt": bytes.__lt__, "lte": bytes.__le__,
    "gt": bytes.__gt__, "gte": bytes.__ge__,
}


def _predicate(filters: list[Filter]) -> Callable[[dict[str, Any]], bool]:
    if len(filters) > MAX_FILTERS:
        raise RippleUsageError(f"at most {MAX_FILTERS} filters, not {len(filters)}")
    tests = [(f.field, _COMPARE[f.op], encode_values([f.value])) for f in filters]
    for name, _, _ in tests:
        if not name or any(not part for part in name.split(".")):
            raise RippleUsageError(f"filter field {name!r} is not a field name (e.g. 'status' or 'author.name')")

    def matches(doc: dict[str, Any]) -> bool:
        return all(compare(encode_values([field_value(doc, name)]), wanted) for name, compare, wanted in tests)

    return matches


def _query(ctx: Any, table: str) -> Any:
    """A user table through ctx.db, a system table through ctx.db.system (which refuses the
    unreadable `_environment_variables`: its values are shown by the env endpoints only)."""
    return ctx.db.system.query(table) if table.startswith("_") else ctx.db.query(table)


async def page(ctx: Any, table: str, paginationOpts: dict[str, Any], order: Literal["asc", "desc"] = "desc",
               filters: list[Filter] | None = None) -> dict[str, Any]:
    query = _query(ctx, table).order(order)
    if filters:
        query = query.filter(_predicate(filters))
    return dict(await query.paginate(paginationOpts))


async def document(ctx: Any, id: str) -> dict[str, Any] | None:
    system = ctx.db.system
    try:
        return await ctx.db.get(id)  # type: ignore[no-any-return]
    except RippleUsageError:  # a system table's document: read it as such
        return await system.get(id)  # type: ignore[no-any-return]


async def insert(ctx: Any, table: str, document: dict[str, Any]) -> str:
    return await ctx.db.insert(table, document)  # type: ignore[no-any-return]


async def patch(ctx: Any, id: str, fields: dict[str, Any]) -> None:
    await ctx.db.patch(id, fields)


async def replace(ctx: Any, id: str, document: dict[str, Any]) -> None:
    await ctx.db.replace(id, {k: v for k, v in document.items() if k not in ("_id", "_creationTime")})


async def delete(ctx: Any, ids: list[str]) -> int:
    if len(ids) > MAX_DELETE:
        raise RippleUsageError(f"delete at most {MAX_DELETE} documents at once, not {len(ids)}")
    deleted = 0
    for doc_id in dict.fromkeys(ids):
        if await ctx.db.get(doc_id) is not None:
            await ctx.db.delete(doc_id)
            deleted += 1
    return deleted


async def scheduled(ctx: Any, paginationOpts: dict[str, Any]) -> dict[str, Any]:
    return dict(await ctx.db.system.query("_scheduled_functions").order("desc").paginate(paginationOpts))


async def cancel(ctx: Any, id: str) -> None:
    await ctx.scheduler.cancel(id)


async def crons(ctx: Any) -> list[dict[str, Any]]:
    out = []
    async for cron in ctx.db.system.query("_cron_jobs").with_index("by_name"):
        last = None
        if cron.get("lastRun") is not None:
            job = await ctx.db.system.get(cron["lastJobId"]) if cron.get("lastJobId") else None
            last = {"ts": cron["lastRun"], "state": job["state"] if job is not None else None,
                    "jobId": cron.get("lastJobId")}
        out.append({"name": cron["name"], "schedule": cron["schedule"], "function": cron["function"],
                    "args": cron["args"][0], "nextRun": cron["nextRun"], "lastRun": last,
                    "skippedRuns": cron.get("skippedRuns", 0)})
    return out


async def files(ctx: Any, paginationOpts: dict[str, Any]) -> dict[str, Any]:
    result = dict(await ctx.db.system.query("_storage").order("desc").paginate(paginationOpts))
    result["page"] = [{**doc, "url": await ctx.storage.get_url(doc["_id"])} for doc in result["page"]]
    return result


async def generateUploadUrl(ctx: Any) -> str:
    return await ctx.storage.generate_upload_url()  # type: ignore[no-any-return]


async def deleteFile(ctx: Any, storageId: str) -> None:
    await ctx.storage.delete(storageId)


def _shown(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The admin sees what was wrong with what they typed even outside dev mode: Ripple's own
    messages about a caller's mistake (a document the schema refuses, an unknown table, a bad
    filter) become ConvexErrors, which are not redacted. Anything else stays an internal error."""

    @functools.wraps(handler)
    async def run(ctx: Any, **kwargs: Any) -> Any:
        try:
            return await handler(ctx, **kwargs)
        except RippleUsageError as exc:
            raise ConvexError(str(exc)) from exc

    return run


QUERIES = (page, document, scheduled, crons, files)
MUTATIONS = (insert, patch, replace, delete, cancel, generateUploadUrl, deleteFile)
FIXED: dict[str, FunctionDef] = {
    **{fn.__name__: FunctionDef(_shown(fn), "query", internal=True) for fn in QUERIES},
    **{fn.__name__: FunctionDef(_shown(fn), "mutation", internal=True) for fn in MUTATIONS},
}


def _json_schema(make: Callable[[], Mapping[str, Any]]) -> Any:
    """A JSON schema for the dashboard's forms, or None where pydantic cannot draw one (a custom
    type): the form then starts from `{}`. Made a Convex value (`_as_value`)."""
    try:
        schema = make()
        return _as_value(schema, schema.get("$defs", {}), 0)
    except Exception:
        return None


MAX_SCHEMA_DEPTH = 8  # of nested `$ref`s followed: a recursive model's schema ends in `{}` (any value)


def _as_value(schema: Any, defs: Mapping[str, Any], depth: int) -> Any:
    """`schema` as a Convex value: field names may not start with `$`, so each `$ref` is replaced
    by the definition it names (and `$defs`, `$schema` dropped); integers beyond a float64's exact
    range (an Int64's bounds) become floats."""
    if isinstance(schema, Mapping):
        if isinstance(ref := schema.get("$ref"), str):
            target = defs.get(ref.rpartition("/")[2])
            if target is None or depth >= MAX_SCHEMA_DEPTH:
                return {}
            return _as_value({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs, depth + 1)
        return {key: _as_value(value, defs, depth) for key, value in schema.items() if not key.startswith("$")}
    if isinstance(schema, list):
        return [_as_value(item, defs, depth) for item in schema]
    if isinstance(schema, int) and not isinstance(schema, bool) and abs(schema) > 2**53:
        return float(schema)
    return schema


def describe_functions(app: App) -> list[dict[str, Any]]:
    """The app's functions (not these system ones) and HTTP routes, for the runner."""
    out: list[dict[str, Any]] = []
    for path, fn in sorted(app.registry.functions.items()):
        if path.startswith(SYSTEM_PREFIX) or path != fn.path:
            continue
        returns = fn.returns
        out.append({
            "path": path, "kind": fn.kind, "visibility": "internal" if fn.internal else "public",
            "args": _json_schema(fn.args_model.model_json_schema),
            "returns": None if returns is None else _json_schema(returns.json_schema),
        })
    if app.http is not None:
        routes = [*(r for methods in app.http.exact.values() for r in methods.values()),
                  *(r for prefixes in app.http.prefixes.values() for r in prefixes.values())]
        out += [{"path": route.label, "kind": "httpAction", "visibility": "public", "args": None, "returns": None}
                for route in sorted(routes, key=lambda r: r.label)]
    return out


def describe_tables(app: App) -> list[dict[str, Any]]:
    """User tables then the readable system ones; `schema`: the JSON schema of a user table's
    documents (None: any object), which the dashboard's "add document" starts from."""
    tables = [{"name": name, "system": False, "indexes": ["by_id", "by_creation_time", *table.indexes],
               "searchIndexes": list(table.search_indexes),
               "schema": None if (model := table.model) is None else _json_schema(model.model_json_schema)}
              for name, table in app.schema.tables.items()]
    return tables + [{"name": t.name, "system": True, "indexes": ["by_id", "by_creation_time", *t.table.indexes],
                      "searchIndexes": [], "schema": None} for t in SYSTEM_TABLES if t.readable]


def register(app: App) -> None:
    """Add the dashboard's functions to `app`'s registry."""
    registry: Registry = app.registry
    for name, fn in FIXED.items():
        registry.add(f"{MODULE}:{name}", fn)
    described = functools.cache(lambda: (describe_functions(app), describe_tables(app)))  # at first use, not per load

    async def functions(ctx: Any) -> list[dict[str, Any]]:
        return described()[0]

    async def tables(ctx: Any) -> list[dict[str, Any]]:
        return described()[1]

    registry.add(f"{MODULE}:functions", FunctionDef(functions, "query", internal=True))
    registry.add(f"{MODULE}:tables", FunctionDef(tables, "query", internal=True))
