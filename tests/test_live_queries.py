"""Live queries end to end: real `ripple` processes, real websocket clients (our SDK, the
official PyPI `convex` client, raw protocol), real PostgreSQL, and fault injection."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import struct
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets

from client_sdk import RippleClient
from client_sdk.protocol import decode_ts

from conftest import ServerProcess, Watcher, free_port, until

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]


async def http_call(url: str, kind: str, path: str, args: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        body = (await c.post(f"/api/{kind}", json={"path": path, "args": args})).json()
    assert body["status"] == "success", body
    return body["value"]


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/_ripple/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} missing")


async def live_at_latest_commit(url: str) -> None:
    """Wait until every live result of the server at `url` is valid at the latest commit (its
    ripple_live_query_ts gauge has reached it and no result is pending: the queries the commits
    touched have run): whatever commits so far make that server do has been done.
    The gauge is a float; float() keeps order, so comparing floats never waits too little."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        latest = decode_ts((await c.post("/api/query_ts")).json()["ts"])
    await until(lambda: metric(url, "ripple_live_query_ts") >= float(latest)
                and metric(url, "ripple_live_queries_pending") == 0)


async def test_sdk_subscription_follows_mutations(basic_server: ServerProcess) -> None:
    server = basic_server
    async with RippleClient(server.url) as client:
        updates = client.subscribe("counters:get", {"name": "live"})
        assert await updates.__anext__() == 0
        assert await client.mutation("counters:inc", {"name": "live"}) == 1
        assert await updates.__anext__() == 1
        # An unrelated write is not re-sent (the value did not change).
        await client.mutation("counters:inc", {"name": "other"})
        await client.mutation("counters:inc", {"name": "live", "by": 2})
        assert await updates.__anext__() == 3
        await updates.aclose()


async def test_mutation_resolves_only_after_queries_reflect_it(basic_server: ServerProcess) -> None:
    server = basic_server
    async with RippleClient(server.url) as client:
        watcher = Watcher(client, "counters:get", {"name": "order"})
        await until(lambda: watcher.values == [0])
        for expected in range(1, 21):
            await client.mutation("counters:inc", {"name": "order"})
            # The mutation's promise resolved: the subscription already shows its effect.
            assert watcher.latest == expected
        await watcher.stop()


PYPI_SUBSCRIBER = """
import sys
from convex import ConvexClient
client = ConvexClient(sys.argv[1])
for value in client.subscribe("counters:get", {"name": "py"}):
    print(value, flush=True)
    if value == 2:
        break
"""


async def test_official_pypi_client_subscription(basic_server: ServerProcess) -> None:
    # The PyPI client's blocking iterator holds the GIL while it waits, so it gets a process.
    import sys

    from convex import ConvexClient

    server = basic_server
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PYPI_SUBSCRIBER, server.url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        seen = [float(await asyncio.wait_for(proc.stdout.readline(), 30))]
        pypi = ConvexClient(server.url)
        assert await asyncio.to_thread(pypi.mutation, "counters:inc", {"name": "py"}) == 1
        assert await asyncio.to_thread(pypi.mutation, "counters:inc", {"name": "py"}) == 2
        while seen[-1] != 2:
            seen.append(float(await asyncio.wait_for(proc.stdout.readline(), 30)))
        assert seen[0] == 0 and seen == sorted(seen)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


PYPI_CONVEX_ERROR = """
import sys
from convex import ConvexClient, ConvexError
client = ConvexClient(sys.argv[1])
try:
    client.mutation("counters:fail", {"code": "nope"})
except ConvexError as error:
    print(repr(error.args), flush=True)
"""


async def test_a_mutation_failing_with_convex_error_returns_to_the_official_pypi_client(basic_server: ServerProcess) -> None:
    """That client settles a failed mutation carrying error data only on the next Transition (a
    plain error message at once): with no write after it, the call used to hang."""
    import sys

    server = basic_server
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PYPI_CONVEX_ERROR, server.url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "nope" in line, line
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


PYPI_BIG = """
import sys
from convex import ConvexClient
client = ConvexClient(sys.argv[1])
for value in client.subscribe("values:big_text", {"n": 10_000_000, "fill": "\u00e9\u20ac"}):
    print(len(value), value[:4] == "\u00e9\u20ac\u00e9\u20ac", flush=True)
    break
"""


