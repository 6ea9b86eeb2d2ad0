"""print() and the standard logging module inside functions become Convex log lines with levels
(`[LOG]`, `[DEBUG]`, `[INFO]`, `[WARN]`, `[ERROR]`), formatted with str, reaching the official
clients over HTTP and the websocket (dev mode); records outside functions are left alone."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from server.core import logs
from server.core.runtime import Runtime

from conftest import ServerProcess, call

StartServer = Callable[..., ServerProcess]


def expected(tag: str) -> list[str]:
    return [
        f"[LOG] print {tag} {{'k': 1}} [1.5, None]",
        f"[DEBUG] debug {tag}",
        f"[INFO] info {tag}",
        f"[WARN] warning {tag}",
        f"[ERROR] error {tag}",
        f"[ERROR] critical {tag}",
    ]


def check(lines: list[str], tag: str) -> None:
    assert lines[:6] == expected(tag), lines
    assert len(lines) == 7, lines
    assert lines[6].startswith(f"[ERROR] exception {tag}\nTraceback (most recent call last):\n"), lines[6]
    assert "loglevels.py" in lines[6] and lines[6].endswith("KeyError: 'missing'")


@pytest.mark.e2e
async def test_log_lines_reach_http_clients_and_the_server_log_once(start_server: StartServer) -> None:
    server = start_server("dev")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        for kind, path in (("query", "levels"), ("mutation", "levels_mutation"), ("action", "levels_action")):
            body = (await call(client, kind, f"loglevels:{path}", {"tag": kind})).json()
            assert body["status"] == "success", body
            check(body["logLines"], kind)
    text = server.log()
    assert text.count("[Q loglevels:levels] [WARN] warning query") == 1
    assert text.count("[A loglevels:levels_action] [DEBUG] debug action") == 1
    assert "warning query" not in text.replace("[Q loglevels:levels] [WARN] warning query", "")
    assert text.count("ripple's own query") == 1  # Ripple's loggers go to the server log as usual


@pytest.mark.e2e
async def test_log_lines_reach_websocket_clients(start_server: StartServer) -> None:
    server = start_server("dev")
    url = server.url.replace("http://", "ws://") + "/api/sync"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0,
                                  "lastCloseReason": "InitialConnect"}))
        await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "loglevels:levels", "args": [{"tag": "ws"}]}]}))
        await ws.send(json.dumps({"type": "Mutation", "requestId": 0, "udfPath": "loglevels:levels_mutation",
                                  "args": [{"tag": "wsm"}]}))
        await ws.send(json.dumps({"type": "Action", "requestId": 1, "udfPath": "loglevels:levels_action",
                                  "args": [{"tag": "wsa"}]}))
        seen: dict[str, Any] = {}
        async with asyncio.timeout(60):
            while len(seen) < 3:
                message = json.loads(await ws.recv())
                if message["type"] == "Transition":
                    for mod in message["modifications"]:
                        if mod["type"] == "QueryUpdated":
                            seen["query"] = mod["logLines"]
                elif message["type"] in ("MutationResponse", "ActionResponse"):
                    seen[message["type"]] = message["logLines"]
    check(seen["query"], "ws")
    check(seen["MutationResponse"], "wsm")
    check(seen["ActionResponse"], "wsa")


PYPI_LOGS = """
import sys
from convex import ConvexClient
client = ConvexClient(sys.argv[1])
print("result", client.query("loglevels:levels", {"tag": "pypi"}), flush=True)
"""


@pytest.mark.e2e
async def test_the_official_pypi_client_prints_the_lines(start_server: StartServer) -> None:
    """The PyPI client prints each log line it receives, as the server sent it (`[LEVEL] text`)."""
    import sys

    server = start_server("dev")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PYPI_LOGS, server.url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode() + err.decode()
    assert "result pypi" in text, text
    for line in expected("pypi"):
        assert line in text.splitlines(), (line, text)


async def test_nothing_is_captured_outside_functions(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outside = logging.getLogger("functions.loglevels")
    outside.warning("outside any function")
    assert [r.getMessage() for r in caplog.records if r.name == "functions.loglevels"] == ["outside any function"]
    caplog.clear()
    out = await runtime.call("query", "loglevels:levels", {"tag": "in"})
    check(out.log_lines, "in")
    # In a function the records became log lines: the process's handlers saw only the stream of them.
    assert not [r for r in caplog.records if r.name.startswith("functions")]
    streamed = [r.getMessage() for r in caplog.records if r.name == "ripple.functions.log"]
    assert "[Q loglevels:levels] [INFO] info in" in streamed
    assert logs.current.get() is None
    outside.error("after")
    assert [r.getMessage() for r in caplog.records if r.name == "functions.loglevels"] == ["after"]
