"""Wire types: what the transports send and the live-query layer produces, in Convex's shapes.

Shared by the sync protocol (server/sync/), the HTTP API (server/api/) and the live-query
manager (server/core/subscriptions.py), so that none of them imports another for a type. Pure
data and encodings: no I/O, no runtime.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import orjson

# Every digit to "0", everything else to " ": a run of 19 digits becomes b"0" * 19, which
# bytes.find locates several times faster than a regular expression scans for it (a 16 MiB body:
# about 30 ms instead of 250, with the GIL held either way).
_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19


def loads(data: str | bytes) -> Any:
    """A JSON message or request body -> Python, with every integer literal an exact `int`.

    orjson decodes integers beyond 64 bits as floats (2**80 -> 1.2089258196146292e+24), which
    would let them pass as float64 values while 2**60 is refused (docs/values.md, Integers). Only
    text holding a run of 19 or more digits can have such a literal: it is decoded again by the
    standard library, which keeps integers exact. orjson has accepted the text by then, so both
    decoders agree on everything else (no NaN literals, no lone surrogates)."""
    value = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else data  # valid UTF-8: orjson accepted it
    return json.loads(data) if _LONG_RUN in raw.translate(_DIGITS) else value


def encode_ts(ts: int) -> str:
    """A commit timestamp as Convex sends it: base64 of the u64, little-endian."""
    return base64.b64encode(struct.pack("<Q", ts)).decode()


def decode_ts(raw: object) -> int:
    """The inverse of encode_ts. Raises ValueError saying what is wrong."""
    if not isinstance(raw, str):
        raise ValueError("a timestamp must be a base64-encoded u64 string")
    try:
        data = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError("a timestamp is not valid base64") from exc
    if len(data) != 8:
        raise ValueError("a timestamp must encode 8 bytes")
    return int(struct.unpack("<Q", data)[0])


def _digest(body: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(body), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a client receives for a query: QueryUpdated or QueryFailed."""

    ok: bool
    value: Any  # convex_encoded_json, serialized once (an orjson.Fragment) for every client
    log_lines: tuple[str, ...]
    journal: str | None
    error_message: str | None = None
    error_data: Any = None
    has_error_data: bool = False
    digest: bytes = b""

    @staticmethod
    def success(encoded_value: bytes, log_lines: list[str], journal: str | None) -> QueryResult:
        """`encoded_value`: the result as serialized convex_encoded_json."""
        fragment = orjson.Fragment(encoded_value)
        digest = _digest(["ok", fragment, log_lines, journal])
        return QueryResult(True, fragment, tuple(log_lines), journal, digest=digest)

    @staticmethod
    def failed(
        message: str, log_lines: list[str], journal: str | None = None, data: Any = None, has_data: bool = False
    ) -> QueryResult:
        digest = _digest(["err", message, data if has_data else None, log_lines, journal])
        return QueryResult(False, None, tuple(log_lines), journal, message, data, has_data, digest)


@dataclass(frozen=True)
class FunctionResult:
    """A mutation's or action's outcome, ready for the wire."""

    success: bool
    payload: Any  # the value (convex_encoded_json) on success, the error message otherwise
    log_lines: tuple[str, ...] = ()
    ts: int | None = None
    error_data: Any = None
    has_error_data: bool = False
