"""Websocket frames written straight into the connection: the fan-out fast path of
server/api/sync_ws.py, and the one place in Ripple that knows uvicorn's internals.

Sending a message through ASGI (an awaited `send`, Starlette's state checks, a message dict,
the server's `send` through its websocket protocol object) costs several times more than
writing the frame to the transport. Fanning one result out to a thousand clients, that
difference is the server's time. `frame_writer(send)` gives what writes whole text messages to
one connection, synchronously, when the transport can take them (a `TextWriter`):

- Under Ripple's own websocket protocol (server/api/ws_protocol.py, the default: compression
  off), the connection itself: its `writable_now`, `wait_writable` and `write` are a documented
  part of that protocol, no internals of anyone's.
- Under uvicorn's websockets-sansio protocol (RIPPLE_WS_COMPRESSION on: permessage-deflate is
  its), a `FrameWriter`, which relies on uvicorn's internals as below.

What a `FrameWriter` relies on, verified with uvicorn 0.54.0 (pyproject.toml pins
`uvicorn>=0.54,<0.55`, `VERIFIED_UVICORN` below) and websockets 17.4, under httptools and uvloop
as server/runner.py runs it; tests/test_uvicorn_frames.py fails when the installed uvicorn is
outside that range or no longer behaves so:

- uvicorn runs with `ws="websockets-sansio"` (`WS_IMPLEMENTATION`; server/runner.py), and the
  ASGI `send` it hands the application is the bound method `send` of the connection's
  `uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`;
- that object's attributes `transport` (the asyncio transport, set once in `connection_made`),
  `writable` (an `asyncio.Event`: cleared by `pause_writing`, set by `resume_writing` and by
  `connection_lost`), and the flags `handshake_complete`, `disconnected` and `close_sent`;
- its `response`, the handshake's response, which it reads only while accepting: `frame_writer`
  drops it (its headers cost an idle connection about a kilobyte);
- its `conn`, a websockets sans-I/O `ServerProtocol`: `conn.extensions` (the extensions
  negotiated in the handshake, set before the application runs; read once per connection).
  Without extensions, frames are built here (RFC 6455 5.2, unmasked) and `conn` never sees
  them; every message is complete (FIN on its last frame), so uvicorn's own frames through
  `conn` (pings, close) never land inside one. With an extension (permessage-deflate,
  `ws_per_message_deflate=True`), every frame goes through `conn.send_text(data, fin=...)`,
  `conn.send_continuation(data, fin=...)` and `conn.data_to_send()`, so the extension encodes
  them in order.

When the `send` comes from uvicorn but its protocol object lacks any of this (another `ws`
implementation, or a uvicorn that changed), `frame_writer` logs one WARNING per process naming
the uvicorn version, and the caller sends through ASGI. Under any other ASGI server it returns
None without a word: ASGI sends are the ordinary path there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any, Protocol

from server.api.ws_frames import FRAME_BYTES, fragments, frame_header, text_frames
from server.api.ws_protocol import WebSocketProtocol, writer_of

__all__ = ["FRAME_BYTES", "FrameWriter", "TextWriter", "fragments", "frame_header", "frame_writer", "ws_implementation"]

log = logging.getLogger("ripple.sync")

WS_IMPLEMENTATION = "websockets-sansio"
VERIFIED_UVICORN = ">=0.54,<0.55"

PROTOCOL_ATTRIBUTES = ("transport", "writable", "handshake_complete", "disconnected", "close_sent", "conn")
CONN_ATTRIBUTES = ("extensions", "send_text", "send_continuation", "data_to_send")

_warned = False


class TextWriter(Protocol):
    """What the fan-out fast path writes through: `FrameWriter` here, or a connection of Ripple's
    own protocol (server/api/ws_protocol.py)."""

    def writable_now(self) -> bool: ...

    async def wait_writable(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def keepalive(self, message: bytes | None = None) -> None: ...


def ws_implementation(compression: bool = False) -> type[WebSocketProtocol] | str:
    """The `ws` setting for uvicorn.Config: Ripple's own protocol (server/api/ws_protocol.py),
    unless websocket compression is on: then uvicorn's sans-I/O implementation, whose
    permessage-deflate the fast path here writes through, or uvicorn's older websockets
    implementation where that does not exist (no fast path then)."""
    if not compression:
        return WebSocketProtocol
    try:
        from uvicorn.protocols.websockets import websockets_sansio_impl  # noqa: F401
    except ImportError:
        return "websockets"
    return WS_IMPLEMENTATION


class FrameWriter:
    """Writes text messages to one accepted websocket of uvicorn's websockets-sansio protocol.
    Made by `frame_writer` after the handshake."""

    __slots__ = ("_conn", "_encoded", "_proto", "_transport")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._conn = proto.conn
        self._transport = proto.transport
        self._encoded = bool(proto.conn.extensions)  # negotiated in the handshake, fixed since

    def writable_now(self) -> bool:
        """The connection is open and its transport's buffer is under the high-water mark."""
        proto = self._proto
        return (
            proto.handshake_complete and proto.writable.is_set()
            and not proto.disconnected and not proto.close_sent
        )

    async def wait_writable(self) -> bool:
        """Wait until the transport can take more; False when the connection is gone instead."""
        proto = self._proto
        await proto.writable.wait()
        return not (proto.disconnected or proto.close_sent)

    def keepalive(self, message: bytes | None = None) -> None:
        """No ping: uvicorn's protocol pings by itself (`ws_ping_interval`); `message` is written."""
        if message is not None:
            self.write(message)

    def write(self, data: bytes) -> None:
        """One text message (UTF-8 `data`), in frames of at most FRAME_BYTES. Only when
        `writable_now()` (or after `wait_writable()` returned True)."""
        if self._encoded:  # e.g. permessage-deflate: let the protocol encode the frames
            conn = self._conn
            pieces = [data] if len(data) <= FRAME_BYTES else fragments(data)
            last = len(pieces) - 1
            for i, piece in enumerate(pieces):
                if i == 0:
                    conn.send_text(piece, fin=i == last)
                else:
                    conn.send_continuation(piece, fin=i == last)
            self._transport.write(b"".join(conn.data_to_send()))
        else:  # unmasked text frames, as the protocol would write them
            self._transport.write(text_frames(data))


