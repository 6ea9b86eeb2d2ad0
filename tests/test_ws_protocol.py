"""Ripple's own websocket protocol (server/api/ws_protocol.py) against RFC 6455, in a real
uvicorn process with Ripple's uvicorn settings (tests/frame_server.py) on loopback: driven by a
raw socket that writes exactly the bytes under test, and by the `websockets` library's client."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.api.ws_frames import CLOSE, CONT, PING, PONG, TEXT, accept_value

from conftest import ServerProcess

pytestmark = pytest.mark.e2e

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example
MASK = b"\x11\x22\x33\x44"


async def get(server: ServerProcess, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return (await http.get(path)).json()  # type: ignore[no-any-return]


def masked(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """A client frame (RFC 6455 5.2)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    flag = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, flag | n))
    elif n < 1 << 16:
        head = bytes((first, flag | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, flag | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload)) if n < 4096 else _xor(payload)
    return head + MASK + body


def _xor(payload: bytes) -> bytes:
    n = len(payload)
    key = (MASK * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Raw:
    """A websocket client that is a plain socket: every byte it sends is the test's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: ServerProcess) -> Raw:
        port = int(server.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, path: str = "/echo", *, method: str = "GET", version: bytes = b"13", key: bytes | None = KEY,
                      extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: test", b"Upgrade: websocket", b"Connection: Upgrade",
                 b"Sec-WebSocket-Version: " + version]
        if key is not None:
            lines.append(b"Sec-WebSocket-Key: " + key)
        self.writer.write(b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n")
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split(" ")[1]), headers, body

    async def open_ws(self, path: str = "/echo") -> None:
        status, headers, _ = await self.request(path)
        assert status == 101, status
        assert headers["sec-websocket-accept"] == accept_value(KEY).decode() == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self) -> tuple[bool, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), 30)
        assert not head[1] & 0x80, "a server frame is never masked"
        assert not head[0] & 0x70
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return bool(head[0] & 0x80), head[0] & 0x0F, await self.reader.readexactly(n)

    async def closed_with(self) -> tuple[int, str]:
        """The server's close frame (after any other frames), then the TCP close."""
        while True:
            _fin, opcode, payload = await self.frame()
            if opcode == CLOSE:
                break
        assert await asyncio.wait_for(self.reader.read(), 30) == b"", "the server closes TCP after its close frame"
        return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    def close(self) -> None:
        self.writer.close()


async def test_handshake_is_validated(frame_server: Callable[..., ServerProcess]) -> None:
    srv = frame_server()
    cases: list[tuple[dict[str, object], int]] = [
        ({"version": b"8"}, 426), ({"key": None}, 400), ({"key": b"c2hvcnQ="}, 400), ({"key": b"not base64!"}, 400),
        ({"method": "POST"}, 405),
    ]
    for kwargs, expected in cases:
        raw = await Raw.open(srv)
        status, headers, _ = await raw.request(**kwargs)  # type: ignore[arg-type]
        assert status == expected, kwargs
        if expected == 426:
            assert headers["sec-websocket-version"] == "13"
        assert await asyncio.wait_for(raw.reader.read(), 30) == b"", "the connection closes after a refusal"
        raw.close()
    raw = await Raw.open(srv)
    await raw.open_ws()
    raw.send(masked(TEXT, "héllo".encode()))
    assert await raw.frame() == (True, TEXT, "héllo".encode())
    raw.close()


async def test_refused_and_denied_handshakes(frame_server: Callable[..., ServerProcess]) -> None:
    srv = frame_server()
    raw = await Raw.open(srv)
    status, _, _ = await raw.request("/refuse")
    assert status == 403
    raw.close()
    raw = await Raw.open(srv)
    status, headers, body = await raw.request("/deny")
    assert (status, headers["x-why"], body) == (401, "test", b"no")
    raw.close()
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(srv.url.replace("http", "ws") + "/refuse"):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("bad, code", [
    (masked(TEXT, b"hi", mask=False), 1002),  # unmasked
    (masked(TEXT, b"hi", rsv=0x40), 1002),  # a reserved bit
    (masked(0x3, b"hi"), 1002),  # an unknown data opcode
    (masked(0xB, b"hi"), 1002),  # an unknown control opcode
    (masked(PING, b"hi", fin=False), 1002),  # a fragmented control frame
    (masked(PING, b"x" * 126), 1002),  # a control frame over 125 bytes
    (masked(CONT, b"hi"), 1002),  # a continuation with no message
    (masked(TEXT, b"a", fin=False) + masked(TEXT, b"b"), 1002),  # a new message inside one
    (masked(CLOSE, (1005).to_bytes(2, "big")), 1002),  # a close code no peer may send
    (masked(CLOSE, b"\x03"), 1002),  # a one-byte close payload
    (masked(TEXT, b"\xff\xfe"), 1007),  # not UTF-8
    (masked(TEXT, "€".encode()[:2], fin=False) + masked(CONT, b"x"), 1007),  # a character cut by a bad fragment
    (masked(CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1007),  # a close reason that is not UTF-8
])
async def test_protocol_violations_close_the_connection(frame_server: Callable[..., ServerProcess], bad: bytes, code: int) -> None:
    srv = frame_server()
    raw = await Raw.open(srv)
    await raw.open_ws()
    raw.send(masked(TEXT, b"before"))
    assert await raw.frame() == (True, TEXT, b"before")
    raw.send(bad)
    assert (await raw.closed_with())[0] == code
    raw.close()
    disconnects = (await get(srv, "/disconnects"))["disconnects"]
    assert [d[0] for d in disconnects] == [code]


async def test_fragments_with_control_frames_between_them(frame_server: Callable[..., ServerProcess]) -> None:
    raw = await Raw.open(frame_server())
    await raw.open_ws()
    text = "a€𝄞é" * 1000
    data = text.encode()
    cuts = [0, 1, 3, 5000, 5001, len(data)]  # some inside a character
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
    for i, piece in enumerate(pieces):
        raw.send(masked(TEXT if i == 0 else CONT, piece, fin=i == len(pieces) - 1))
        if i == 2:
            raw.send(masked(PING, b"between"))
            raw.send(masked(PONG, b"unasked"))  # ignored
    assert await raw.frame() == (True, PONG, b"between")
    assert await raw.frame() == (True, TEXT, data)
    raw.send(masked(PING, b""))
    assert await raw.frame() == (True, PONG, b"")
    raw.close()


async def test_close_handshakes(frame_server: Callable[..., ServerProcess]) -> None:
    srv = frame_server()
    raw = await Raw.open(srv)
    await raw.open_ws()
    raw.send(masked(CLOSE, (4001).to_bytes(2, "big") + "bye €".encode()))
    assert await raw.closed_with() == (4001, "bye €")  # the client's code and reason, echoed
    raw.close()
    raw = await Raw.open(srv)
    await raw.open_ws()
    raw.send(masked(CLOSE, b""))
    _fin, opcode, payload = await raw.frame()
    assert (opcode, payload) == (CLOSE, b"")
    raw.close()
    raw = await Raw.open(srv)
    await raw.open_ws("/close")  # the application closes: the server waits for the answer
    _fin, opcode, payload = await raw.frame()
    assert (opcode, payload) == (CLOSE, (4000).to_bytes(2, "big") + b"done")
    raw.send(masked(TEXT, b"after close"))  # dropped
    raw.send(masked(CLOSE, payload))
    assert await asyncio.wait_for(raw.reader.read(), 30) == b""
    raw.close()
    for _ in range(100):
        disconnects = (await get(srv, "/disconnects"))["disconnects"]
        if len(disconnects) == 3:
            break
        await asyncio.sleep(0.05)
    assert sorted(map(tuple, disconnects)) == [(1005, ""), (4000, "done"), (4001, "bye €")]


async def test_messages_over_the_size_limit(frame_server: Callable[..., ServerProcess]) -> None:
    srv = frame_server("--max-size", "1000")
    raw = await Raw.open(srv)
    await raw.open_ws()
    raw.send(masked(TEXT, b"x" * 1000))
    assert await raw.frame() == (True, TEXT, b"x" * 1000)
    raw.send(masked(TEXT, b"x" * 1001))
    assert (await raw.closed_with())[0] == 1009
    raw.close()
    raw = await Raw.open(srv)
    await raw.open_ws()
    raw.send(masked(TEXT, b"x" * 600, fin=False) + masked(CONT, b"x" * 600))
    assert (await raw.closed_with())[0] == 1009
    raw.close()
    raw = await Raw.open(frame_server())  # the default limit, 16 MiB: refused from the frame's header
    await raw.open_ws()
    raw.send(masked(TEXT, b"", fin=True)[:1] + bytes((0x80 | 127,)) + (16 * 1024 * 1024 + 1).to_bytes(8, "big") + MASK)
    assert (await raw.closed_with())[0] == 1009
    raw.close()


async def test_reading_pauses_while_the_application_does_not_receive(frame_server: Callable[..., ServerProcess]) -> None:
    """The server stops reading while messages wait for the application, so a client that sends
    faster than it takes is slowed by TCP; once it takes them, every message arrives in order."""
    srv = frame_server()
    sock = socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
    sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    sock.setblocking(False)
    message = masked(TEXT, b"m" * 60_000)
    sent, pending = 0, b""
    while sent < 2000:  # 120 MB: more than any socket buffers
        pending = pending or message
        if not select.select([], [sock], [], 2)[1]:
            break  # blocked: the server is not reading
        try:
            pending = pending[sock.send(pending):]
        except BlockingIOError:
            continue
        sent += not pending
    assert sent < 2000, "the server read everything while the application took nothing"
    assert not select.select([], [sock], [], 1)[1], "the server went on reading"
    await get(srv, "/release")
    loop = asyncio.get_running_loop()
    rest = loop.create_task(loop.sock_sendall(sock, pending))
    sent += bool(pending)
    echo = b"\x81\x7e" + (60_000).to_bytes(2, "big") + b"m" * 60_000
    received = bytearray()
    while len(received) < sent * len(echo):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 30)
        assert chunk
        received += chunk
    await rest
    assert received == echo * sent  # each message, whole, in order, nothing more
    sock.close()


async def test_websockets_client(frame_server: Callable[..., ServerProcess]) -> None:
    srv = frame_server()
    url = srv.url.replace("http", "ws") + "/echo"
    async with websockets.connect(url, max_size=None, subprotocols=["one", "two"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "one"
        for text in ("", "héllo", "x€" * 40_000, "a€𝄞é" * 300_000):
            await ws.send(text)
            assert await ws.recv() == text
        await ws.send(b"\x00\xff" * 1000)
        assert await ws.recv() == b"\x00\xff" * 1000
        await ws.ping(b"p")
        for i in range(500):  # many, sent before any is read back
            await ws.send(json.dumps(i))
        assert [json.loads(await ws.recv()) for _ in range(500)] == list(range(500))
    assert ws.close_code == 1000


async def test_keepalive_closes_a_client_that_answers_no_ping(frame_server: Callable[..., ServerProcess]) -> None:
    srv = frame_server()
    async with websockets.connect(srv.url.replace("http", "ws") + "/keepalive") as ws:  # answers pings itself
        await asyncio.sleep(1.5)  # some fifteen keep-alive rounds
        await ws.send("still here")
        assert await ws.recv() == "still here"
    raw = await Raw.open(srv)
    await raw.open_ws("/keepalive")
    pings = 0
    while True:
        _fin, opcode, payload = await raw.frame()
        if opcode != PING:
            break
        pings += 1
    assert (opcode, pings) == (CLOSE, 2)
    assert int.from_bytes(payload[:2], "big") == 1011
    raw.close()


async def test_graceful_stop_closes_with_1012(frame_server: Callable[..., ServerProcess]) -> None:
    srv = frame_server()
    async with websockets.connect(srv.url.replace("http", "ws") + "/echo") as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        os.kill(srv.proc.pid, signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
    assert ws.close_code == 1012
    assert srv.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once stopped
    assert "Traceback" not in srv.log(), srv.log()


class Written:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(bytes(data))


def test_a_message_written_to_many_connections_is_framed_once_and_right() -> None:
    """write() keeps the frames of the last bytes object it framed: the same object to another
    connection gets them again; another message, or a bytearray changed in place, is framed
    afresh."""
    import uvicorn

    from server.api.ws_frames import FRAME_BYTES, text_frames
    from server.api.ws_protocol import WebSocketProtocol

    config = uvicorn.Config(app=None)
    first, second = (WebSocketProtocol(config, None, {}) for _ in range(2))
    first.transport, second.transport = Written(), Written()  # type: ignore[assignment]
    message = b'{"type":"Transition"}'
    first.write(message)
    second.write(message)
    assert WebSocketProtocol._framed[0] is message
    other = b'{"type":"Ping"}'
    second.write(other)
    changing = bytearray(b"abc")
    first.write(changing)  # type: ignore[arg-type]
    changing[:] = b"xyz!"
    first.write(changing)  # type: ignore[arg-type]
    large = b"x" * (FRAME_BYTES + 1)
    first.write(large)
    assert WebSocketProtocol._framed[0] is not large  # only one-frame messages are kept
    assert first.transport.data == [text_frames(message), text_frames(b"abc"), text_frames(b"xyz!"),  # type: ignore[attr-defined]
                                    text_frames(large)]
    assert second.transport.data == [text_frames(message), text_frames(other)]  # type: ignore[attr-defined]
    assert text_frames(message) == bytes((0x81, len(message))) + message


def test_accept_value_is_the_rfc_example() -> None:
    assert accept_value(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert len(base64.b64decode(KEY)) == 16


@pytest.mark.parametrize("compression", [False, True], ids=["own-protocol", "RIPPLE_WS_COMPRESSION"])
async def test_the_sync_route_under_either_protocol(start_server: Callable[..., ServerProcess], compression: bool) -> None:
    """Compression off: Ripple's own protocol, which negotiates no extension; on: uvicorn's
    websockets-sansio with permessage-deflate. The sync protocol works the same over both."""
    server = start_server("serve", extra_env={"RIPPLE_WS_COMPRESSION": "1"} if compression else None)
    async with websockets.connect(server.url.replace("http://", "ws://") + "/api/sync", compression="deflate") as ws:
        assert bool(ws.protocol.extensions) is compression
        await ws.send(json.dumps({"type": "Connect", "sessionId": "00000000-0000-4000-8000-000000000000"}))
        await ws.send(json.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
            {"type": "Add", "queryId": 0, "udfPath": "counters:get", "args": [{"name": "either"}]}]}))
        transition = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert transition["type"] == "Transition"
        assert transition["modifications"][0]["value"] == 0
    assert "Traceback" not in server.log(), server.log()
