"""Transitions larger than one websocket message: TransitionChunk parts, as Convex sends them to
the npm client, against a real `ripple serve`; whole Transitions to every other client."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from conftest import ServerProcess, run_node_tests, until

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]
ROOT = Path(__file__).resolve().parent.parent
CHUNK_BYTES = 5_000_000


async def connect(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> ClientConnection:
    ws = await websockets.connect(server.url.replace("http://", "ws://") + path, max_size=None, max_queue=None,
                                  ping_interval=None, additional_headers=headers)
    await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0,
                              "lastCloseReason": "InitialConnect"}))
    return ws


def subscribe(*queries: tuple[str, dict[str, Any]]) -> str:
    return json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": i, "udfPath": path, "args": [args]} for i, (path, args) in enumerate(queries)]})


async def next_transition(ws: ClientConnection, seen: list[dict[str, Any]] | None = None) -> tuple[str, list[str]]:
    """The next Transition's JSON text, reassembled from its parts if it came in parts (and the
    raw chunk strings); every message read on the way is appended to `seen`."""
    chunks: list[str] = []
    async with asyncio.timeout(60):
        while True:
            text = await ws.recv()
            assert isinstance(text, str)
            message = json.loads(text)
            if seen is not None:
                seen.append(message)
            if message["type"] == "Transition":
                assert not chunks, "a Transition arrived between the parts of another"
                return text, []
            if message["type"] == "TransitionChunk":
                assert message["partNumber"] == len(chunks)
                chunks.append(message["chunk"])
                if len(chunks) == message["totalParts"]:
                    return "".join(chunks), chunks


async def test_transition_chunks_reassemble_exactly(basic_server: ServerProcess) -> None:
    """The npm client (its version in the path, or a `Convex-Client: npm-...` header) gets parts of
    at most 5,000,000 bytes, cut between UTF-8 characters, that join into exactly the Transition a
    client without chunks gets whole (the PyPI client says `python-0.8.1` and fails on a part)."""
    server = basic_server
    query = ("large:text", {"name": "exact", "size": 12_000_000})
    npm = await connect(server, "/api/1.49.0/sync")
    npm_header = await connect(server, "/api/sync", {"Convex-Client": "npm-1.28.0"})
    pypi = await connect(server, "/api/sync", {"Convex-Client": "python-0.8.1"})
    plain = await connect(server, "/api/sync")
    old_npm = await connect(server, "/api/1.27.5/sync")
    try:
        for ws in (npm, npm_header, pypi, plain, old_npm):
            await ws.send(subscribe(query))
        whole, none = await next_transition(pypi)
        assert none == [] and len(whole.encode()) > 12_000_000
        for ws in (plain, old_npm):
            assert await next_transition(ws) == (whole, [])
        seen: list[dict[str, Any]] = []
        joined, chunks = await next_transition(npm, seen)
        assert joined == whole
        assert [m["partNumber"] for m in seen] == [0, 1, 2] and {m["totalParts"] for m in seen} == {3}
        assert {m["transitionId"] for m in seen} == {str(len(whole.encode()))}
        assert all(len(c.encode()) <= CHUNK_BYTES for c in chunks)
        # A cut moved back to a character's start (the result is mostly multi-byte characters).
        assert any(len(c.encode()) < CHUNK_BYTES for c in chunks[:-1])
        assert await next_transition(npm_header) == (whole, chunks)
    finally:
        for ws in (npm, npm_header, pypi, plain, old_npm):
            await ws.close()


async def test_nothing_comes_between_the_parts_of_a_transition(basic_server: ServerProcess) -> None:
    """Mutations sent while a chunked Transition goes out: their responses wait until its last
    part (the npm client drops a half-assembled Transition when another message arrives), and
    every Transition still arrives whole."""
    server = basic_server
    ws = await connect(server, "/api/1.49.0/sync")
    try:
        await ws.send(subscribe(("large:text", {"name": "between", "size": 11_000_000})))
        for request_id in range(5):
            await ws.send(json.dumps({"type": "Mutation", "requestId": request_id, "udfPath": "counters:inc",
                                      "args": [{"name": "between"}]}))
        seen: list[dict[str, Any]] = []
        tag = ""
        async with asyncio.timeout(120):
            while tag != "5" or sum(m["type"] == "MutationResponse" for m in seen) < 5:
                joined, chunks = await next_transition(ws, seen)
                modifications = json.loads(joined)["modifications"]
                if modifications:  # else an empty Transition owed after a MutationResponse
                    assert len(chunks) == 3
                    tag = modifications[0]["value"][0].split(":")[0]
        assert all(m["success"] for m in seen if m["type"] == "MutationResponse")
        kinds = [m["type"] for m in seen]
        for i, kind in enumerate(kinds):  # every run of parts is one whole Transition
            if kind == "TransitionChunk" and seen[i]["partNumber"] > 0:
                assert kinds[i - 1] == "TransitionChunk" and seen[i - 1]["partNumber"] == seen[i]["partNumber"] - 1
    finally:
        await ws.close()


PYPI_LARGE = """
import sys
from convex import ConvexClient
client = ConvexClient(sys.argv[1])
for value in client.subscribe("large:text", {"name": "pypi", "size": 12_000_000}):
    print(len(value), value[-1] == "0:0:856:" + "\u00e9\U0001f600x" * 1999, flush=True)
    break