def frame_writer(send: Callable[[Any], Awaitable[None]]) -> TextWriter | None:
    """What writes frames to the connection behind the server's ASGI `send` (call it after the
    websocket is accepted): the connection itself under Ripple's own protocol, a FrameWriter
    under uvicorn's websockets-sansio; else None: then send through ASGI."""
    own = writer_of(send)
    if own is not None:
        return own
    proto: Any = getattr(send, "__self__", None)
    missing = [name for name in PROTOCOL_ATTRIBUTES if not hasattr(proto, name)]
    if not missing:
        missing = [f"conn.{name}" for name in CONN_ATTRIBUTES if not hasattr(proto.conn, name)]
    if not missing:
        if getattr(proto, "handshake_complete", False) and hasattr(proto, "response"):
            proto.response = None  # read only while accepting; kept for the connection's life otherwise
        return FrameWriter(proto)
    owner = type(proto) if proto is not None else send
    if getattr(owner, "__module__", "").startswith("uvicorn."):
        _warn_once(owner, missing)
    return None


def _warn_once(owner: Any, missing: list[str]) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    try:
        version = metadata.version("uvicorn")
    except metadata.PackageNotFoundError:
        version = "(version unknown)"
    log.warning(
        "uvicorn %s: its websocket protocol %s.%s lacks %s, which the websocket fan-out fast path "
        "writes through (verified with uvicorn %s, ws=%r); websocket fan-out falls back to ASGI "
        "sends, which cost several times more per message",
        version, owner.__module__, getattr(owner, "__qualname__", owner), ", ".join(missing),
        VERIFIED_UVICORN, WS_IMPLEMENTATION,
    )