async def test_results_over_16_mib_reach_the_official_pypi_client(basic_server: ServerProcess) -> None:
    """A 50 MB Transition (multi-byte characters) goes out as 1 MiB frames: the PyPI client's
    websocket library refuses frames over 16 MiB (it used to reconnect forever), and no frame
    boundary may split a UTF-8 sequence."""
    import sys

    server = basic_server
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PYPI_BIG, server.url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
        assert line.split() == [b"20000000", b"True"], line
        async with RippleClient(server.url) as client:
            assert len(await client.query("values:big_text", {"n": 20_000_000})) == 20_000_000
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_subscriber_on_one_process_writer_on_another(start_server: StartServer) -> None:
    reader, writer = start_server("serve"), start_server("serve")
    async with RippleClient(reader.url) as sub, RippleClient(writer.url) as pub:
        watcher = Watcher(sub, "counters:get", {"name": "x-proc"})
        await until(lambda: watcher.latest == 0)
        for _ in range(5):
            await pub.mutation("counters:inc", {"name": "x-proc"})
        await until(lambda: watcher.latest == 5)
        await watcher.stop()


async def test_client_reconnects_after_server_restart(start_server: StartServer) -> None:
    port = free_port()
    server = start_server("serve", port=port)
    other = start_server("serve")
    async with RippleClient(server.url) as client:
        watcher = Watcher(client, "counters:get", {"name": "restart"})
        await until(lambda: watcher.latest == 0)
        server.stop()
        await until(lambda: client.state.value != "connected")
        await http_call(other.url, "mutation", "counters:inc", {"name": "restart"})  # while it is down
        pending = asyncio.create_task(client.mutation("counters:inc", {"name": "restart"}))  # queued
        start_server("serve", port=port)
        assert await asyncio.wait_for(pending, 30) == 2
        await until(lambda: watcher.latest == 2)
        assert client.reconnects >= 1
        await watcher.stop()
    assert await http_call(other.url, "query", "counters:get", {"name": "restart"}) == 2  # ran once


async def test_resent_mutation_runs_once(basic_server: ServerProcess) -> None:
    """The same (session id, request id) twice — as after a reconnect — writes once."""
    server = basic_server
    ws_url = server.url.replace("http://", "ws://") + "/api/sync"
    session = str(uuid.uuid4())
    mutation = {"type": "Mutation", "requestId": 0, "udfPath": "counters:inc", "args": [{"name": "idem"}]}
    results = []
    for attempt in range(2):
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "Connect", "sessionId": session, "connectionCount": attempt}))
            await ws.send(json.dumps(mutation))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "MutationResponse":
                    results.append(message)
                    break
    assert [r["result"] for r in results] == [1, 1] and results[0]["ts"] == results[1]["ts"]
    assert await http_call(server.url, "query", "counters:get", {"name": "idem"}) == 1


async def test_a_resent_request_id_with_other_arguments_is_refused(start_server: StartServer) -> None:
    """A request id of a session reused for another call gets a failed MutationResponse saying
    so, and nothing runs; the admin's use of the same session and request id is its own."""
    server = start_server("serve", extra_env={"RIPPLE_ADMIN_KEY": "k-idem"})
    ws_url = server.url.replace("http://", "ws://") + "/api/sync"
    session = str(uuid.uuid4())
    calls = [({"name": "reuse-a"}, None), ({"name": "reuse-b"}, None), ({"name": "reuse-b"}, "k-idem")]
    results = []
    for attempt, (args, admin_key) in enumerate(calls):
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "Connect", "sessionId": session, "connectionCount": attempt}))
            if admin_key is not None:
                await ws.send(json.dumps({"type": "Authenticate", "tokenType": "Admin", "value": admin_key,
                                          "baseVersion": 0}))
            await ws.send(json.dumps({"type": "Mutation", "requestId": 0, "udfPath": "counters:inc", "args": [args]}))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "MutationResponse":
                    results.append(message)
                    break
    assert results[0]["success"] and results[0]["result"] == 1
    assert not results[1]["success"]
    assert "request id 0 of session" in results[1]["result"] and "other arguments" in results[1]["result"]
    assert results[2]["success"] and results[2]["result"] == 1
    assert await http_call(server.url, "query", "counters:get", {"name": "reuse-a"}) == 1
    assert await http_call(server.url, "query", "counters:get", {"name": "reuse-b"}) == 1


