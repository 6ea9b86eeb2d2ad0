"""Queries and mutations do no network I/O on the loops Ripple runs (server/loops.py): uvloop does
its I/O in C, out of sight of the audit hook, so the loop methods themselves refuse."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from server import loops
from server.config import Config
from server.core import sandbox
from server.core.runtime import Runtime
from server.errors import ForbiddenOperation, FunctionFailure
from server.runner import uvicorn_config

from conftest import ServerProcess

WAYS = ["open_connection", "getaddrinfo", "httpx", "subprocess"]


@pytest.fixture(params=sorted(loops.LOOP_FACTORIES))
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    loop = loops.LOOP_FACTORIES[request.param]()
    yield loop
    loop.close()


def run_as(kind: str | None, fn: Callable[[], Any]) -> Any:
    """Call `fn` in a context where a function of `kind` runs (None: no function)."""
    def run() -> Any:
        sandbox.running_kind.set(kind)
        return fn()

    return contextvars.copy_context().run(run)


def test_every_network_and_process_method_is_guarded() -> None:
    assert set(loops.GUARDED_METHODS) >= {
        "create_connection", "create_unix_connection", "create_datagram_endpoint", "sock_connect",
        "getaddrinfo", "getnameinfo", "create_server", "create_unix_server",
        "subprocess_exec", "subprocess_shell",
    }


@pytest.mark.parametrize("name", loops.GUARDED_METHODS)
@pytest.mark.parametrize("kind", ["query", "mutation"])
def test_guarded_methods_refuse_queries_and_mutations(loop: asyncio.AbstractEventLoop, kind: str, name: str) -> None:
    # Refused when called, before any argument is looked at or any coroutine is made.
    with pytest.raises(ForbiddenOperation, match=rf"a {kind} may not .+ \(loop\.{name}\); do network I/O in an action"):
        run_as(kind, getattr(loop, name))


def test_guarded_loops_work_outside_queries_and_mutations(loop: asyncio.AbstractEventLoop) -> None:
    async def resolve_and_spawn() -> int:
        await asyncio.get_running_loop().getaddrinfo("127.0.0.1", 80)
        proc = await asyncio.create_subprocess_exec("true")
        return await proc.wait()

    for kind in (None, "action"):
        assert run_as(kind, lambda: loop.run_until_complete(resolve_and_spawn())) == 0


def test_serve_runs_the_configured_guarded_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config.from_env().event_loop == "uvloop"
    assert uvicorn_config(None, Config()).get_loop_factory() is loops.new_uvloop
    monkeypatch.setenv("RIPPLE_EVENT_LOOP", "asyncio")
    config = Config.from_env()
    assert uvicorn_config(None, config).get_loop_factory() is loops.new_asyncio_loop
    monkeypatch.setenv("RIPPLE_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="RIPPLE_EVENT_LOOP must be one of uvloop, asyncio"):
        Config.from_env()


def function_error(server: ServerProcess, body: dict[str, Any]) -> str:
    """A failed call's error as the server knows it: the message in dev mode; in production the
    client sees a request id, and the log has the error under it."""
    assert body["status"] == "error", body
    message: str = body["errorMessage"]
    if not message.endswith("Server Error"):
        return message
    request_id = message.split("]")[0].split(": ")[1]
    return server.log().split(f"[request {request_id}]", 1)[1].split(" failed [request ", 1)[0]


@pytest.mark.e2e
@pytest.mark.parametrize(("mode", "event_loop", "loop_class"), [
    ("serve", "uvloop", "GuardedUvloop"),
    ("serve", "asyncio", "GuardedAsyncioLoop"),
    ("dev", "uvloop", "GuardedUvloop"),
])
async def test_queries_and_mutations_get_no_network_on_a_real_server(
    start_server: Callable[..., ServerProcess], mode: str, event_loop: str, loop_class: str,
) -> None:
    server = start_server(mode, extra_env={"RIPPLE_EVENT_LOOP": event_loop})
    assert f"event loop {loop_class})" in server.log()
    port = int(server.url.rsplit(":", 1)[1])  # a port that accepts connections: the server's own
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for kind in ("query", "mutation"):
            for how in WAYS:
                response = await client.post(f"/api/{kind}", json={
                    "path": f"network:reach_{kind}", "args": {"how": how, "port": port}})
                error = function_error(server, response.json())
                assert f"ForbiddenOperation: a {kind} may not " in error, (how, error)
                assert "ConnectionRefusedError" not in error
        results = []
        for how in WAYS:
            response = await client.post("/api/action", json={
                "path": "network:reach_action", "args": {"how": how, "port": port}})
            assert response.json()["status"] == "success", response.json()
            results.append(response.json()["value"])
    assert results[0] == "connected" and results[2] == "HTTP 200" and results[3] == "exit 0"


async def test_in_process_tests_run_on_the_guarded_loop() -> None:
    assert type(asyncio.get_running_loop()) is loops.GuardedAsyncioLoop


@pytest.mark.parametrize("how", WAYS)
async def test_an_in_process_runtime_refuses_too(runtime: Runtime, how: str) -> None:
    for kind in ("query", "mutation"):
        with pytest.raises(FunctionFailure, match=f"ForbiddenOperation: a {kind} may not "):
            await runtime.call(kind, f"network:reach_{kind}", {"how": how, "port": 9})


def test_an_unknown_event_loop_stops_the_start() -> None:
    env = {**os.environ, "RIPPLE_EVENT_LOOP": "trio"}
    done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--database-url", "postgresql://127.0.0.1:1/x"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "ripple serve: RIPPLE_EVENT_LOOP must be one of uvloop, asyncio, not 'trio'"
