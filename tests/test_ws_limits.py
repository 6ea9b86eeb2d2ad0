"""Per-connection limits of the sync protocol, against a real `ripple serve`: what a client that
never reads, floods mutations, starts too many actions or subscribes to too much can make the
server hold, the error and metric each limit gives, and what a connection leaves behind."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from conftest import ServerProcess, until

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]
MB = 1024 * 1024


def rss_mb(server: ServerProcess) -> float:
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def query(server: ServerProcess, path: str, args: dict[str, Any]) -> Any:
    r = httpx.post(f"{server.url}/api/query", json={"path": path, "args": args})
    assert r.status_code == 200, r.text
    return r.json()["value"]


def limit_count(server: ServerProcess, limit: str) -> float:
    return server.metrics().get(f'ripple_websocket_limit_total{{limit="{limit}"}}', 0.0)


async def connect(server: ServerProcess) -> ClientConnection:
    ws = await websockets.connect(server.url.replace("http://", "ws://") + "/api/sync", max_size=None,
                                  max_queue=None, ping_interval=None)
    await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0,
                              "lastCloseReason": "InitialConnect"}))
    return ws


def mutation(request_id: int, path: str, args: dict[str, Any]) -> str:
    return json.dumps({"type": "Mutation", "requestId": request_id, "udfPath": path, "args": [args]})


def action(request_id: int, path: str, args: dict[str, Any]) -> str:
    return json.dumps({"type": "Action", "requestId": request_id, "udfPath": path, "args": [args]})


async def responses(ws: ClientConnection, kind: str, count: int) -> dict[int, dict[str, Any]]:
    """The next `count` messages of type `kind`, by request id (other messages skipped)."""
    got: dict[int, dict[str, Any]] = {}
    async with asyncio.timeout(120):
        while len(got) < count:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                got[message["requestId"]] = message
    return got


async def fatal_error(ws: ClientConnection) -> str:
    """The FatalError the server sends before closing with 1008."""
    error = None
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(30):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "FatalError":
                    error = message["error"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert error is not None
    return error


async def settled(read: Callable[[], float], seconds: float = 1.5, timeout: float = 60) -> float:
    """`read()` once it has not changed for `seconds`."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
    raise AssertionError("never settled")


async def test_a_client_that_never_reads_holds_bounded_memory_and_loses_nothing(start_server: StartServer) -> None:
    """300 mutations answering ~1 MB each, from a client that does not read: the server runs
    them only as fast as the client takes the answers (the outbox is bounded), its memory
    stays bounded while it waits and comes back when the client leaves; a client that reads
    late gets every answer, in order."""
    server = start_server("serve")
    count, size = 300, 1_000_000
    mutations = lambda: server.metrics().get('ripple_mutations_total{outcome="success"}', 0.0)  # noqa: E731

    warm = await connect(server)  # warm up the code paths a large answer takes
    for i in range(3):
        await warm.send(mutation(i, "limits:blob", {"size": size, "tag": i}))
    assert len(await responses(warm, "MutationResponse", 3)) == 3
    await warm.close()
    await until(lambda: server.metrics()["ripple_websocket_clients"] == 0)
    await asyncio.sleep(1.5)  # the trim after a large connection
    baseline = rss_mb(server)
    done_before = mutations()

    stalled = await connect(server)
    stalled.transport.pause_reading()  # the client stops reading; the server's writes back up
    for i in range(count):
        await stalled.send(mutation(i, "limits:blob", {"size": size, "tag": i}))
    peak = baseline

    def sample() -> float:
        nonlocal peak
        peak = max(peak, rss_mb(server))
        return mutations()

    run = await settled(sample)

    m = server.metrics()
    assert run - done_before < count, "the server ran every mutation for a client that reads nothing"
    assert m['ripple_websocket_limit_total{limit="outbox_bytes"}'] >= 1
    assert m["ripple_websocket_outbox_bytes"] > 0
    assert m["ripple_websocket_pending_mutations"] > 0
    assert peak - baseline < 150, f"RSS grew from {baseline:.0f} MB to {peak:.0f} MB"

    stalled.transport.abort()  # gone without a word, with everything it was sent unread
    await until(lambda: server.metrics()["ripple_websocket_clients"] == 0)
    await until(lambda: server.metrics()["ripple_websocket_pending_mutations"] == 0)
    after = await settled(lambda: rss_mb(server), seconds=2)
    assert after - baseline < 40, f"RSS {after:.0f} MB after the client left, {baseline:.0f} MB before it came"

    # A client that reads, but only after everything was sent: fewer mutations than above do
    # (the outbox and the socket buffers hold far fewer answers than this), as every one runs.
    late, late_count = await connect(server), 60
    late.transport.pause_reading()
    before_late = mutations()
    for i in range(late_count):
        await late.send(mutation(i, "limits:blob", {"size": size, "tag": i}))
    assert await settled(mutations) - before_late < late_count  # held back until it reads
    late.transport.resume_reading()
    answers = await responses(late, "MutationResponse", late_count)
    assert sorted(answers) == list(range(late_count))
    for i, answer in answers.items():
        assert answer["success"], answer["result"]
        assert len(answer["result"]) == size // 8000 and answer["result"][0].startswith(f"{i}:0:")
    await late.close()


async def test_too_many_waiting_mutations_close_the_connection(start_server: StartServer) -> None:
    server = start_server("serve", extra_env={"RIPPLE_WS_MAX_PENDING_MUTATIONS": "5"})
    ws = await connect(server)
    await ws.send(mutation(0, "limits:slow", {"seconds": 3}))
    await asyncio.sleep(0.5)  # running: the worker is busy, what follows waits
    for i in range(1, 7):
        await ws.send(mutation(i, "counters:inc", {"name": "flood"}))
    error = await fatal_error(ws)
    assert error == "more than 5 mutations sent and not run yet on one connection (RIPPLE_WS_MAX_PENDING_MUTATIONS)"
    assert limit_count(server, "pending_mutations") == 1
    assert complaints(server) == []