"""


async def test_the_pypi_client_gets_large_transitions_whole(basic_server: ServerProcess) -> None:
    """It fails on a TransitionChunk (`Unexpected TransitionChunk message received`) and says so
    in its `Convex-Client` header: it gets the 12 MB Transition as one message."""
    server = basic_server
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PYPI_LARGE, server.url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
        assert line.split() == [b"857", b"True"], line
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.node
def test_the_npm_client_receives_a_transition_larger_than_its_message_limit(basic_server: ServerProcess) -> None:
    """tests/js/large_results.test.mjs: ~42 MB through a websocket taking at most 6 MiB a message."""
    server = basic_server
    run_node_tests("large_results.test.mjs", server, timeout=180)
    assert httpx.get(f"{server.url}/_ripple/health").status_code == 200


async def test_a_client_that_stops_reading_amid_the_parts_keeps_the_outbox_bound(start_server: StartServer) -> None:
    """A ~42 MB Transition in 9 parts to a client that reads nothing, then 60 mutations answering
    ~1 MB each: the parts wait for the socket, the answers for the parts, and the mutation worker
    for room in the outbox (8 MiB), so the server runs only some of them. Once the client reads,
    it gets every part in one run and every answer in order."""
    server = start_server("serve")
    queries = [("large:text", {"name": "stall", "size": 7_000_000, "part": part}) for part in range(6)]
    ws = await connect(server, "/api/1.49.0/sync")
    ws.transport.pause_reading()
    try:
        await ws.send(subscribe(*queries))
        for request_id in range(60):
            await ws.send(json.dumps({"type": "Mutation", "requestId": request_id, "udfPath": "limits:blob",
                                      "args": [{"size": 1_000_000, "tag": request_id}]}))

        def stalled() -> bool:
            m = server.metrics()
            return m.get('ripple_websocket_limit_total{limit="outbox_bytes"}', 0) >= 1 and m["ripple_websocket_pending_mutations"] > 0

        await until(stalled, timeout=60, interval=0.1)
        await asyncio.sleep(1)
        m = server.metrics()
        assert m['ripple_mutations_total{outcome="success"}'] < 60
        assert 8 * 1024 * 1024 <= m["ripple_websocket_outbox_bytes"] < 10 * 1024 * 1024

        ws.transport.resume_reading()
        seen: list[dict[str, Any]] = []
        joined, chunks = await next_transition(ws, seen)
        assert len(chunks) == 9 and len(json.loads(joined)["modifications"]) == 6
        async with asyncio.timeout(120):
            while sum(m["type"] == "MutationResponse" for m in seen) < 60:
                seen.append(json.loads(await ws.recv()))
        answers = [m for m in seen if m["type"] == "MutationResponse"]
        assert [m["requestId"] for m in answers] == list(range(60)) and all(m["success"] for m in answers)
        kinds = [m["type"] for m in seen]
        first = kinds.index("TransitionChunk")
        assert kinds[first:first + 9] == ["TransitionChunk"] * 9 and kinds.count("TransitionChunk") == 9
    finally:
        await ws.close()
