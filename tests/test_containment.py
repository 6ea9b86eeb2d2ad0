"""A function cannot stop the server or its live queries, whatever it raises; every background
loop is supervised: restarted if it dies, reported by health while it is down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from client_sdk import RippleClient
from server.api.app import build_app
from server.core import supervise
from server.core.runtime import Runtime
from server.core.supervise import Supervised

from conftest import ServerProcess, call, until

RAISED = ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError")


@pytest.mark.e2e
async def test_base_exceptions_of_functions_are_their_errors_over_http(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("serve")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        for what in RAISED:
            for kind in ("query", "mutation", "action"):
                r = await call(c, kind, f"escapes:in_{kind}", {"what": what})
                assert r.status_code == 200, (kind, what, r.text)
                body = r.json()
                assert body["status"] == "error" and body["errorMessage"].startswith("[Request ID: "), body
        r = await call(c, "query", "escapes:in_validator", {"x": 1})  # SystemExit in the app's own validator
        assert r.status_code == 400 and "a validator raised SystemExit" in r.json()["message"]
        assert (await call(c, "query", "counters:get", {"name": "escaped"})).json()["value"] == 0  # rolled back
        assert (await c.get("/_ripple/health")).json()["status"] == "ok"
    assert server.proc.poll() is None
    log = server.log()
    assert "escapes:in_query raised SystemExit" in log and "escapes:in_mutation raised CancelledError" in log


@pytest.mark.e2e
async def test_a_subscribed_query_raising_base_exceptions_does_not_freeze_live_queries(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("serve")
    async with RippleClient(server.url) as client:
        healthy = client.subscribe("counters:get", {"name": "alive"})
        assert await healthy.__anext__() == 0
        broken = [client.subscribe("escapes:in_query", {"what": what}) for what in RAISED]
        for sub in broken:
            with pytest.raises(Exception, match=r"^\[Request ID: \w+\] Server Error$"):
                await sub.__anext__()
        for n in range(1, 4):  # the loop that ran them still serves everyone
            assert await client.mutation("counters:inc", {"name": "alive"}) == n
            assert await healthy.__anext__() == n
        await healthy.aclose()
    async with httpx.AsyncClient(base_url=server.url) as c:
        assert (await c.get("/_ripple/health")).json()["status"] == "ok"
    assert server.proc.poll() is None and "restarting it" not in server.log()


async def test_a_supervised_loop_is_restarted_after_whatever_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    endings: list[Callable[[], Any]] = [
        lambda: SystemExit(1), KeyboardInterrupt, asyncio.CancelledError, lambda: RuntimeError("bug"), lambda: None,
    ]
    forever = asyncio.Event()

    async def body() -> None:
        ran.append("run")
        if len(ran) <= len(endings):
            ending = endings[len(ran) - 1]()
            if ending is not None:
                raise ending
            return  # returning while it should run counts as dying too
        await forever.wait()

    monkeypatch.setattr(supervise, "reconnect_delays", lambda *a: iter(lambda: 0.0, None))  # no backoff here
    loop = Supervised("test", body)
    loop.start()
    await until(lambda: len(ran) == len(endings) + 1 and loop.alive)
    assert loop.restarts == len(endings)
    await loop.stop()  # a real stop is not a failure: no restart
    assert not loop.alive and loop.task is not None and loop.task.done() and len(ran) == len(endings) + 1


async def test_health_reports_a_background_loop_that_is_down(runtime: Runtime) -> None:
    async def failing() -> None:
        raise RuntimeError("a bug in a loop")

    loop = runtime.supervise("doomed", failing)  # fails at once, then backs off (0.5 s and more)
    loop.start()
    app = build_app(runtime)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://ripple") as c:
            await until(lambda: loop.restarts >= 1)
            r = await c.get("/_ripple/health")
            assert r.status_code == 503 and r.json() == {"status": "background loops down", "loops": ["doomed"]}
    finally:
        await loop.stop()
    assert loop not in runtime.loops  # a stopped loop leaves the health list by itself
    async with httpx.AsyncClient(transport=transport, base_url="http://ripple") as c:
        assert (await c.get("/_ripple/health")).json()["status"] == "ok"