async def test_waiting_mutations_over_their_byte_limit_pause_the_reader(start_server: StartServer) -> None:
    """Beyond RIPPLE_WS_MAX_PENDING_MUTATION_BYTES the server stops reading the socket (TCP
    slows the client down) instead of holding more or closing: every mutation runs."""
    server = start_server("serve", extra_env={"RIPPLE_WS_MAX_PENDING_MUTATION_BYTES": "4000"})
    ws = await connect(server)
    await ws.send(mutation(0, "limits:slow", {"seconds": 2}))
    await asyncio.sleep(0.5)
    for i in range(1, 21):
        await ws.send(mutation(i, "limits:slow", {"seconds": 0, "pad": "p" * 1000}))
    await asyncio.sleep(0.5)
    assert server.metrics()["ripple_websocket_pending_mutations"] <= 5  # the rest were not read yet
    answers = await responses(ws, "MutationResponse", 21)
    assert all(answer["success"] for answer in answers.values())
    assert limit_count(server, "pending_mutation_bytes") >= 1
    await ws.close()


async def test_actions_beyond_the_limit_are_refused_one_by_one(start_server: StartServer) -> None:
    server = start_server("serve", extra_env={"RIPPLE_WS_MAX_CONCURRENT_ACTIONS": "2"})
    ws = await connect(server)
    for i in range(3):
        await ws.send(action(i, "limits:sleep", {"seconds": 1.5}))
    answers = await responses(ws, "ActionResponse", 3)
    assert answers[2] == {"type": "ActionResponse", "requestId": 2, "success": False, "logLines": [],
                          "result": "more than 2 actions running at once on one connection "
                                    "(RIPPLE_WS_MAX_CONCURRENT_ACTIONS); this one was not run"}
    assert answers[0]["success"] and answers[1]["success"]
    await ws.send(action(3, "limits:sleep", {"seconds": 0}))  # their slots are free again
    assert (await responses(ws, "ActionResponse", 1))[3]["success"]
    assert limit_count(server, "concurrent_actions") == 1
    await ws.close()


async def test_subscriptions_beyond_the_limit_close_the_connection(start_server: StartServer) -> None:
    server = start_server("serve", extra_env={"RIPPLE_WS_MAX_SUBSCRIPTIONS": "3"})
    ws = await connect(server)

    def add(query_id: int) -> dict[str, Any]:
        return {"type": "Add", "queryId": query_id, "udfPath": "counters:get", "args": [{"name": f"q{query_id}"}]}

    await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                              "modifications": [add(0), add(1), add(2)]}))
    assert json.loads(await ws.recv())["type"] == "Transition"
    await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 1, "newVersion": 2,
                              "modifications": [{"type": "Remove", "queryId": 0}, add(3)]}))  # still 3
    assert json.loads(await ws.recv())["type"] == "Transition"
    await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 2, "newVersion": 3, "modifications": [add(4)]}))
    assert await fatal_error(ws) == ("ModifyQuerySet would make the query set 4 queries; a connection may hold "
                                     "at most 3 (RIPPLE_WS_MAX_SUBSCRIPTIONS)")
    assert limit_count(server, "subscriptions") == 1
    await until(lambda: server.metrics()["ripple_subscriptions"] == 0)


async def test_a_connection_that_ends_cancels_its_running_actions(start_server: StartServer) -> None:
    """The client fails in-flight actions when its connection drops and never resends them:
    the server stops them instead of running them to the end for nobody."""
    server = start_server("serve")
    ws = await connect(server)
    await ws.send(action(0, "limits:sleep_then_count", {"seconds": 1, "name": "orphan"}))
    await asyncio.sleep(0.3)  # running
    await ws.close()
    await asyncio.sleep(1.2)  # half a second past the time it would have counted
    assert query(server, "counters:get", {"name": "orphan"}) == 0
    assert server.metrics()["ripple_websocket_actions"] == 0
    assert complaints(server) == []


def complaints(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines()
            if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))]


async def test_idle_and_busy_connections_get_keepalive_pings_and_mutations_still_run(start_server: StartServer) -> None:
    """An idle connection holds no sender or mutation task of its own (a process-wide timer
    pings every connection): it still gets its Ping, and one that subscribes and sends a
    mutation afterwards gets its MutationResponse and the Transition carrying the write. The
    server pings every 2 s here (RIPPLE_WS_PING_SECONDS) instead of every 15 s."""
    server = start_server("serve", extra_env={"RIPPLE_WS_PING_SECONDS": "2"})
    idle, busy = await connect(server), await connect(server)
    await busy.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": 0, "udfPath": "counters:get", "args": [{"name": "pinged"}]}]}))
    assert json.loads(await busy.recv())["type"] == "Transition"
    for ws in (idle, busy):
        assert json.loads(await asyncio.wait_for(ws.recv(), 40)) == {"type": "Ping"}
    await busy.send(mutation(0, "counters:inc", {"name": "pinged", "by": 7}))
    seen: dict[str, Any] = {}
    while "Transition" not in seen or "MutationResponse" not in seen:
        message = json.loads(await asyncio.wait_for(busy.recv(), 30))
        if message["type"] == "Transition" and message["modifications"]:
            seen["Transition"] = message["modifications"][0]["value"]
        elif message["type"] == "MutationResponse":
            assert "Transition" not in seen  # the response comes first
            seen["MutationResponse"] = message["success"]
    assert seen == {"Transition": 7, "MutationResponse": True}
    await idle.close()
    await busy.close()
    assert complaints(server) == []
