"""Ripple's own websocket server protocol for uvicorn: RFC 6455 (without extensions) behind an
ASGI interface, small enough per connection that thousands of idle clients cost little.

Longer than 400 lines because the handshake, the frame reader, the close handshake, flow
control both ways and the ASGI receive/send are one state machine over one connection's
state (`__slots__` below); split into objects, each would reach into the others' state, and
each object would cost every idle connection its own header (the framing itself, without
I/O, is server/api/ws_frames.py).

server/runner.py passes `WebSocketProtocol` to uvicorn as its `ws` protocol class when
websocket compression is off (with RIPPLE_WS_COMPRESSION, permessage-deflate is uvicorn's
websockets-sansio protocol's, and server/api/uvicorn_frames.py writes through that). The
contract with uvicorn 0.54's HTTP protocols (httptools_impl.py, h11_impl.py): on an upgrade
request they construct `WebSocketProtocol(config=, server_state=, app_state=)`, call
`connection_made(transport)`, feed the request head re-serialized to `data_received`, then
hand the transport over (`set_protocol`); the server calls `shutdown()` on each of
`server_state.connections` at a graceful stop (close 1012), cancels `server_state.tasks` when
that takes too long, and waits until `connections` is empty.

What a connection holds (`__slots__`, no instance dict): the transport, its state, the bytes
read and not yet parsed (none when idle), the parts of a fragmented message while it arrives,
the messages parsed and not yet received by the application (a deque only while there are
any; reading pauses meanwhile, so a client that sends faster than the application takes is
slowed by TCP), a future only while the application waits for a message or for the transport
to drain. The handshake's request is parsed into the ASGI scope and not kept; the key for
Sec-WebSocket-Accept only until the application accepts. No timers: keep-alive is the sync
protocol's one timer per process (server/api/sync_ws.py), which calls `keepalive` on each
connection (a ping frame; a client that answered none of the last two is closed), so
uvicorn's `ws_ping_interval`/`ws_ping_timeout` do not apply; the only timer of a connection is
the close handshake's (CLOSE_TIMEOUT) while it runs.

The fan-out fast path writes pre-built text frames straight to the transport through the
`TextWriter` methods (`writable_now`, `wait_writable`, `write`, and `keepalive` for the
process-wide keep-alive timer); `writer_of(send)` finds them behind the ASGI `send` of a
connection of this protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from uvicorn.protocols.utils import ClientDisconnected, get_local_addr, get_remote_addr, is_ssl

from server.api.ws_frames import (
    BINARY,
    CLOSE,
    CONT,
    FRAME_BYTES,
    PING,
    PONG,
    TEXT,
    Fail,
    Frame,
    accept_value,
    close_payload,
    frame,
    handshake_refusal,
    header,
    http_response,
    parse_close,
    parse_request,
    read_frame,
    text_frames,
)

log = logging.getLogger("uvicorn.error")

CLOSE_TIMEOUT = 10.0  # seconds for the client to answer our close frame before the TCP close
KEEPALIVE_MISSES = 2  # keep-alive pings unanswered when the next is due: the client is gone (1011)
EMPTY_PING = frame(PING, b"")
EMPTY_PONG = b"\x8a\x80"  # a client's answer to it: FIN + pong, masked, no payload (then the mask)
MAX_HEAD_BYTES = 64 * 1024

# States: the request head not read yet; handed to the application, not accepted yet; open;
# our close frame sent, the client's not received yet; closed (or closing the transport).
HANDSHAKE, CONNECTING, OPEN, CLOSING, CLOSED = range(5)

# The scope's ASGI extensions, the same (never changed) dict for every connection: two dicts
# each would cost an idle connection some 230 bytes.
EXTENSIONS: dict[str, Any] = {"websocket.http.response": {}}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class WebSocketProtocol(asyncio.Protocol):
    __slots__ = ("_app_state", "_buf", "_closed", "_closer", "_config", "_drain", "_fragments", "_fragments_size",
                 "_inbox", "_key", "_read_paused", "_response", "_server_state", "_state", "_unanswered",
                 "_waiter", "_write_paused", "transport")

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._state = HANDSHAKE
        self._buf: bytes | bytearray | None = None  # read, not parsed yet
        self._fragments: list[bytes] | None = None  # of a fragmented message, opcode first
        self._fragments_size = 0
        self._inbox: deque[dict[str, Any]] | None = None  # parsed, not received by the application
        self._waiter: asyncio.Future[None] | None = None  # while the application waits in receive()
        self._closed: tuple[int, str] | None = None  # the disconnect's code and reason, once known
        self._closer: asyncio.TimerHandle | None = None  # while the close handshake runs
        self._key: bytes | None = None  # Sec-WebSocket-Key, until accepted
        self._response: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None  # websocket.http.response
        self._read_paused = False
        self._write_paused = False
        self._unanswered = 0  # keep-alive pings sent and not answered
        self._drain: asyncio.Future[None] | None = None  # while someone waits for the transport

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)
        self._state = CLOSED
        if self._closed is None:
            self._closed = (1006, "")
        self._buf = self._fragments = None
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        self._wake()
        self.resume_writing()  # asyncio never resumes the writing of a transport it lost

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == CLOSED:
            return
        buf = self._buf
        if buf is None and len(data) == 6 and data.startswith(EMPTY_PONG) and state == OPEN:
            self._unanswered = 0  # the answer to a keep-alive ping, alone: no parsing (a thousand at once)
            return
        if buf is None:
            buf = data
        else:
            if not isinstance(buf, bytearray):
                buf = bytearray(buf)
            buf += data
        self._buf = buf
        if state == HANDSHAKE:
            self._handshake()
        elif state == CONNECTING:  # frames wait for the accept; nothing more until then
            self._pause_reading()
        else:
            self._parse()

    def shutdown(self) -> None:
        """uvicorn stops gracefully: close 1012 (service restart), or 500 before the accept."""
        state = self._state
        if state == OPEN:
            self._close_with(1012, "")
        elif state == CONNECTING and self._response is None:
            self._respond(500, [], b"")
        self._state = CLOSED
        self.transport.close()

    # -- the opening handshake --------------------------------------------------------------------

    def _handshake(self) -> None:
        buf = self._buf
        assert buf is not None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                self._respond(431, [], b"")
                self._state = CLOSED
                self.transport.close()
            return
        request = parse_request(bytes(buf[:end]))
        self._buf = bytes(buf[end + 4:]) or None  # frames sent early: parsed once accepted
        refusal = handshake_refusal(request)
        if refusal is not None:
            self._respond(*refusal)
            self._state = CLOSED
            self.transport.close()
            return
        self._key = header(request.headers, b"sec-websocket-key")
        self._state = CONNECTING
        config, transport = self._config, self.transport
        raw_path, _, query = request.target.partition("?")
        root_path = config.root_path
        subprotocols = [token.strip() for value in [header(request.headers, b"sec-websocket-protocol")] if value
                        for token in value.decode("latin-1").split(",")]
        scope = {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(transport) else "ws",
            "server": get_local_addr(transport),
            "client": get_remote_addr(transport),
            "root_path": root_path,
            "path": root_path + unquote(raw_path),
            "raw_path": root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": request.headers,
            "subprotocols": subprotocols,
            "state": self._app_state.copy(),
            "extensions": EXTENSIONS,
        }
        self._inbox = deque([{"type": "websocket.connect"}])
        self._server_state.tasks.add(asyncio.get_running_loop().create_task(self._run(scope)))

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            try:
                await self._config.loaded_app(scope, self.receive, self.send)
            finally:  # here rather than in a done callback: one object less per connection
                self._server_state.tasks.discard(asyncio.current_task())
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:  # uvicorn's graceful shutdown ran out of time
            self._abort()
            raise
        except Exception:
            log.exception("Exception in ASGI application\n")
            if self._state == CONNECTING and self._response is None:
                self._respond(500, [], b"")
        else:
            if self._state == CONNECTING and self._response is None:
                log.error("ASGI callable returned without completing handshake.")
                self._respond(500, [], b"")
        if self._state == OPEN:  # the application returned without closing: a normal closure
            self._close_with(1000, "")
        if self._closer is None:
            self._abort()

    def _respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """An HTTP response instead of the websocket (the connection then closes)."""
        names = {name.lower() for name, _ in headers}
        extra = [(b"connection", b"close"), (b"content-length", str(len(body)).encode()),
                 (b"content-type", b"text/plain; charset=utf-8")]
        headers = [*self._server_state.default_headers, *headers, *(h for h in extra if h[0] not in names)]
        if not any(name.lower() == b"date" for name, _ in headers):
            headers.insert(0, (b"date", formatdate(usegmt=True).encode()))
        self._write(http_response(status, _phrase(status), headers, body))

    def _accept(self, message: dict[str, Any]) -> None:
        key, self._key = self._key, None
        assert key is not None
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", accept_value(key)),
                   *self._server_state.default_headers, *message.get("headers", ())]
        if message.get("subprotocol"):
            headers.append((b"sec-websocket-protocol", message["subprotocol"].encode()))
        self._write(http_response(101, "Switching Protocols", headers))
        self._state = OPEN
        self._resume_reading()
        if self._buf:
            self._parse()

    # -- reading ----------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf, pos = self._buf, 0
        assert buf is not None
        try:
            while self._state in (OPEN, CLOSING):
                got = read_frame(buf, pos, self._config.ws_max_size)
                if got is None:
                    break
                received, pos = got
                self._on_frame(received)
        except Fail as exc:
            self._buf = self._fragments = None
            self._fail(exc.code, exc.reason)
            return
        if self._state == CLOSED:
            self._buf = None
        elif pos:
            self._buf = buf[pos:] or None

    def _on_frame(self, received: Frame) -> None:
        opcode, payload = received.opcode, received.payload
        if opcode == PING:
            if self._state == OPEN:
                self._write(frame(PONG, payload))
            return
        if opcode == PONG:
            self._unanswered = 0
            return
        if opcode == CLOSE:
            self._on_close(*parse_close(payload))
            return
        fragments = self._fragments
        if opcode == CONT:
            if fragments is None:
                raise Fail(1002, "a continuation frame outside a fragmented message")
            fragments.append(payload)
            self._fragments_size += len(payload)
        elif fragments is not None:
            raise Fail(1002, "a new message inside a fragmented one")
        elif not received.fin:
            self._fragments = fragments = [bytes((opcode,)), payload]
            self._fragments_size = len(payload)
        max_size = self._config.ws_max_size
        if fragments is not None:
            if max_size is not None and self._fragments_size > max_size:
                raise Fail(1009, f"message over the {max_size}-byte limit")
            if not received.fin:
                return
            self._fragments = None
            opcode, payload = fragments[0][0], b"".join(fragments[1:])
        if self._state != OPEN:  # after our close frame: dropped
            return
        message: dict[str, Any]
        if opcode == TEXT:
            try:
                message = {"type": "websocket.receive", "text": payload.decode()}
            except UnicodeDecodeError:
                raise Fail(1007, "a text message that is not UTF-8") from None
        else:
            message = {"type": "websocket.receive", "bytes": payload}
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(message)
        self._pause_reading()
        self._wake()

    def _on_close(self, code: int, reason: str) -> None:
        if self._state == CLOSING:  # the answer to ours: the closing handshake is complete
            self._abort()
            return
        # The client's close: answer with its code and reason (5.5.1), then close TCP (7.1.1).
        self._write(frame(CLOSE, close_payload(None if code == 1005 else code, reason)))
        self._closed = (code, reason)
        self._abort()

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: close with `code` without waiting for an answer (7.1.7)."""
        if self._state == OPEN:
            self._close_with(code, reason)
        elif self._closed is None:
            self._closed = (code, reason)
        self._abort()

    def _pause_reading(self) -> None:
        if not self._read_paused and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI -------------------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        while True:
            inbox = self._inbox
            if inbox:
                message = inbox.popleft()
                if not inbox:
                    self._inbox = None
                    if self._state in (OPEN, CLOSING):
                        self._resume_reading()
                return message
            if self._closed is not None:
                code, reason = self._closed
                return {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        kind, state = message["type"], self._state
        if state == CONNECTING and self._response is None:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":  # refused before the accept: 403 (ASGI)
                self._respond(403, [], b"")
                self._refused()
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
                self._response = (status, list(message.get("headers", ())), b"")
            else:
                raise RuntimeError("Expected ASGI message 'websocket.accept', 'websocket.close' or "
                                   f"'websocket.http.response.start' but got '{kind}'.")
        elif state == CONNECTING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'.")
            assert self._response is not None
            status, headers, body = self._response
            self._response = (status, headers, body + message.get("body", b""))
            if not message.get("more_body", False):
                self._respond(status, headers, self._response[2])
                self._refused()
        elif state == OPEN:
            if kind == "websocket.send":
                if self._write_paused and not await self.wait_writable():
                    raise ClientDisconnected()
                text = message.get("text")
                if text is not None:
                    self._write(text_frames(text.encode()))
                elif message.get("bytes") is not None:
                    self._write(frame(BINARY, message["bytes"]))
            elif kind == "websocket.close":
                self._close_with(message.get("code", 1000), message.get("reason") or "")
                self._resume_reading()  # for the client's answer
                self._closer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'.")
        elif kind == "websocket.close" and state in (CLOSING, CLOSED):
            return  # the connection is closing already
        elif state == CLOSED:
            raise ClientDisconnected()
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close'.")

    def _refused(self) -> None:
        self._response = None
        if self._closed is None:
            self._closed = (1006, "")
        self._abort()

    def _close_with(self, code: int, reason: str) -> None:
        """Send our close frame; the application hears of it as the disconnect."""
        self._write(frame(CLOSE, close_payload(code, reason)))
        if self._closed is None:
            self._closed = (code, reason)
        self._state = CLOSING
        self._inbox = None
        self._wake()

    def _abort(self) -> None:
        self._state = CLOSED
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        self._wake()
        self.transport.close()

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    # -- TextWriter: the fan-out fast path ----------------------------------------------------------

    def writable_now(self) -> bool:
        """Open, and the transport's buffer under its high-water mark."""
        return self._state == OPEN and not self._write_paused

    async def wait_writable(self) -> bool:
        """Wait until the transport can take more; False when the connection is closing instead."""
        while self._write_paused and self._state == OPEN:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drain)
        return self._state == OPEN

    def keepalive(self, message: bytes | None = None) -> None:
        """A websocket ping, from the application's one timer for all connections (sync_ws's
        `Connections`, every PING_INTERVAL) instead of a timer per connection; with
        `message`, that text message too, in the same write (only when `writable_now()`).
        When the last KEEPALIVE_MISSES pings are still unanswered, the client is taken for
        gone (a dead peer TCP would take many minutes to notice): close 1011, as uvicorn's
        own keep-alive does. Not counted while reading is paused here (the answer may be
        waiting behind messages the application has not taken)."""
        if self._state != OPEN:
            return
        if self._unanswered >= KEEPALIVE_MISSES and not self._read_paused:
            self._fail(1011, "keepalive ping timeout")
            return
        self._unanswered += not self._read_paused
        self._write(EMPTY_PING if message is None else EMPTY_PING + text_frames(message))

    # The last message framed by `write`, and its frames. A fan-out writes the same bytes
    # object to every client in the same state, one after another (the subscription manager's
    # publish), so the frames are built once per message, not once per client. Compared by
    # identity (no hashing), so only immutable `bytes` are kept, and only messages of one frame,
    # so that what it holds alive is small.
    _framed: tuple[bytes | None, bytes] = (None, b"")

    def write(self, data: bytes) -> None:
        """One text message (UTF-8 `data`), pre-built into frames here. Only when `writable_now()`
        (or after `wait_writable()` returned True)."""
        last, frames = WebSocketProtocol._framed
        if data is not last:
            frames = text_frames(data)
            if type(data) is bytes and len(data) <= FRAME_BYTES:
                WebSocketProtocol._framed = (data, frames)
        self.transport.write(frames)


def writer_of(send: Callable[[Any], Awaitable[None]]) -> WebSocketProtocol | None:
    """The connection of this protocol behind an ASGI `send`, as the fast path's writer."""
    proto = getattr(send, "__self__", None)
    return proto if isinstance(proto, WebSocketProtocol) else None
