"""RFC 6455 without I/O: the opening handshake's checks and answer, reading client frames,
building server frames. server/api/ws_protocol.py pumps bytes through these; the fan-out fast
path (server/api/uvicorn_frames.py) builds its frames with `text_frames`.

Client frames are masked (5.3), control frames short and unfragmented (5.5), reserved bits
zero without an extension (5.2: none is negotiated here), a close frame's code one a peer may
send (7.4) and its reason UTF-8 (5.5.1). Each violation is a `Fail` carrying the close code the
connection then ends with (7.4.1): 1002 protocol error, 1007 invalid data, 1009 too big.
"""

from __future__ import annotations

import base64
import hashlib
from typing import NamedTuple

try:
    from websockets.speedups import apply_mask  # C: several GB/s
except ImportError:  # pragma: no cover - the pure-Python one of the same library
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (CONT, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)

# Larger messages go out as several frames of one message (RFC 6455 5.4): the official PyPI client
# (Rust, tungstenite) refuses any single frame over 16 MiB and then reconnects forever.
FRAME_BYTES = 1024 * 1024

# Close codes a peer may send (7.4.1, 7.4.2; IANA registry): 1004-1006 and 1015 are reserved,
# 1016-2999 unassigned, 3000-4999 for libraries and applications.
_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


class Fail(Exception):
    """The client broke the protocol: close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Frame(NamedTuple):
    fin: bool
    opcode: int
    payload: bytes


# -- the opening handshake (4.2) -------------------------------------------------------------------


class Request(NamedTuple):
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[bytes, bytes]]  # names lower-case, in order


def parse_request(head: bytes) -> Request:
    """The request line and headers of an HTTP/1.1 request head (up to, without, the blank
    line). The head was parsed once already (uvicorn's HTTP protocol re-serializes it)."""
    lines = head.split(b"\r\n")
    method, target, _version = lines[0].decode("latin-1").split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return Request(method, target, headers)


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The values of header `name` (lower-case), comma-joined as one (RFC 9110 5.3)."""
    values = [value for key, value in headers if key == name]
    return b", ".join(values) if values else None


def tokens(value: bytes | None) -> list[str]:
    return [token.strip().lower() for token in value.decode("latin-1").split(",")] if value else []


def handshake_refusal(request: Request) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """Why `request` is no websocket opening handshake this server accepts, as an HTTP response
    (status, headers, body); None when it is one."""
    headers = request.headers
    if request.method != "GET":
        return 405, [(b"allow", b"GET")], b"a websocket handshake is a GET request"
    if "websocket" not in tokens(header(headers, b"upgrade")) or "upgrade" not in tokens(header(headers, b"connection")):
        return 400, [], b"missing Upgrade: websocket or Connection: Upgrade"
    if header(headers, b"sec-websocket-version") != b"13":
        return 426, [(b"sec-websocket-version", b"13")], b"unsupported Sec-WebSocket-Version"
    key = header(headers, b"sec-websocket-key")
    try:
        valid = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        return 400, [], b"missing or invalid Sec-WebSocket-Key"
    return None


def accept_value(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for the client's Sec-WebSocket-Key (4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def http_response(status: int, phrase: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    head = [f"HTTP/1.1 {status} {phrase}".encode()]
    head += [name + b": " + value for name, value in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# -- frames (5.2) ----------------------------------------------------------------------------------


def read_frame(buf: bytes | bytearray, pos: int, max_size: int | None) -> tuple[Frame, int] | None:
    """The client frame starting at `buf[pos]` and the position after it; None while it is not
    all there. Raises `Fail` on a frame the protocol forbids or larger than `max_size`."""
    end = len(buf)
    if end - pos < 2:
        return None
    first, second = buf[pos], buf[pos + 1]
    if first & 0x70:
        raise Fail(1002, "reserved bits set without an extension")
    opcode = first & 0x0F
    if not second & 0x80:
        raise Fail(1002, "a client frame is not masked")
    length = second & 0x7F
    at = pos + 2
    if length == 126:
        if end - at < 2:
            return None
        length = int.from_bytes(buf[at:at + 2], "big")
        at += 2
    elif length == 127:
        if end - at < 8:
            return None
        length = int.from_bytes(buf[at:at + 8], "big")
        at += 8
    if opcode in CONTROL_OPCODES:
        if length > 125 or not first & 0x80:
            raise Fail(1002, "a control frame is fragmented or longer than 125 bytes")
    elif opcode not in DATA_OPCODES:
        raise Fail(1002, f"unknown opcode {opcode}")
    elif max_size is not None and length > max_size:
        raise Fail(1009, f"frame of {length} bytes exceeds the {max_size}-byte limit")
    if end - at < 4 + length:
        return None
    mask = bytes(buf[at:at + 4])
    payload = apply_mask(bytes(buf[at + 4:at + 4 + length]), mask) if length else b""
    return Frame(bool(first & 0x80), opcode, payload), at + 4 + length


def frame_header(first_byte: int, length: int) -> bytes:
    """FIN/opcode byte, then the unmasked payload length (RFC 6455 5.2)."""
    if length < 126:
        return bytes((first_byte, length))
    if length < 1 << 16:
        return bytes((first_byte, 126)) + length.to_bytes(2, "big")
    return bytes((first_byte, 127)) + length.to_bytes(8, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    """One whole (FIN) unmasked frame."""
    return frame_header(0x80 | opcode, len(payload)) + payload


def fragments(data: bytes, size: int = FRAME_BYTES) -> list[bytes]:
    """`data` cut into pieces of at most `size` bytes, never inside a UTF-8 sequence (clients
    may validate text frame by frame)."""
    assert size >= 4, "a UTF-8 sequence is up to 4 bytes"
    pieces, start = [], 0
    while len(data) - start > size:
        cut = start + size
        while data[cut] & 0xC0 == 0x80:  # a continuation byte: move the cut to the sequence's start
            cut -= 1
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


def text_frames(data: bytes) -> bytes:
    """One text message (UTF-8 `data`): one frame, or frames of at most FRAME_BYTES, FIN on
    the last."""
    if len(data) <= FRAME_BYTES:
        return frame_header(0x81, len(data)) + data
    pieces = fragments(data)
    last = len(pieces) - 1
    return b"".join(
        frame_header((0x80 if i == last else 0) | (TEXT if i == 0 else CONT), len(piece)) + piece
        for i, piece in enumerate(pieces)
    )


def close_payload(code: int | None, reason: str = "") -> bytes:
    """A close frame's payload: no code (1005 to the app) means an empty one."""
    if code is None:
        return b""
    encoded = reason.encode()
    if len(encoded) > 123:  # a control frame's payload is at most 125 bytes
        encoded = encoded[:123].decode(errors="ignore").encode()
    return code.to_bytes(2, "big") + encoded


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a client's close frame (1005: it gave none)."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise Fail(1002, "a close frame's payload of one byte")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise Fail(1002, f"close code {code} is not one a peer may send")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise Fail(1007, "a close reason that is not UTF-8") from None
    return code, reason
