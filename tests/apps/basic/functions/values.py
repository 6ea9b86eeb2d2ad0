from typing import Any

from pydantic import BaseModel, Field

from server import Int64, mutation, query


@query
async def echo(ctx, value: Any) -> Any:
    return value


@query
async def add_one(ctx, x: Int64) -> Int64:
    return Int64(x + 1)


@query
async def describe(ctx, value: Any) -> str:
    return type(value).__name__


@mutation
async def store_message(ctx, author: str, body: str, big: Int64 | None = None, blob: bytes | None = None) -> dict:
    doc_id = await ctx.db.insert("messages", {"author": author, "body": body, "big": big, "blob": blob})
    return await ctx.db.get(doc_id)


class Point(BaseModel):
    x: float
    y: float


@query(args=Point, returns=float)
async def norm(ctx, args: Point) -> float:
    return (args.x**2 + args.y**2) ** 0.5


@query(returns=int)
async def bad_return(ctx) -> int:
    return "not an int"  # type: ignore[return-value]


class Labelled(BaseModel):
    label_text: str = Field(alias="labelText")
    at: Point


@query(returns=Labelled)
async def labelled(ctx, label: str, x: float, y: float) -> Labelled:
    return Labelled(labelText=label, at=Point(x=x, y=y))


@query(returns=list[Point])
async def points(ctx, n: int) -> list[Point]:
    return [Point(x=i, y=-i) for i in range(n)]


@query(returns=dict[str, Point])
async def named_points(ctx) -> dict:
    return {"origin": {"x": 0, "y": 0}}


@query
async def normalize(ctx, table: str, id: Any) -> str | None:
    return ctx.db.normalize_id(table, id)


@query
async def sneaky_process(ctx, how: str) -> str:
    # Each way of starting a process must be refused before it happens (blocking calls on purpose).
    import os

    if how == "posix_spawn":
        os.waitpid(os.posix_spawn("/bin/true", ["true"], dict(os.environ)), 0)  # noqa: ASYNC221, ASYNC222
    elif how == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # only reached if the sandbox failed to refuse the fork
        os.waitpid(pid, 0)  # noqa: ASYNC222
    elif how == "forkpty":
        pid, _fd = os.forkpty()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)  # noqa: ASYNC222
    elif how == "to_thread":
        import asyncio
        import subprocess

        await asyncio.to_thread(subprocess.run, ["true"])
    return "started a process"


@query
async def big_text(ctx, n: int, fill: str = "x") -> str:
    """A result of about `n` characters (large transitions go out as several frames)."""
    return fill * n