async def test_an_admin_websocket_may_subscribe_to_internal_queries(start_server: StartServer) -> None:
    """With the admin key a websocket runs internal mutations and actions, and subscribes to
    internal queries too; without it the same subscription fails, and the two do not share one
    execution."""
    server = start_server("serve", extra_env={"RIPPLE_ADMIN_KEY": "k-internal"})
    ws_url = server.url.replace("http://", "ws://") + "/api/sync"
    outcomes = []
    for admin_key in ("k-internal", None):
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0}))
            if admin_key is not None:
                await ws.send(json.dumps({"type": "Authenticate", "tokenType": "Admin", "value": admin_key, "baseVersion": 0}))
            await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
                {"type": "Add", "queryId": 0, "udfPath": "counters:secret", "args": [{"name": "hidden"}]}]}))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "Transition" and message["modifications"]:
                    outcomes.append(message["modifications"][0])
                    break
    assert outcomes[0]["type"] == "QueryUpdated" and outcomes[0]["value"] == 0
    assert outcomes[1]["type"] == "QueryFailed" and "counters:secret" in outcomes[1]["errorMessage"]


async def test_big_integers_and_long_paths_over_the_websocket(basic_server: ServerProcess) -> None:
    """2**60 and 2**80 as JSON integers are refused alike, naming where they are; a
    1,000,000-character function path is not echoed back whole."""
    server = basic_server
    ws_url = server.url.replace("http://", "ws://") + "/api/sync"
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0}))
        await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "values:describe", "args": [{"value": [2**80]}]}]}))
        for request_id, big in enumerate([2**60, 2**80]):
            await ws.send(json.dumps({"type": "Mutation", "requestId": request_id, "udfPath": "counters:inc",
                                      "args": [{"name": "big", "by": big}]}))
        await ws.send(json.dumps({"type": "Mutation", "requestId": 2, "udfPath": "a" * 1_000_000, "args": [{}]}))
        responses: dict[int, Any] = {}
        query_failed = None
        while len(responses) < 3 or query_failed is None:
            message = json.loads(await ws.recv())
            if message["type"] == "MutationResponse":
                responses[message["requestId"]] = message
            elif message["type"] == "Transition":
                for mod in message["modifications"]:
                    if mod["type"] == "QueryFailed":
                        query_failed = mod["errorMessage"]
    for request_id, big in enumerate([2**60, 2**80]):
        assert not responses[request_id]["success"]
        assert f"by: integer {big} is outside the float64-exact range" in responses[request_id]["result"]
    assert f"value[0]: integer {2**80} is outside" in query_failed
    assert not responses[2]["success"]
    assert "(1000000 characters)" in responses[2]["result"] and len(responses[2]["result"]) < 400
    assert await http_call(server.url, "query", "counters:get", {"name": "big"}) == 0


async def test_only_affected_subscriptions_re_execute(start_server: StartServer) -> None:
    server = start_server("serve")
    async with RippleClient(server.url) as client:
        watchers = [Watcher(client, "items:by_range", {"index": "by_n", "eq": [n]}) for n in range(200)]
        await until(lambda: all(w.values == [[]] for w in watchers), timeout=30)
        before = metric(server.url, "ripple_query_executions_total")
        assert metric(server.url, "ripple_subscriptions") == 200
        (new_id,) = await client.mutation("items:insert_many", {"docs": [{"n": 17}]})
        assert watchers[17].latest == [new_id]  # the mutation resolved after the update arrived
        # A later commit no subscription reads: once the live queries are valid at it, every
        # re-execution the insert caused has happened (and been counted).
        await http_call(server.url, "mutation", "counters:inc", {"name": "unrelated"})
        await live_at_latest_commit(server.url)
        assert metric(server.url, "ripple_query_executions_total") - before == 1
        assert all(w.values == [[]] for i, w in enumerate(watchers) if i != 17)
        for w in watchers:
            await w.stop()


