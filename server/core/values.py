"""Convex values in Python, and their two JSON forms.

Mapping (the same one the PyPI `convex` client uses):

    Convex type   Python            convex_encoded_json            json (plain export)
    null          None              null                           null
    boolean       bool              true / false                   true / false
    float64       float, int*       number, or {"$float": b64}     number, or "NaN"/"Infinity"/...
    int64         Int64             {"$integer": b64(i64 LE)}      number
    string        str               string                         string
    bytes         bytes             {"$bytes": b64}                base64 string
    array         list (tuple in)   array                          array
    object        dict[str, ...]    object                         object

* A plain Python `int` is a float64 whose value is integral; it must lie within +-2**53, the
  range a float64 holds exactly. JSON numbers without a fraction decode to `int` (exactly, at any
  size: server.wire.loads), so a function typed `int` accepts what JavaScript clients send, and
  an integer literal beyond +-2**53 is refused whatever its size, never rounded to a float.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from server.errors import ValueValidationError

MIN_SAFE_INT = -(2**53)
MAX_SAFE_INT = 2**53
MIN_INT64 = -(2**63)
MAX_INT64 = 2**63 - 1
MAX_NESTING = 64
MAX_FIELD_NAME_LEN = 1024


class Int64(int):
    """A Convex int64 (a JavaScript `bigint`). Plain `int` values are float64 on the wire."""

    def __new__(cls, value: int) -> Int64:
        if not MIN_INT64 <= int(value) <= MAX_INT64:
            raise ValueValidationError(f"{value} does not fit in an int64")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Int64({int(self)})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls, core_schema.int_schema(ge=MIN_INT64, le=MAX_INT64)
        )


Value = Any  # None | bool | float | int | Int64 | str | bytes | list[Value] | dict[str, Value]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str, path: str) -> bytes:
    if not isinstance(text, str):
        raise ValueValidationError(f"{path or 'value'}: {what} must hold a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueValidationError(f"{path or 'value'}: {what} is not valid base64") from exc


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check_field_name(name: object, path: str) -> str:
    if not isinstance(name, str):
        raise ValueValidationError(f"{path or 'value'}: object keys must be strings")
    if name.startswith("$"):
        raise ValueValidationError(
            f"{_join(path, name)}: field names may not start with '$'"
        )
    if len(name) > MAX_FIELD_NAME_LEN:
        raise ValueValidationError(f"{path or 'value'}: field name longer than 1024 characters")
    return name


def _check_plain_int(v: int, path: str) -> None:
    if not MIN_SAFE_INT <= v <= MAX_SAFE_INT:
        raise ValueValidationError(
            f"{path or 'value'}: integer {v} is outside the float64-exact range (+-2**53); "
            'use {"$integer": ...} (server.Int64) for 64-bit integers'
        )


def to_convex_json(value: Value, path: str = "", depth: int = 0) -> Any:
    """Python value -> convex_encoded_json (what is stored and sent to clients)."""
    if depth > MAX_NESTING:
        raise ValueValidationError(f"{path or 'value'}: nested deeper than {MAX_NESTING} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Int64):
        return {"$integer": _b64(struct.pack("<q", value))}
    if isinstance(value, int):
        _check_plain_int(value, path)
        return value
    if isinstance(value, float):
        if math.isfinite(value) and not (value == 0.0 and math.copysign(1.0, value) < 0):
            return value
        return {"$float": _b64(struct.pack("<d", value))}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": _b64(bytes(value))}
    if isinstance(value, Mapping):
        return {
            check_field_name(k, path): to_convex_json(v, _join(path, k), depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, Sequence):
        return [to_convex_json(v, _join(path, i), depth + 1) for i, v in enumerate(value)]
    raise ValueValidationError(
        f"{path or 'value'}: {type(value).__name__} is not a Convex value "
        "(use None, bool, int, float, Int64, str, bytes, list or dict)"
    )


def digest(value: Value) -> str:
    """A hash of a value, equal for equal values whatever the order of their objects' keys."""
    encoded = orjson.dumps(to_convex_json(value), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()


def from_convex_json(value: Any, path: str = "", depth: int = 0) -> Value:
    """convex_encoded_json -> Python value. Raises ValueValidationError naming the bad path."""
    if depth > MAX_NESTING:
        raise ValueValidationError(f"{path or 'value'}: nested deeper than {MAX_NESTING} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        _check_plain_int(value, path)
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list):
        return [from_convex_json(v, _join(path, i), depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$integer":
                raw = _unb64(inner, "$integer", path)
                if len(raw) != 8:
                    raise ValueValidationError(f"{path or 'value'}: $integer must hold 8 bytes")
                return Int64(struct.unpack("<q", raw)[0])
            if key == "$float":
                raw = _unb64(inner, "$float", path)
                if len(raw) != 8:
                    raise ValueValidationError(f"{path or 'value'}: $float must hold 8 bytes")
                return float(struct.unpack("<d", raw)[0])
            if key == "$bytes":
                return _unb64(inner, "$bytes", path)
        return {
            check_field_name(k, path): from_convex_json(v, _join(path, k), depth + 1)
            for k, v in value.items()
        }
    raise ValueValidationError(f"{path or 'value'}: not a JSON value")


def to_plain_json(value: Value) -> Any:
    """Python value -> the `json` export format (lossy for int64 beyond 2**53, bytes, non-finite)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value if not isinstance(value, Int64) else int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64(bytes(value))
    if isinstance(value, Mapping):
        return {str(k): to_plain_json(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [to_plain_json(v) for v in value]
    raise ValueValidationError(f"{type(value).__name__} is not a Convex value")


def from_plain_json(value: Any, path: str = "", depth: int = 0) -> Value:
    """The `json` input format: plain JSON, no `$` encodings; keys starting with '$' refused."""
    if depth > MAX_NESTING:
        raise ValueValidationError(f"{path or 'value'}: nested deeper than {MAX_NESTING} levels")
    if isinstance(value, int) and not isinstance(value, bool):
        _check_plain_int(value, path)
        return value
    if isinstance(value, list):
        return [from_plain_json(v, _join(path, i), depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            check_field_name(k, path): from_plain_json(v, _join(path, k), depth + 1)
            for k, v in value.items()
        }
    return value
