"""Network I/O and processes through the event loop (not the socket module): refused in queries
and mutations on every loop Ripple runs (server/loops.py), allowed in actions."""

import asyncio

from server import action, mutation, query


async def reach(how: str, port: int) -> str:
    """Reach 127.0.0.1:`port` (or start a process) one way; what it got if it was not refused."""
    if how == "open_connection":
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        return "connected"
    if how == "getaddrinfo":
        infos = await asyncio.get_running_loop().getaddrinfo("localhost", port)
        return f"resolved {len(infos)} addresses"
    if how == "httpx":
        import httpx  # here, not at the top: most servers of the suite serve this app, few use httpx

        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/_ripple/health")
        return f"HTTP {response.status_code}"
    if how == "subprocess":
        proc = await asyncio.create_subprocess_exec("true")
        return f"exit {await proc.wait()}"
    raise ValueError(how)


@query
async def reach_query(ctx, how: str, port: int) -> str:
    return await reach(how, port)


@mutation
async def reach_mutation(ctx, how: str, port: int) -> str:
    return await reach(how, port)


@action
async def reach_action(ctx, how: str, port: int) -> str:
    return await reach(how, port)
