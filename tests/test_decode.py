"""Large requests against a real `ripple serve`: Convex's value limits refuse oversized
arguments at once, with the limit and the path, over HTTP and the websocket; a large argument
within the limits is decoded without stalling everything else the server does."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from conftest import ServerProcess

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]


def slow_to_convert(text_mib: int) -> list[Any]:
    """A large argument within Convex's limits that takes about a second to convert on the
    decode thread (server/api/offload.py): 655,360 small objects, each a few microseconds of
    Python in server/core/values.py but a few bytes of JSON, and a `text_mib` MiB string that
    makes the message large and costs its parse little. The one part that holds the GIL
    whatever thread runs it, orjson's parse, is then about a tenth of the time the argument is
    in flight. (Arrays of small numbers, as these tests sent before, parse in a quarter of it,
    and on a machine where page faults are slow — the parse touches 150 MB — that came near the
    half a stall is judged by.)"""
    return [[{"n": 1}] * 8192 for _ in range(80)] + ["x" * (text_mib * 2**20)]


def body_of(path: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"path": path, "args": args}, separators=(",", ":")).encode()


def post_raw(url: str, route: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST on a socket of its own, blocking (run it in a thread): the body is all sent (in
    the server's buffers or read) when `sendall` returns, and only then does `sent` fire."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        head = (f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        sock.sendall(head.encode() + body)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


async def small_queries_during(server: ServerProcess, big: asyncio.Future[Any]) -> tuple[int, float]:
    """Small queries answered (one after another) while `big` is in flight: how many, and the
    longest any sent meanwhile waited."""
    count, longest = 0, 0.0
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        while not big.done():
            sent = time.perf_counter()
            r = await client.post("/api/query", json={"path": "counters:get", "args": {"name": "small"}})
            assert r.status_code == 200 and r.json()["value"] == 0, r.text
            longest = max(longest, time.perf_counter() - sent)  # sent while `big` was in flight
            if not big.done():
                count += 1
    return count, longest


async def assert_not_stalled(server: ServerProcess, big: asyncio.Future[Any]) -> None:
    """While `big` (sent just now, slow_to_convert) is decoded, small queries keep being
    answered. A server whose event loop the decode held would answer a small query only after
    the whole decode, so that query's wait would be most of the time `big` was in flight;
    decoded apart, each waits about a round trip, except the one that meets orjson's parse of
    the message (C that holds the GIL on any thread, server/api/offload.py): a tenth to a fifth
    of the time in flight here, against nearly all of it for a stall. Relative, so neither a
    fast nor a loaded machine decides it. A failure quotes the blocks of the event loop the
    server logged (server/core/watchdog.py) meanwhile."""
    logged = len(server.log().splitlines())
    started = time.perf_counter()
    count, longest = await small_queries_during(server, big)
    in_flight = time.perf_counter() - started
    assert in_flight >= 0.3, f"the large argument took only {in_flight:.2f} s: too short to show a stall"
    blocks = [line for line in server.log().splitlines()[logged:] if "event loop was blocked" in line]
    assert count >= 2 and longest < in_flight / 2, (
        f"{count} small queries answered in {in_flight:.2f} s, the slowest after {longest:.2f} s; "
        f"the server logged {blocks}")


async def test_a_16_mb_body_over_the_limits_is_refused_at_once(basic_server: ServerProcess) -> None:
    server = basic_server
    body = body_of("values:describe", {"value": [1] * 7_900_000})
    assert 15 * 1024 * 1024 < len(body) < 16 * 1024 * 1024
    status, answer = await asyncio.to_thread(post_raw, server.url, "/api/query", body)
    assert status == 400
    assert answer == {"code": "BadConvexValue", "message": "invalid argument value: args.value: arrays may hold at "
                                                           "most 8192 elements; this one has 7900000"}
    body = body_of("values:describe", {"value": {"o": {f"k{i}": i for i in range(1025)}}})
    status, answer = await asyncio.to_thread(post_raw, server.url, "/api/query", body)
    assert status == 400 and answer["message"] == ("invalid argument value: args.value.o: objects may have at most "
                                                   "1024 fields; this one has 1025")
    async with httpx.AsyncClient(base_url=server.url) as client:  # and goes on serving
        r = await client.post("/api/query", json={"path": "counters:get", "args": {"name": "after"}})
        assert r.json()["value"] == 0


async def test_small_requests_are_answered_while_a_16_mb_body_is_decoded(basic_server: ServerProcess) -> None:
    """A body within the limits but large (655,360 objects and a 10 MiB string) takes a while
    to decode: small queries sent after it was uploaded are answered before it is."""
    server = basic_server
    body = body_of("values:describe", {"value": slow_to_convert(text_mib=10)})
    assert len(body) > 15 * 1024 * 1024
    big = asyncio.ensure_future(asyncio.to_thread(post_raw, server.url, "/api/query", body))
    await assert_not_stalled(server, big)
    assert await big == (200, {"status": "success", "value": "list", "logLines": []})


async def test_websocket_arguments_over_the_limits_are_refused_naming_them(basic_server: ServerProcess) -> None:
    server = basic_server
    async with websockets.connect(server.url.replace("http://", "ws://") + "/api/sync", max_size=None) as ws:
        await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4())}))
        await ws.send(json.dumps({"type": "Mutation", "requestId": 0, "udfPath": "limits:slow",
                                  "args": [{"seconds": 0, "pad": "x", "extra": [0] * 9000}]}))
        await ws.send(json.dumps({"type": "Action", "requestId": 1, "udfPath": "limits:describe",
                                  "args": [{"value": {"o": {str(i): i for i in range(2000)}}}]}))
        await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "values:describe", "args": [{"value": [[0] * 8193]}]}]}))
        answers: dict[str, Any] = {}
        while len(answers) < 3:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] in ("MutationResponse", "ActionResponse"):
                answers[message["type"]] = message["result"]
                assert not message["success"]
            elif message["type"] == "Transition":
                (mod,) = message["modifications"]
                answers["QueryFailed"] = mod["errorMessage"]
    assert answers == {
        "MutationResponse": "args.extra: arrays may hold at most 8192 elements; this one has 9000",
        "ActionResponse": "args.value.o: objects may have at most 1024 fields; this one has 2000",
        "QueryFailed": "args.value[0]: arrays may hold at most 8192 elements; this one has 8193",
    }


async def test_a_large_websocket_argument_does_not_stall_other_clients(basic_server: ServerProcess) -> None:
    server = basic_server
    message = json.dumps({"type": "Action", "requestId": 0, "udfPath": "limits:describe",
                          "args": [{"value": slow_to_convert(text_mib=9)}]}, separators=(",", ":"))
    assert len(message) > 14 * 1024 * 1024
    async with websockets.connect(server.url.replace("http://", "ws://") + "/api/sync", max_size=None) as ws:
        await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4())}))
        await ws.send(message)

        async def answer() -> Any:
            while True:
                response = json.loads(await ws.recv())
                if response["type"] == "ActionResponse":
                    return response

        big = asyncio.ensure_future(answer())
        await assert_not_stalled(server, big)
        response = await big
    assert response["success"] and response["result"] == "list"
