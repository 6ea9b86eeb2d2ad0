from server import query


@query
async def default(ctx) -> str:
    return "default export"


@query
async def hello(ctx, who: str = "world") -> str:
    return f"hello {who}"
