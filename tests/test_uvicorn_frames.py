"""The websocket fan-out fast path (server/api/uvicorn_frames.py) against the uvicorn that is
installed: a real uvicorn process with Ripple's uvicorn settings (tests/frame_server.py), real
websocket clients of the `websockets` library. These tests are meant to fail loudly when a
uvicorn release changes what the fast path writes through."""

from __future__ import annotations

import asyncio
import json
import socket
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import metadata

import httpx
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from server.api.uvicorn_frames import FRAME_BYTES, VERIFIED_UVICORN, fragments

from conftest import ROOT, ServerProcess

SMALL = "héllo, wörld €"
MEDIUM = "ü" * 200  # a 16-bit payload length
LARGER = "x€" * 20_000  # 80,000 bytes: a 64-bit payload length, one frame
UNIT = "a€𝄞é"  # 1 + 3 + 4 + 2 bytes
BIG = UNIT * (FRAME_BYTES * 5 // 2 // 10)  # 2.5 MiB: three frames


def test_installed_uvicorn_is_the_verified_one() -> None:
    installed = metadata.version("uvicorn")
    assert installed in SpecifierSet(VERIFIED_UVICORN), (
        f"uvicorn {installed} is installed, but the websocket fast path (server/api/uvicorn_frames.py) "
        f"was verified with uvicorn{VERIFIED_UVICORN} only: check what its docstring lists against "
        "this uvicorn, then update VERIFIED_UVICORN and the pin in pyproject.toml")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "uvicorn"]
    assert pin.specifier == SpecifierSet(VERIFIED_UVICORN), "pyproject.toml pins another uvicorn range"


@given(st.text(alphabet=st.sampled_from("a€𝄞éz\x00"), max_size=200), st.integers(4, 40))
def test_fragments_cut_only_between_utf8_sequences(text: str, size: int) -> None:
    data = text.encode()
    pieces = fragments(data, size)
    assert b"".join(pieces) == data
    assert all(0 < len(piece) <= size for piece in pieces) or pieces == [b""]
    for piece in pieces:
        piece.decode()  # each piece is valid UTF-8 on its own


def test_the_big_message_has_a_frame_boundary_inside_a_utf8_sequence() -> None:
    data = BIG.encode()
    assert len(data) > 2 * FRAME_BYTES
    assert data[FRAME_BYTES] & 0xC0 == 0x80  # a naive cut would split a character


# -- a real uvicorn -------------------------------------------------------------------------------


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/frames"


def request(text: str, repeat: int = 1) -> str:
    return json.dumps({"repeat": repeat, "text": text})


class FrameClient:
    """The `websockets` library's sans-I/O client over a socket with a small receive buffer,
    read only when asked: shows every frame as the server wrote it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.events: list[object] = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, deflate: bool = False) -> AsyncIterator[FrameClient]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        uri = parse_uri(url)
        await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        protocol = ClientProtocol(uri, extensions=[ClientPerMessageDeflateFactory()] if deflate else None, max_size=None)
        client = cls(reader, writer, protocol)
        try:
            protocol.send_request(protocol.connect())
            await client._flush()
            response = await client._event()
            assert isinstance(response, Response) and response.status_code == 101, response
            yield client
        finally:
            writer.close()

    async def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            self.writer.write(chunk)
        await self.writer.drain()

    async def _event(self) -> object:
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(1 << 16), 30)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self.events.extend(self.protocol.events_received())
            await self._flush()  # e.g. the answer to a ping
            assert data or self.events, "the server closed the connection"
        return self.events.pop(0)

    async def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self._flush()

    async def message(self) -> list[Frame]:
        """The frames of the next data message."""
        frames: list[Frame] = []
        while not frames or not frames[-1].fin:
            event = await self._event()
            assert isinstance(event, Frame), event
            if event.opcode not in (Opcode.PING, Opcode.PONG):
                frames.append(event)
        return frames


def assert_frames_of(frames: list[Frame], text: str) -> None:
    data = text.encode()
    assert b"".join(frame.data for frame in frames) == data
    assert [frame.opcode for frame in frames] == [Opcode.TEXT] + [Opcode.CONT] * (len(frames) - 1)
    assert [frame.fin for frame in frames] == [False] * (len(frames) - 1) + [True]
    for frame in frames:
        assert len(frame.data) <= FRAME_BYTES
        bytes(frame.data).decode()  # no frame ends inside a character


@pytest.mark.e2e
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
async def test_fast_path_engages_and_frames_arrive_intact(frame_server: Callable[..., ServerProcess], deflate: bool) -> None:
    server = frame_server(*(["--deflate"] if deflate else []))
    async with websockets.connect(ws_url(server), max_size=None, compression="deflate" if deflate else None) as ws:
        assert json.loads(await ws.recv()) == {"fast": True}, "the fast path did not engage: see the server log"
        assert bool(ws.protocol.extensions) is deflate
        for text in (SMALL, MEDIUM, LARGER, BIG):
            await ws.send(request(text, repeat=2))
            assert await ws.recv() == text
            assert await ws.recv() == text
    async with FrameClient.connect(ws_url(server), deflate=deflate) as client:
        assert json.loads(b"".join(f.data for f in await client.message())) == {"fast": True}
        assert bool(client.protocol.extensions) is deflate
        for text in (SMALL, MEDIUM, LARGER):
            await client.send(request(text))
            assert [f.data for f in await client.message()] == [text.encode()]  # one frame
        await client.send(request(BIG))
        frames = await client.message()
        assert len(frames) == 3
        assert_frames_of(frames, BIG)
    log = server.log()
    assert "WARNING" not in log and "ERROR" not in log and "Traceback" not in log, log


@pytest.mark.e2e
async def test_fast_path_waits_for_a_client_that_does_not_read(frame_server: Callable[..., ServerProcess]) -> None:
    """Writes stop at the transport's high-water mark (uvicorn's `writable`) and go on when the
    client reads again; nothing is lost or reordered."""
    server = frame_server()
    async with FrameClient.connect(ws_url(server)) as client, httpx.AsyncClient(base_url=server.url) as http:
        assert json.loads(b"".join(f.data for f in await client.message())) == {"fast": True}
        await client.send(request(BIG, repeat=20))  # 50 MiB: far more than the socket buffers hold
        for _ in range(3000):  # the client reads nothing until the server had to wait
            if (await http.get("/waits")).json()["waits"] > 0:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the server never waited for the transport")
        for _ in range(20):
            assert_frames_of(await client.message(), BIG)
        await client.send(request(SMALL))
        assert [f.data for f in await client.message()] == [SMALL.encode()]


@pytest.mark.e2e
async def test_without_the_internals_it_warns_once_and_sends_through_asgi(frame_server: Callable[..., ServerProcess]) -> None:
    """uvicorn's older websockets implementation has none of what the fast path writes through:
    one WARNING naming the uvicorn version, then ASGI sends that work."""
    server = frame_server("--ws", "websockets")
    for _ in range(2):
        async with websockets.connect(ws_url(server), max_size=None) as ws:
            assert json.loads(await ws.recv()) == {"fast": False}
            for text in (SMALL, BIG):
                await ws.send(request(text))
                assert await ws.recv() == text
    warnings = [line for line in server.log().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, server.log()
    assert f"uvicorn {metadata.version('uvicorn')}:" in warnings[0]
    assert "falls back to ASGI sends" in warnings[0]
