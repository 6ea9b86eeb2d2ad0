"""Order-preserving byte encoding of Convex values, used as index keys.

Comparing two encodings byte by byte (as PostgreSQL compares `bytea`) gives Convex's order:
undefined (missing field) < null < int64 < float64 < boolean < string < bytes < array < object.
Every encoding is self-delimiting, so an index key (the concatenation of its fields' encodings,
then `_creationTime`, then `_id`) starts with a field prefix exactly when those fields are equal.
Range bounds therefore work on bytes: all keys with prefix P lie in [P, P + b"\\xff").

The same keys are what read sets and write sets are made of (ARCHITECTURE.md, Reactivity).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from server.core.absent import UNSET
from server.core.values import Int64
from server.errors import LimitExceeded

UNDEFINED = UNSET  # a field missing from a document; what `r.eq("f", UNSET)` asks for

TAG_UNDEFINED = 0x01
TAG_NULL = 0x02
TAG_INT64 = 0x03
TAG_FLOAT64 = 0x04
TAG_FALSE = 0x05
TAG_TRUE = 0x06
TAG_STRING = 0x07
TAG_BYTES = 0x08
TAG_ARRAY = 0x09
TAG_OBJECT = 0x0A
END = b"\x00"
OBJECT_ENTRY = 0x01
AFTER_PREFIX = b"\xff"  # greater than every tag: P + AFTER_PREFIX bounds all keys with prefix P
# PostgreSQL's btree stores an index entry of at most ~2,700 bytes (a third of a page; a bytea key
# column adds its headers). Longer keys are refused before they reach it, with a clear error.
MAX_INDEX_KEY_BYTES = 2_600


def _escape(raw: bytes) -> bytes:
    # 0x00 inside data becomes 0x00 0xff; the terminator 0x00 0x00 sorts before any continuation.
    return raw.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def _float_bits(x: float) -> bytes:
    if math.isnan(x):
        x = math.nan  # one canonical NaN, sorting above +inf
    (bits,) = struct.unpack(">Q", struct.pack(">d", x))
    if bits & (1 << 63):
        bits ^= 0xFFFFFFFFFFFFFFFF
    else:
        bits |= 1 << 63
    return struct.pack(">Q", bits)


def encode_value(value: Any, out: bytearray) -> None:
    if value is UNDEFINED:
        out.append(TAG_UNDEFINED)
    elif value is None:
        out.append(TAG_NULL)
    elif value is True:
        out.append(TAG_TRUE)
    elif value is False:
        out.append(TAG_FALSE)
    elif isinstance(value, Int64):
        out.append(TAG_INT64)
        out += struct.pack(">Q", (int(value) + (1 << 63)) & 0xFFFFFFFFFFFFFFFF)
    elif isinstance(value, (int, float)):
        out.append(TAG_FLOAT64)
        out += _float_bits(float(value))
    elif isinstance(value, str):
        out.append(TAG_STRING)
        out += _escape(value.encode("utf-8"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(TAG_BYTES)
        out += _escape(bytes(value))
    elif isinstance(value, Mapping):
        out.append(TAG_OBJECT)
        for k in sorted(value, key=lambda k: k.encode("utf-8")):
            if value[k] is UNSET:  # an absent field, as in a stored object
                continue
            out.append(OBJECT_ENTRY)  # sorts above END, so a shorter object sorts first
            out += _escape(k.encode("utf-8"))
            encode_value(value[k], out)
        out += END
    elif isinstance(value, Sequence):
        out.append(TAG_ARRAY)
        for item in value:
            encode_value(item, out)
        out += END
    else:  # pragma: no cover - values are validated before they get here
        raise TypeError(f"cannot index a {type(value).__name__}")


def encode_values(values: Sequence[Any]) -> bytes:
    out = bytearray()
    for v in values:
        encode_value(v, out)
    return bytes(out)


def field_value(doc: Mapping[str, Any], field: str) -> Any:
    """Read a (possibly dotted) field path from a document; UNDEFINED when missing."""
    cur: Any = doc
    for part in field.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return UNDEFINED
        cur = cur[part]
    return cur


def index_key(doc: Mapping[str, Any], fields: Sequence[str]) -> bytes:
    """The key of `doc` in an index over `fields` (which end with `_creationTime`), then `_id`."""
    out = bytearray()
    for f in fields:
        encode_value(field_value(doc, f), out)
    encode_value(doc["_id"], out)
    return bytes(out)


def index_keys(doc: Mapping[str, Any], indexes: Mapping[str, Sequence[str]], table: str) -> dict[str, bytes]:
    """The keys of `doc` (with `_id` and `_creationTime`) in each of a table's indexes. Raises
    LimitExceeded, naming the table, document, index and fields, for a key PostgreSQL cannot
    store."""
    out: dict[str, bytes] = {}
    for name, fields in indexes.items():
        key = index_key(doc, fields)
        if len(key) > MAX_INDEX_KEY_BYTES:
            indexed = ", ".join(f for f in fields if f != "_creationTime") or "_creationTime"
            raise LimitExceeded(
                f"table `{table}`, document {doc['_id']}: its entry in index {name} ({indexed}) would be "
                f"{len(key):,} bytes, over the {MAX_INDEX_KEY_BYTES:,}-byte limit of an index entry; "
                "index a shorter field (e.g. a prefix or a hash of this value) instead"
            )
        out[name] = key
    return out