async def test_a_re_run_gets_the_arguments_as_sent_even_when_the_last_run_changed_them(basic_server: ServerProcess) -> None:
    """A re-run of a live query does not validate its arguments again when they are all scalars
    (shared_queries.prepare); a list it was given is validated afresh for every run, so a query
    that appends to it sees the list as the client sent it each time."""
    name = f"noting-{uuid.uuid4().hex[:8]}"
    async with RippleClient(basic_server.url) as client:
        watcher = Watcher(client, "counters:get_noting", {"name": name, "seen": ["sent"]})
        plain = Watcher(client, "counters:get", {"name": name})
        await until(lambda: watcher.values == [["sent", "0"]] and plain.values == [0])
        for expected in (1, 2):
            await client.mutation("counters:inc", {"name": name})
            await until(lambda n=expected: watcher.latest == ["sent", str(n)] and plain.latest == n)
        assert watcher.values == [["sent", "0"], ["sent", "1"], ["sent", "2"]]
        await watcher.stop()
        await plain.stop()


async def test_no_write_missed_when_listener_connection_is_killed(start_server: StartServer, namespace: str, pg_url: str) -> None:
    server = start_server("serve")
    admin = await asyncpg.connect(pg_url)
    try:
        async with RippleClient(server.url) as client:
            watcher = Watcher(client, "counters:get", {"name": "burst"})
            await until(lambda: watcher.latest == 0)

            async def burst() -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                    for _ in range(150):
                        r = await c.post("/api/mutation", json={"path": "counters:inc", "args": {"name": "burst"}})
                        assert r.json()["status"] == "success"

            async def killer() -> int:
                killed = 0
                for _ in range(5):
                    await asyncio.sleep(0.15)
                    killed += len(await admin.fetch(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                        f"ripple-listener ripple_commits_{namespace}"[:63]))
                return killed

            _, killed = await asyncio.gather(burst(), killer())
            assert killed >= 3
            await until(lambda: watcher.latest == 150, timeout=20)
            assert watcher.values == sorted(watcher.values)  # never backwards
            await watcher.stop()
    finally:
        await admin.close()


async def test_paginated_subscriptions_stay_gap_free(basic_server: ServerProcess) -> None:
    server = basic_server
    async with RippleClient(server.url) as client:
        ids = await client.mutation("items:insert_many", {"docs": [{"n": n} for n in range(10)]})
        first = Watcher(client, "items:page", {"paginationOpts": {"numItems": 3, "cursor": None}})
        await until(lambda: first.latest is not None)
        assert [d["n"] for d in first.latest["page"]] == [0, 1, 2]
        second = Watcher(client, "items:page", {"paginationOpts": {"numItems": 3, "cursor": first.latest["continueCursor"]}})
        await until(lambda: second.latest is not None)
        assert [d["n"] for d in second.latest["page"]] == [3, 4, 5]

        async def check(expected_ns: list[int]) -> None:
            await until(lambda: [d["n"] for d in first.latest["page"] + second.latest["page"]] == expected_ns)
            together = [d["_id"] for d in first.latest["page"] + second.latest["page"]]
            assert len(together) == len(set(together))  # no overlap

        # Around the boundary between the pages (page one ends at the first n=2) and the end of
        # page two (the first n=5). Index order is (n, _creationTime), so a new n=2 sorts after
        # the old one (page two) and a new n=5 after page two's end (it belongs to page three).
        await client.mutation("items:insert_many", {"docs": [{"n": 2}, {"n": 5}, {"n": 0}]})
        await check([0, 0, 1, 2, 2, 3, 4, 5])
        # Deleting the document page one ends at keeps the boundary where it was.
        await client.mutation("items:clear_ids", {"ids": [ids[2], ids[3]]})
        await check([0, 0, 1, 2, 4, 5])
        assert [d["n"] for d in first.latest["page"]] == [0, 0, 1]
        await client.mutation("items:insert_many", {"docs": [{"n": 6}, {"n": -1}]})
        await check([-1, 0, 0, 1, 2, 4, 5])
        third = Watcher(client, "items:page", {"paginationOpts": {"numItems": 3, "cursor": second.latest["continueCursor"]}})
        await until(lambda: third.latest is not None)
        assert [d["n"] for d in third.latest["page"]] == [5, 6, 6]  # the new 5, the old 6, the new 6
        everything = [d["n"] for w in (first, second, third) for d in w.latest["page"]]
        assert everything == [-1, 0, 0, 1, 2, 4, 5, 5, 6, 6] and not third.latest["isDone"]
        for w in (first, second, third):
            await w.stop()


