"""Functions reading environment variables, for tests/test_env.py."""

import logging
from typing import Any

from server import action, mutation, query


@query
async def read(ctx: Any, name: str) -> str | None:
    return ctx.env.get(name)


@query
async def required(ctx: Any, name: str) -> str:
    return ctx.env[name]


@query
async def present(ctx: Any, name: str) -> bool:
    return name in ctx.env


@query
async def names(ctx: Any) -> list[str]:
    return list(ctx.env)


@mutation
async def record(ctx: Any, name: str) -> str | None:
    """Reads a variable in a mutation and stores what it saw."""
    value = ctx.env.get(name)
    await ctx.db.insert("seen", {"name": name, "value": value})
    return value


@action
async def read_in_action(ctx: Any, name: str) -> dict[str, Any]:
    return {"value": ctx.env.get(name), "viaQuery": await ctx.run_query("envs:read", {"name": name})}


@query
async def fails_after_reading(ctx: Any, name: str) -> None:
    ctx.env.get(name)
    raise RuntimeError(f"something went wrong after reading {name}")


@query
async def system_table(ctx: Any) -> Any:
    return await ctx.db.system.query("_environment_variables").collect()


@action
async def leaks(ctx: Any, name: str) -> None:
    """Quotes a value the ways function code does by accident: a print, a log record, and an
    HTTP library's error naming a URL with the token in it."""
    print("calling with", ctx.env[name])
    logging.getLogger("app.hooks").warning("token is %s", ctx.env[name])
    raise RuntimeError(f"Client error '404 Not Found' for url 'https://hooks.example.test/{ctx.env[name]}'")
