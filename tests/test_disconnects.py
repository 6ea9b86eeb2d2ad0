"""Clients that go away, the ordinary ways, against a real `ripple serve`: nothing in the server
log above INFO, no traceback, and the server goes on serving. Genuine errors still log ERROR."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from client_sdk import FunctionError, RippleClient

from conftest import ServerProcess

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]


class RawClient:
    """A sync-protocol client on a bare socket, so that it can vanish without a close frame."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /api/sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        handshake = b""
        while b"\r\n\r\n" not in handshake:
            handshake += self.sock.recv(1)
        assert handshake.startswith(b"HTTP/1.1 101"), handshake
        self.send({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0,
                   "lastCloseReason": "InitialConnect"})

    def send(self, message: dict[str, Any]) -> None:
        payload, mask = json.dumps(message).encode(), os.urandom(4)
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
        self.sock.sendall(bytes([0x81]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def subscribe(self, path: str, args: dict[str, Any]) -> None:
        self.send({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": path, "args": [args]}]})

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    def receive(self) -> dict[str, Any]:
        """The next message (the server sends small ones as one frame)."""
        first, second = self._exactly(2)
        assert first == 0x81, hex(first)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._exactly(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._exactly(8))[0]
        message: dict[str, Any] = json.loads(self._exactly(n))
        return message

    def vanish(self, reset: bool) -> None:
        """Close the socket without a close frame: with a FIN, or with a RST (SO_LINGER 0)."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def until(predicate: Callable[[], Any], what: str) -> None:
    for _ in range(1500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


def websocket_clients(server: ServerProcess) -> float:
    for line in httpx.get(f"{server.url}/_ripple/metrics").text.splitlines():
        if line.startswith("ripple_websocket_clients "):
            return float(line.split()[1])
    raise AssertionError("no ripple_websocket_clients metric")


def complaints(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))]


async def test_ordinary_disconnects_log_nothing_above_info(start_server: StartServer) -> None:
    server = start_server("serve")
    port = int(server.url.rsplit(":", 1)[1])
    async with RippleClient(server.url) as steady:
        values: list[int] = []

        async def watch() -> None:
            async for value in steady.subscribe("counters:get", {"name": "gone"}):
                values.append(value)

        watcher = asyncio.create_task(watch())
        await until(lambda: values == [0], "the steady client's first result")

        # Closes normally, with a close frame, after its first Transition.
        async with websockets.connect(server.url.replace("http://", "ws://") + "/api/sync") as ws:
            await ws.send(json.dumps({"type": "Connect", "sessionId": str(uuid.uuid4())}))
            await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
                {"type": "Add", "queryId": 0, "udfPath": "counters:get", "args": [{"name": "gone"}]}]}))
            assert json.loads(await ws.recv())["type"] == "Transition"

        # Idle subscribers that vanish.
        for reset in (False, True):
            idle = RawClient(port)
            idle.subscribe("counters:get", {"name": "gone"})
            assert idle.receive()["type"] == "Transition"
            idle.vanish(reset)

        # Subscribers of a 3 MB result that stop reading: their transports fill up and the
        # server is in the middle of sending to them when they vanish.
        stalled = [RawClient(port, receive_buffer=4096) for _ in range(2)]
        for client in stalled:
            client.subscribe("counters:big", {"name": "gone", "size": 3_000_000})
        for i in range(1, 4):
            await steady.mutation("counters:inc", {"name": "gone"})
            await until(lambda i=i: values[-1] == i, "the steady client saw the commit")
        stalled[0].vanish(reset=True)
        stalled[1].vanish(reset=False)

        # A client with mutations in flight.
        busy = RawClient(port)
        for request_id in range(20):
            busy.send({"type": "Mutation", "requestId": request_id, "udfPath": "counters:inc", "args": [{"name": "busy"}]})
        busy.vanish(reset=True)

        await until(lambda: websocket_clients(server) == 1, "only the steady client is left")
        assert complaints(server.log()) == [], server.log()

        # The server still serves: the steady client and a new one.
        assert await steady.mutation("counters:inc", {"name": "gone"}) == 4
        await until(lambda: values[-1] == 4, "the steady client saw the commit")
        watcher.cancel()
    async with RippleClient(server.url) as fresh:
        assert await fresh.query("counters:get", {"name": "gone"}) == 4
        assert await fresh.mutation("counters:inc", {"name": "gone"}) == 5
        assert complaints(server.log()) == [], server.log()
        with pytest.raises(FunctionError):  # a genuine error still logs ERROR, with its traceback
            await fresh.mutation("counters:boom")
    await until(lambda: "Traceback" in server.log(), "the failure logged")
    assert any(" ERROR " in line and "counters:boom" in line for line in complaints(server.log())), server.log()