async def test_protocol_errors_close_only_that_client(basic_server: ServerProcess) -> None:
    server = basic_server
    ws_url = server.url.replace("http://", "ws://") + "/api/sync"
    async with RippleClient(server.url) as healthy:
        watcher = Watcher(healthy, "counters:get", {"name": "calm"})
        await until(lambda: watcher.latest == 0)
        for bad in (b"{nope", json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": []}),
                    json.dumps({"type": "Connect", "sessionId": "s"}) + "garbage"):
            async with websockets.connect(ws_url) as ws:
                await ws.send(bad)
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply["type"] == "FatalError" and reply["error"]
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
        async with websockets.connect(ws_url) as ws:  # a bad token: AuthError, then close
            await ws.send(json.dumps({"type": "Connect", "sessionId": "s2"}))
            await ws.send(json.dumps({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": "x.y.z"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["type"] == "AuthError" and reply["baseVersion"] == 0 and reply["authUpdateAttempted"] is True
        await healthy.mutation("counters:inc", {"name": "calm"})
        await until(lambda: watcher.latest == 1)
        await watcher.stop()


def _frame(payload: bytes) -> bytes:
    """A masked client text frame."""
    mask = os.urandom(4)
    n = len(payload)
    header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                              if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete server frames (unmasked, unfragmented) at the start of a byte stream, and
    the bytes after them."""
    out, i = [], 0
    while True:
        start, header = i, 2
        if len(data) < i + header:
            return out, data[start:]
        n = data[i + 1] & 0x7F
        if n >= 126:
            header += 2 if n == 126 else 8
            if len(data) < i + header:
                return out, data[start:]
            n = struct.unpack(">H" if n == 126 else ">Q", data[i + 2:i + header])[0]
        if len(data) < i + header + n:
            return out, data[start:]
        out.append(data[i + header:i + header + n])
        i += header + n


async def test_slow_client_gets_coalesced_transitions(start_server: StartServer) -> None:
    """A client that stops reading holds back its socket; the server then builds one
    Transition from the latest state when the socket drains, instead of queueing one per
    commit. (A raw socket with a small receive buffer: client libraries keep reading into
    memory of their own.)"""
    server = start_server("serve")
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET /api/sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        handshake = b""
        while b"\r\n\r\n" not in handshake:
            handshake += sock.recv(1)
        assert handshake.startswith(b"HTTP/1.1 101")
        sock.sendall(_frame(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4())}).encode()))
        sock.sendall(_frame(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "counters:big", "args": [{"name": "slow", "size": 1_000_000}]}]}).encode()))
        # Do not read while 40 commits change the 1 MB result, and until the server's live
        # query is at the last of them (the server has all 40 behind it).
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            for _ in range(40):
                r = await c.post("/api/mutation", json={"path": "counters:inc", "args": {"name": "slow"}})
                assert r.json()["status"] == "success"
        await live_at_latest_commit(server.url)

        def shows_final_state(transition: dict[str, Any]) -> bool:
            return any(str(m.get("value", "")).endswith("40") for m in transition["modifications"])

        # Read until the Transition with the final state: every Transition the server sends
        # for an earlier state comes before it.
        sock.setblocking(False)
        transitions: list[dict[str, Any]] = []
        pending = b""
        deadline = asyncio.get_running_loop().time() + 30
        while not any(map(shows_final_state, transitions)):
            assert asyncio.get_running_loop().time() < deadline, f"the client never caught up ({len(transitions)} Transitions)"
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.02)
                continue
            assert chunk, "the server closed the connection"
            frames, pending = _split_frames(pending + chunk)
            transitions += [m for m in map(orjson.loads, frames) if m["type"] == "Transition"]
        assert len(transitions) < 20  # coalesced, not one per commit
        assert transitions[-1]["modifications"][0]["value"].endswith("40")  # the latest state
        for before, after in itertools.pairwise(transitions):
            assert after["startVersion"] == before["endVersion"]
    finally:
        sock.close()
